/**
 * Benchmark 6, a real workload: `nix-build` of BENCH_BUILD_DRVS small independent derivations
 * (test/fixtures/build.nix, each with a new nonce, so each is really built) with `--max-jobs 0`,
 * through our endpoint (`ssh-ng://default@bench-endpoint`, the default compression, and beside it
 * `ssh-ng://plain@bench-endpoint`, compression none) and directly to a warm worker of the same kind
 * (`ssh-ng://root@bench-worker`), with the same max-jobs in the machines line on both paths.
 * Nix's build hook opens one ssh connection per derivation (copy the inputs in, build, copy the
 * output back), so session setup is paid once per derivation. The paths take turns.
 */
import { randomBytes } from 'node:crypto';
import { BUILD_NIX, remoteBuildArgs } from '../test/rig/rig.js';
import { cmd, fixed, median, processCpuSeconds, progress, say, table } from './lib.js';
import { DEFAULT_COMPRESSION_LABEL, DEFAULT_POOL, ENDPOINT_ALIAS, PLAIN_POOL, WORKER_ALIAS, type BenchRig } from './rig.js';

/** `ours`: the default compression (what a user gets); `ours-none`: compression pinned to none, beside it. */
type Via = 'ours' | 'ours-none' | 'direct' | 'direct-curve25519';

const VIAS: Via[] = ['ours', 'ours-none', 'direct', 'direct-curve25519'];
/** The pool of each path through the daemon. */
const POOLS: Partial<Record<Via, string>> = { ours: DEFAULT_POOL, 'ours-none': PLAIN_POOL };
const NAMES: Record<Via, string> = {
  ours: `ours, compression ${DEFAULT_COMPRESSION_LABEL}: ssh-ng://${DEFAULT_POOL}@${ENDPOINT_ALIAS}`,
  'ours-none': `ours, compression none: ssh-ng://${PLAIN_POOL}@${ENDPOINT_ALIAS}`,
  direct: `direct: ssh-ng://root@${WORKER_ALIAS}, OpenSSH's default kex`,
  'direct-curve25519': `direct: ssh-ng://root@${WORKER_ALIAS}, curve25519 kex (what ours negotiates)`,
};

export interface BuildRun {
  via: Via;
  ms: number;
  outputs: number;
  /** Sessions the daemon started during the run (ours only). */
  sessions: number;
  daemonCpuS: number;
}

export interface BuildResult {
  derivations: number;
  maxJobs: number;
  runs: BuildRun[];
  medianMs: Record<Via, number>;
  /** ours ÷ direct (default kex), medians of wall time. */
  ratio: number;
  /** ours ÷ direct with the curve25519 kex. */
  ratioCurve25519: number;
  /** ours with the default compression ÷ ours without compression. */
  defaultRatio: number;
}

function builder(via: Via, maxJobs: number): string {
  // ssh key and host key "-": both come from the ssh_config (NIX_SSHOPTS), the same way on both paths.
  const pool = POOLS[via];
  const uri = pool ? `ssh-ng://${pool}@${ENDPOINT_ALIAS}` : `ssh-ng://root@${WORKER_ALIAS}`;
  return `${uri} x86_64-linux - ${maxJobs} 1 - - -`;
}

