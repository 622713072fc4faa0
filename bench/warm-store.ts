/**
 * Benchmark "warm": the warm store (pools.<name>.store) over an emulated home uplink. A build
 * whose inputs are a realistic payload of store paths runs on a cold worker; the worker idles
 * out and is deleted; a new derivation with the same inputs runs on the next worker, which boots
 * with the same volume. The same pair on a pool without `store` is the baseline. See
 * bench/README.md, section "Warm store".
 *
 * Bytes up come from the daemon's `session ended` lines (`up`: what Nix sent through the
 * session) and from the link relay in front of the worker (`wire`: SSH and all, read right after
 * the build, before the idle timer deletes the server and its relay). Boot-to-ready is the
 * daemon's `bootMs` of boot step 5.
 */
import { mkdirSync, readdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { LogLine } from '../test/rig/rig.js';
import { remoteBuildArgs, waitUntil } from '../test/rig/rig.js';
import { linkProfile, type LinkBytes, type LinkProfile } from '../test/rig/link.js';
import { cmd, fixed, MiB, progress, say, table } from './lib.js';
import { makeRealistic, REALISTIC_SOURCES } from './payload.js';
import { BenchRig, ENDPOINT_ALIAS } from './rig.js';

/** Pool with a store volume, and the baseline pool without one. */
const WARM = 'warm';
const BARE = 'bare';
type PoolName = typeof WARM | typeof BARE;
/** How many store paths the payload is cut into at most (a build's inputs are a closure, not one path); big files make fewer. */
const PARTS = 16;
/** Short, so that the bench does not wait long for the worker to go; long enough to read the relay's counters first. */
const IDLE_TIMEOUT = '3s';

export interface WarmBuild {
  pool: PoolName;
  /** 1 = first build (cold worker), 2 = the same inputs on the next worker. */
  build: 1 | 2;
  wallMs: number;
  /** Bytes Nix sent up through the daemon's sessions of this build. */
  sessionUp: number;
  /** Bytes that crossed the emulated link towards the worker (its whole life up to the build's end). */
  wire: LinkBytes;
  /** The daemon's boot-to-ready of the worker this build booted. */
  bootMs: number;
}

export interface WarmResult {
  mib: number;
  profile: string;
  paths: number;
  narBytes: number;
  builds: WarmBuild[];
}

export interface WarmSettings {
  mib: number;
  profile: string;
  bootDelayMs: number;
  readyDelayMs: number;
  verbose: boolean;
  cli?: string;
}

/** The payload as up to PARTS folders of consecutive files (a new one once a folder holds 1/PARTS of the bytes), each added as its own store path with a nonce of this run. */
async function addPayload(dir: string, bytes: number): Promise<{ paths: string[]; narBytes: number }> {
  const folder = join(dir, 'warm-payload');
  mkdirSync(folder);
  const total = makeRealistic(folder, bytes);
  const files = readdirSync(folder).sort();
  const parts: string[] = [];
  let part = '';
  let inPart = 0;
  for (const f of files) {
    if (!part || (inPart >= total / PARTS && parts.length < PARTS)) {
      part = join(dir, `warm-part-${String(parts.length).padStart(2, '0')}`);
      mkdirSync(part);
      writeFileSync(join(part, 'nonce'), `${randomBytes(16).toString('hex')}\n`);
      parts.push(part);
      inPart = 0;
    }
    inPart += statSync(join(folder, f)).size;
    renameSync(join(folder, f), join(part, f));
  }
  progress(
    `warm: realistic payload of ${fixed(total / MiB, 0)} MiB from ${REALISTIC_SOURCES.join(', ')} (those that exist), in ${parts.length} store paths`,
  );
  const paths: string[] = [];
  let narBytes = 0;
  for (const p of parts) {
    const path = (await cmd('nix-store', ['--add', p])).stdout.trim();
    if (!path.startsWith('/nix/store/')) throw new Error(`nix-store --add printed ${JSON.stringify(path)}`);
    paths.push(path);
    narBytes += Number((await cmd('nix-store', ['-q', '--size', path])).stdout.trim());
  }
  return { paths, narBytes };
}

/** A derivation with every payload path among its inputs (Nix's build hook copies those the worker lacks); a new nonce is a new derivation. */
function expression(paths: string[], nonce: string): string {
  const inputs = paths.map((p) => `(builtins.storePath "${p}")`).join(' ');
  return `derivation { name = "nhb-warm-bench-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "/usr/bin/du -sb \${toString [ ${inputs} ]} > $out" ]; }`;
}

/** The log lines from index `from` on, once every session started there has ended (its `session ended` may follow nix-build's exit). */
async function linesOf(b: BenchRig, from: number): Promise<LogLine[]> {
  const lines = (): LogLine[] => b.daemon.lines.slice(from);
  const count = (msg: string): number => lines().filter((l) => l.msg === msg).length;
  await waitUntil(() => count('session started') > 0 && count('session ended') === count('session started'), 30_000);
  return lines();
}

async function oneBuild(
  b: BenchRig,
  config: string,
  pool: PoolName,
  n: 1 | 2,
  paths: string[],
  nonce: string,
): Promise<{ run: WarmBuild; output: string }> {
  const from = b.daemon.lines.length;
  await cmd('sync', []);
  const r = await cmd(
    'nix-build',
    remoteBuildArgs(expression(paths, `${nonce}-${pool}-${n}`), `ssh-ng://${pool}@${ENDPOINT_ALIAS} x86_64-linux - 1 1 - - -`),
    { env: { ...process.env, NIX_SSHOPTS: `-F ${config}` } },
  );
  // Read the relay now: the idle timer deletes the server (and its relay) a few seconds later.
  // The builds run one after the other, each after the previous worker was deleted: one server is up.
  const live = b.rig.fake.liveServers();
  if (live.length !== 1 || !live[0]?.linkBytes) throw new Error(`expected one server behind the emulated link, found ${live.length}`);
  const wire = { ...live[0].linkBytes };
  const lines = await linesOf(b, from);
  const ready = lines.find((l) => l.pool === pool && typeof l.bootMs === 'number');
  const run: WarmBuild = {
    pool,
    build: n,
    wallMs: r.ms,
    sessionUp: lines.filter((l) => l.msg === 'session ended').reduce((sum, l) => sum + Number(l.up), 0),
    wire,
    bootMs: ready ? Number(ready.bootMs) : Number.NaN,
  };
  progress(
    `warm: pool ${pool}, build ${n}: ${fixed(r.ms / 1000, 1)} s, ${fixed(run.sessionUp / 1e6, 2)} MB up through the daemon, ${fixed(wire.up / 1e6, 2)} MB up on the wire, boot-to-ready ${fixed(run.bootMs / 1000, 2)} s`,
  );
  return { run, output: r.stdout.trim() };
}

/** Waits until the pool's worker has been deleted (and, with a volume, the volume is detached). */
async function idleOut(b: BenchRig, pool: PoolName, from: number): Promise<void> {
  await b.daemon.waitFor((l) => l.pool === pool && /^deleted server /.test(l.msg) && b.daemon.lines.indexOf(l) >= from, 60_000);
  await waitUntil(() => b.rig.fake.liveServers().length === 0 && b.rig.fake.volumes().every((v) => v.server === null), 30_000);
}

export async function warmStore(s: WarmSettings): Promise<WarmResult> {
  const profile = linkProfile(s.profile);
  progress(
    `warm: link ${profile.name} (${profile.upBitsPerSecond / 1e6} Mbit/s up, ${profile.downBitsPerSecond / 1e6} Mbit/s down, ${profile.delayMs} ms one way)`,
  );
  const b = await BenchRig.start({
    bootDelayMs: s.bootDelayMs,
    readyDelayMs: s.readyDelayMs,
    verbose: s.verbose,
    ...(s.cli ? { cli: s.cli } : {}),
    fake: { link: profile },
    // Uncompressed: the bytes a warm store saves are the bytes of paths not sent at all.
    pools: {
      [WARM]: { maxWorkers: 1, jobsPerWorker: 8, idleTimeout: IDLE_TIMEOUT, store: { volumeGb: 10 }, compression: 'none' },
      [BARE]: { maxWorkers: 1, jobsPerWorker: 8, idleTimeout: IDLE_TIMEOUT, compression: 'none' },
    },
  });
  const cleanup: string[] = [];
  try {
    const config = b.sshConfig();
    const payload = await addPayload(b.dir, s.mib * MiB);
    cleanup.push(...payload.paths);
    const result: WarmResult = { mib: s.mib, profile: profile.name, paths: payload.paths.length, narBytes: payload.narBytes, builds: [] };
    const nonce = randomBytes(4).toString('hex');
    // One pool after the other, each build alone on the machine (and its link).
    for (const pool of [WARM, BARE] as PoolName[]) {
      for (const n of [1, 2] as const) {
        const from = b.daemon.lines.length;
        const { run, output } = await oneBuild(b, config, pool, n, payload.paths, nonce);
        result.builds.push(run);
        cleanup.unshift(output);
        await idleOut(b, pool, from);
      }
    }
    report(result, profile);
    return result;
  } finally {
    // Outputs first, then the payload together with its referrers (the builds' .drv files), which keep it alive.
    for (const p of cleanup) {
      const referrers = (await cmd('nix-store', ['-q', '--referrers', p], { allowFail: true })).stdout
        .split('\n')
        .filter((r) => r.startsWith('/nix/store/') && r !== p);
      await cmd('nix-store', ['--delete', ...referrers, p], { allowFail: true });
    }
    await b.stop();
  }
}

function report(r: WarmResult, p: LinkProfile): void {
  const get = (pool: PoolName, n: 1 | 2): WarmBuild | undefined => r.builds.find((x) => x.pool === pool && x.build === n);
  say(
    `### Warm store: the same inputs on the next worker, ${r.mib} MiB realistic payload (${r.paths} store paths, NAR ${fixed(r.narBytes / 1e6, 1)} MB), link ${p.name} (${p.upBitsPerSecond / 1e6} Mbit/s up, ${p.downBitsPerSecond / 1e6} Mbit/s down, ${p.delayMs} ms one way)`,
  );
  say();
  const label = (pool: PoolName, n: 1 | 2): string =>
    `${pool === WARM ? 'with volume' : 'without volume'}, build ${n}${n === 1 ? ' (new worker, empty store)' : ' (next worker)'}`;
  const rows: string[][] = [];
  for (const pool of [WARM, BARE] as PoolName[]) {
    for (const n of [1, 2] as const) {
      const x = get(pool, n);
      if (!x) continue;
      rows.push([
        label(pool, n),
        fixed(x.wallMs / 1000, 2),
        fixed(x.bootMs / 1000, 2),
        fixed((x.wallMs - x.bootMs) / 1000, 2),
        fixed(x.sessionUp / 1e6, 3),
        fixed(x.wire.up / 1e6, 3),
        fixed(x.wire.down / 1e6, 3),
      ]);
    }
  }
  say(table(['build', 'wall s', 'boot-to-ready s', 'wall − boot s', 'MB up through the daemon', 'wire MB up', 'wire MB down'], rows));
  say();
  const verdict = (ok: boolean): string => (ok ? 'met' : '**not met**');
  const w1 = get(WARM, 1);
  const w2 = get(WARM, 2);
  const b1 = get(BARE, 1);
  const b2 = get(BARE, 2);
  const upRatio = w1 && w2 ? w2.sessionUp / w1.sessionUp : Number.NaN;
  const wireRatio = w1 && w2 ? w2.wire.up / w1.wire.up : Number.NaN;
  const added2 = w2 && b2 ? (w2.bootMs - b2.bootMs) / 1000 : Number.NaN;
  const added1 = w1 && b1 ? (w1.bootMs - b1.bootMs) / 1000 : Number.NaN;
  say(
    table(
      ['goal', 'target', 'measured', 'verdict'],
      [
        ['with volume: build 2 ÷ build 1, bytes up through the daemon', '≤ 1 %', `${fixed(upRatio * 100, 3)} %`, verdict(upRatio <= 0.01)],
        [
          'with volume: build 2 ÷ build 1, bytes up on the wire (SSH and boot included)',
          '≤ 1 %',
          `${fixed(wireRatio * 100, 3)} %`,
          verdict(wireRatio <= 0.01),
        ],
        [
          'boot-to-ready, with − without volume, next worker (volume attached, store on it)',
          '≤ 5 s',
          `${fixed(added2, 2)} s`,
          verdict(added2 <= 5),
        ],
        [
          'boot-to-ready, with − without volume, first worker (volume created, store set up on it)',
          '≤ 5 s',
          `${fixed(added1, 2)} s`,
          verdict(added1 <= 5),
        ],
      ],
    ),
  );
  say();
}
