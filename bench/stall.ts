/**
 * Benchmark "stall": does a booting worker hold up the rest of the user's build? One nix-build of
 * six derivations: one that only the builder can build (a system feature the machines line both
 * offers and requires, taken out of the local Nix's own) and five local ones that each sleep 1 s, with
 * `--max-jobs 1`, while the worker takes `bootS` to boot. Each output holds the time its build
 * ended, so the table says when the local builds were done and when the remote one was.
 *
 * Per client Nix (NHB_NIX_CLIENTS, default this machine's 2.8, trixie's 2.26, sid's 2.34), on the
 * pool's default (early handshake on): the pool's first boot ever (no record yet, so the session
 * waits, as with it off), then a cold boot answered early from the record; and on a pool with
 * `earlyHandshake: false`, the five local builds alone (the baseline), then the six. See bench/README.md, section "Stall".
 */
import { readFileSync } from 'node:fs';
import { buildArgs, Rig, type DaemonProcess } from '../test/rig/rig.js';
import { testedSuites } from '../test/rig/nix-client.js';
import type { NixSuite } from '../test/rig/nix-client.js';
import { fixed, progress, say, table } from './lib.js';

/**
 * The feature that sends a derivation to the builder and keeps the others local: one that every
 * Nix has by default (so the worker has it), taken out of the client's own features.
 */
const FEATURE = 'big-parallel';
const CLIENT_FEATURES = 'benchmark nixos-test';
const LOCAL_BUILDS = 5;
const POOL = 'x86_64';
const READY_DELAY_MS = 200;

export type StallCase = 'local builds alone' | 'first boot (no record)' | 'early handshake' | 'earlyHandshake: false';

export interface StallRun {
  client: string;
  case: StallCase;
  /** Seconds after nix-build started at which each local build ended, in order. */
  localEndS: number[];
  /** When the remote derivation's build ended on the worker; undefined in the baseline, which has none. */
  remoteEndS: number | undefined;
  /** When nix-build exited (the remote output is back). */
  exitS: number;
  /** The daemon's boot-to-ready of the worker this build booted; undefined in the baseline. */
  bootS: number | undefined;
  answeredEarly: boolean;
}

export interface StallResult {
  bootS: number;
  runs: StallRun[];
}

export interface StallSettings {
  bootS: number;
  clients?: NixSuite[];
  verbose: boolean;
}

/** The six derivations (`remote`: false, the five local ones alone); `nonce` makes them new each run. Each writes the time its build ended. */
function expression(nonce: string, remote: boolean): string {
  const stamp = (name: string, sleep: string, extra: string): string =>
    `(derivation { name = "${name}-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh"; ` +
    `args = [ "-c" "${sleep}/bin/date +%s.%N > $out" ]; ${extra} })`;
  const locals = Array.from({ length: LOCAL_BUILDS }, (_, i) => stamp(`stall-local-${i + 1}`, '/bin/sleep 1; ', ''));
  const remoteBuild = remote ? stamp('stall-remote', '', `requiredSystemFeatures = [ "${FEATURE}" ];`) : '';
  return `[ ${remoteBuild} ${locals.join(' ')} ]`;
}