async function nixBuild(b: BenchRig, configFile: string, via: Via, count: number, maxJobs: number): Promise<BuildRun> {
  const tag = `bench-${via}-${randomBytes(5).toString('hex')}`;
  const expr = `[ ${Array.from({ length: count }, (_, i) => `(import ${BUILD_NIX} { nonce = "${tag}-${i}"; })`).join(' ')} ]`;
  const linesBefore = b.daemon.lines.length;
  const cpu0 = processCpuSeconds(b.pid);
  const r = await cmd('nix-build', remoteBuildArgs(expr, builder(via, maxJobs)), {
    env: { ...process.env, NIX_SSHOPTS: `-F ${configFile}${via === 'direct-curve25519' ? ' -o KexAlgorithms=curve25519-sha256' : ''}` },
    timeoutMs: 600_000,
  });
  const daemonCpuS = processCpuSeconds(b.pid) - cpu0;
  const outputs = r.stdout.split('\n').filter((l) => l.startsWith('/nix/store/'));
  if (outputs.length !== count)
    throw new Error(
      `nix-build via ${via} printed ${outputs.length} outputs, not ${count}:\n${r.stderr.trim().split('\n').slice(-10).join('\n')}`,
    );
  // The outputs are new in this machine's store: drop them again (they are not rooted).
  await cmd('nix-store', ['--delete', ...outputs], { allowFail: true });
  const sessions = b.daemon.lines.slice(linesBefore).filter((l) => l.msg === 'session started' && l.user === POOLS[via]).length;
  return { via, ms: r.ms, outputs: outputs.length, sessions, daemonCpuS };
}

export async function buildWorkload(
  b: BenchRig,
  configFile: string,
  derivations: number,
  runs: number,
  maxJobs: number,
): Promise<BuildResult> {
  // Warm-up, not measured: the evaluator's caches, the worker's first builds.
  for (const via of VIAS) await nixBuild(b, configFile, via, Math.min(4, derivations), maxJobs);
  const all: BuildRun[] = [];
  for (let i = 0; i < runs; i++) {
    // Rotate the order each round.
    for (let k = 0; k < VIAS.length; k++) {
      const via = VIAS[(i + k) % VIAS.length] as Via;
      const run = await nixBuild(b, configFile, via, derivations, maxJobs);
      all.push(run);
      progress(`nix-build of ${derivations} derivations via ${via} ${i + 1}/${runs}: ${fixed(run.ms / 1000, 2)} s`);
    }
  }
  const med = (via: Via): number => median(all.filter((r) => r.via === via).map((r) => r.ms));
  const result: BuildResult = {
    derivations,
    maxJobs,
    runs: all,
    medianMs: {
      ours: med('ours'),
      'ours-none': med('ours-none'),
      direct: med('direct'),
      'direct-curve25519': med('direct-curve25519'),
    },
    ratio: med('ours') / med('direct'),
    ratioCurve25519: med('ours') / med('direct-curve25519'),
    defaultRatio: med('ours') / med('ours-none'),
  };
  report(result);
  return result;
}

function report(r: BuildResult): void {
  say(
    `### 6. nix-build of ${r.derivations} small independent derivations, --max-jobs 0, machines line max-jobs ${r.maxJobs} (medians of ${r.runs.length / VIAS.length} runs each, taking turns)`,
  );
  say();
  const row = (via: Via): string[] => {
    const mine = r.runs.filter((x) => x.via === via);
    const s = mine.map((x) => x.ms / 1000);
    return [
      NAMES[via],
      String(mine.length),
      fixed(median(s), 2),
      fixed(Math.min(...s), 2),
      fixed(Math.max(...s), 2),
      fixed((median(s) * 1000) / r.derivations, 0),
      POOLS[via] ? fixed(median(mine.map((x) => x.sessions)), 0) : '—',
      POOLS[via] ? fixed(median(mine.map((x) => x.daemonCpuS)), 2) : '—',
    ];
  };
  say(
    table(
      ['path', 'runs', 'wall s (median)', 'min', 'max', 'ms per derivation', 'sessions through the daemon', 'daemon CPU-s', 'ours ÷ this'],
      VIAS.map((via) => [...row(via), POOLS[via] ? '—' : fixed(r.medianMs.ours / r.medianMs[via], 3)]),
    ),
  );
  say();
  say(
    `**ours ÷ direct (wall time): ${fixed(r.ratio, 3)}** (goal ≤ 1.05); against direct with the curve25519 kex: ${fixed(r.ratioCurve25519, 3)}.`,
  );
  say(`**Compression ${DEFAULT_COMPRESSION_LABEL} ÷ none (wall time): ${fixed(r.defaultRatio, 3)}** (goal ≤ 1.2).`);
  say();
}
