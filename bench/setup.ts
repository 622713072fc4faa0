/**
 * Benchmark 2, session setup on a warm worker: spawning `ssh … "nix-store --serve --write"` to the
 * remote's first byte of the serve handshake answer, through our endpoint (kept upstream
 * connection) and directly to the same worker with OpenSSH. The variants take turns, so that a
 * slow phase of the machine hits them all alike. Ours runs twice: on a pool with the default
 * compression (what a user gets: its sessions start the worker's zstd relay) and, beside it, on a
 * pool with compression pinned to "none", as direct OpenSSH has it.
 */
import { fixed, median, percentile, processCpuSeconds, progress, say, sleep, table } from './lib.js';
import { DEFAULT_COMPRESSION_LABEL, DEFAULT_POOL, ENDPOINT_ALIAS, PLAIN_POOL, WORKER_ALIAS, type BenchRig } from './rig.js';
import { negotiated, serveHandshake } from './ssh.js';

export interface SetupVariant {
  name: string;
  target: string;
  extraArgs: string[];
  kex: string;
  samplesMs: number[];
}

export interface SetupResult {
  sessions: number;
  variants: {
    name: string;
    kex: string;
    medianMs: number;
    p10Ms: number;
    p90Ms: number;
    minMs: number;
    maxMs: number;
    samplesMs: number[];
  }[];
  /** CPU time of the daemon per session through it. */
  daemonCpuMsPerSession: number;
  /** Median of ours with the default compression ÷ median of ours without compression. */
  defaultRatio: number;
}

const WARMUP = 3;
/** The first two variants go through the daemon. */
const OURS = 2;

export async function sessionSetup(b: BenchRig, configFile: string, sessions: number): Promise<SetupResult> {
  const variants: SetupVariant[] = [
    {
      name: `ours: endpoint → kept upstream connection, compression ${DEFAULT_COMPRESSION_LABEL}`,
      target: `${DEFAULT_POOL}@${ENDPOINT_ALIAS}`,
      extraArgs: [],
      kex: '',
      samplesMs: [],
    },
    {
      name: 'ours, compression none',
      target: `${PLAIN_POOL}@${ENDPOINT_ALIAS}`,
      extraArgs: [],
      kex: '',
      samplesMs: [],
    },
    { name: 'direct OpenSSH to the worker, default kex', target: `root@${WORKER_ALIAS}`, extraArgs: [], kex: '', samplesMs: [] },
    {
      name: 'direct OpenSSH to the worker, curve25519 kex',
      target: `root@${WORKER_ALIAS}`,
      extraArgs: ['-o', 'KexAlgorithms=curve25519-sha256'],
      kex: '',
      samplesMs: [],
    },
  ];
  for (const v of variants) v.kex = (await negotiated(configFile, v.target, v.extraArgs)).kex;
  for (let i = 0; i < WARMUP; i++) for (const v of variants) await serveHandshake(configFile, v.target, v.extraArgs);

  // Sessions of the direct variants cost the daemon nothing, so its CPU time over the whole loop
  // is the cost of the sessions through it.
  const cpuBefore = processCpuSeconds(b.pid);
  for (let i = 0; i < sessions; i++) {
    // Rotate the order each round.
    for (let k = 0; k < variants.length; k++) {
      const v = variants[(i + k) % variants.length] as SetupVariant;
      const t = await serveHandshake(configFile, v.target, v.extraArgs);
      v.samplesMs.push(t.firstByteMs);
    }
    if ((i + 1) % 10 === 0) progress(`session setup: ${i + 1}/${sessions} rounds`);
  }
  await sleep(500);
  const daemonCpu = processCpuSeconds(b.pid) - cpuBefore;
  const result: SetupResult = {
    sessions,
    variants: variants.map((v) => ({
      name: v.name,
      kex: v.kex,
      medianMs: median(v.samplesMs),
      p10Ms: percentile(v.samplesMs, 10),
      p90Ms: percentile(v.samplesMs, 90),
      minMs: Math.min(...v.samplesMs),
      maxMs: Math.max(...v.samplesMs),
      samplesMs: v.samplesMs.map((x) => Math.round(x * 10) / 10),
    })),
    daemonCpuMsPerSession: (daemonCpu * 1000) / (sessions * OURS),
    defaultRatio: median(variants[0]?.samplesMs ?? []) / median(variants[1]?.samplesMs ?? []),
  };
  report(result);
  return result;
}

function report(r: SetupResult): void {
  const ours = r.variants[0];
  say(
    `### 2. Session setup on a warm worker (spawn ssh → first byte of the serve handshake answer; ${r.sessions} sessions each, interleaved)`,
  );
  say();
  say(
    table(
      ['path', 'kex', 'median ms', 'p10', 'p90', 'min', 'max', 'direct ÷ ours'],
      r.variants.map((v) => [
        v.name,
        v.kex,
        fixed(v.medianMs, 1),
        fixed(v.p10Ms, 1),
        fixed(v.p90Ms, 1),
        fixed(v.minMs, 1),
        fixed(v.maxMs, 1),
        r.variants.indexOf(v) < OURS || !ours ? '—' : `${fixed(v.medianMs / ours.medianMs, 2)}×`,
      ]),
    ),
  );
  say();
  say(
    `Daemon CPU per session through the endpoint: ${fixed(r.daemonCpuMsPerSession, 1)} ms (10 ms clock ticks, averaged over ${r.sessions * OURS} sessions).`,
  );
  say();
  say(`**Compression ${DEFAULT_COMPRESSION_LABEL} ÷ none (medians): ${fixed(r.defaultRatio, 2)}** (goal ≤ 1.2).`);
  say();
}