async function stallBuild(rig: Rig, daemon: DaemonProcess, label: StallCase, nonce: string): Promise<StallRun> {
  const answeredBefore = daemon.lines.filter((l) => l.msg === 'answered early').length;
  const readyBefore = daemon.lines.filter((l) => /is ready after/.test(l.msg)).length;
  const builders = rig.machinesLine('ssh-ng', POOL, 4, FEATURE);
  const started = Date.now() / 1000;
  const remote = label !== 'local builds alone';
  const args = [...buildArgs(expression(nonce, remote), builders, 1), '--option', 'system-features', CLIENT_FEATURES];
  const built = await rig.client.run('nix-build', args, {
    env: { ...process.env, NIX_SSHOPTS: `-F ${rig.sshConfig(daemon.port)}` },
    timeoutMs: 600_000,
  });
  const exitS = Date.now() / 1000 - started;
  if (built.code !== 0) throw new Error(`stall: nix-build failed (${label}, ${rig.client.name}): ${built.stderr.slice(-2000)}`);
  const ends = built.stdout
    .split('\n')
    .filter((l) => l.startsWith('/nix/store/'))
    .map((path) => Number(readFileSync(rig.client.local(path), 'utf8').trim()) - started);
  const ready = remote
    ? await daemon.waitFor(
        (l) => /is ready after/.test(l.msg) && daemon.lines.filter((m) => /is ready after/.test(m.msg)).length > readyBefore,
      )
    : undefined;
  return {
    client: rig.client.name,
    case: label,
    remoteEndS: remote ? ends[0] : undefined,
    localEndS: remote ? ends.slice(1) : ends,
    exitS,
    bootS: ready ? Number(ready.bootMs) / 1000 : undefined,
    answeredEarly: daemon.lines.filter((l) => l.msg === 'answered early').length > answeredBefore,
  };
}

async function withRig<T>(
  settings: StallSettings,
  client: NixSuite,
  early: boolean,
  body: (rig: Rig, daemon: DaemonProcess) => Promise<T>,
): Promise<T> {
  const rig = await Rig.start({
    client,
    pool: { idleTimeout: '1s', earlyHandshake: early },
    fake: {
      bootDelayMs: settings.bootS * 1000 - READY_DELAY_MS,
      readyDelayMs: READY_DELAY_MS,
      ...(settings.verbose ? { log: (line: string) => process.stderr.write(`${line}\n`) } : {}),
    },
  });
  try {
    return await body(rig, await rig.startDaemon());
  } finally {
    await rig.stop();
  }
}

export async function stall(settings: StallSettings): Promise<StallResult> {
  const runs: StallRun[] = [];
  for (const client of settings.clients ?? testedSuites()) {
    const nonce = `${client}-${Date.now()}`;
    progress(`stall: ${client}'s Nix, early handshake on (first boot, then answered early)`);
    await withRig(settings, client, true, async (rig, daemon) => {
      runs.push(await stallBuild(rig, daemon, 'first boot (no record)', `${nonce}-first`));
      await rig.idledOut(daemon, 0);
      runs.push(await stallBuild(rig, daemon, 'early handshake', `${nonce}-early`));
    });
    progress(`stall: ${client}'s Nix, earlyHandshake: false`);
    await withRig(settings, client, false, async (rig, daemon) => {
      runs.push(await stallBuild(rig, daemon, 'local builds alone', `${nonce}-alone`));
      runs.push(await stallBuild(rig, daemon, 'earlyHandshake: false', `${nonce}-off`));
    });
  }
  const result: StallResult = { bootS: settings.bootS, runs };
  report(result);
  return result;
}

function report(result: StallResult): void {
  say(`### Stall: five local 1-s builds (--max-jobs 1) beside one remote build, the worker booting ${result.bootS} s`);
  say();
  say(
    table(
      [
        'client',
        'case',
        'answered early',
        'local builds ended at (s)',
        'all 5 local done (s)',
        'remote built at (s)',
        'nix-build done (s)',
        'boot (s)',
      ],
      result.runs.map((r) => [
        r.client,
        r.case,
        r.answeredEarly ? 'yes' : 'no',
        r.localEndS.map((s) => fixed(s, 1)).join(', '),
        fixed(Math.max(...r.localEndS), 1),
        r.remoteEndS === undefined ? '–' : fixed(r.remoteEndS, 1),
        fixed(r.exitS, 1),
        r.bootS === undefined ? '–' : fixed(r.bootS, 1),
      ]),
    ),
  );
  say();
  say(
    `Seconds after nix-build started. "Local builds alone" is the baseline: the same five builds with no remote one. The goal with the early handshake: all five done within ${LOCAL_BUILDS} s + 20 % (≤ ${fixed(LOCAL_BUILDS * 1.2, 1)} s; the baseline shows what this machine takes), and nix-build done no later than with it off.`,
  );
  say();
}
