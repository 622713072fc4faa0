/**
 * Benchmark 5, the daemon's memory.
 *
 * Peak: BENCH_MEM_SESSIONS (default 64) `nix copy` at once through our endpoint, each of its own
 * store path of BENCH_MEM_MIB MiB, first all uploads (`--to`), then all downloads of the same paths
 * (`--from`, after deleting them here). Each is one ssh-ng session (`nix-daemon --stdio`, the
 * only kind of session besides `nix-store --serve` that the endpoint lets through) moving data as
 * fast as the machine allows, so the daemon holds 64 sessions' worth of buffers at once: the
 * SSH windows of both legs and, downloading, what its serial writer queues towards the client
 * (bounded by its high-water mark). Before each half, the daemon's VmHWM is reset
 * (`/proc/<pid>/clear_refs`), so the peak is that half's own. The pool has the section's
 * compression (BENCH_COMPRESSION, the default unless set).
 *
 * Zero output: one `nix copy --from` of a store path made on the worker that holds a file of
 * BENCH_ZERO_MIB (2048) MiB of zeros, as a build's big sparse or padded output would be: with
 * zstd, the worker's relay sends it in a sliver of its size, so the daemon's decoder inflates it
 * ~1000:1 and must hand it on without holding it. VmHWM reset before, as above.
 *
 * Soak: repeated sessions for BENCH_SOAK_S seconds: BENCH_SOAK_LANES lanes of serve handshakes
 * (session setup and teardown, one after the other in each lane) plus one lane of small uploads and
 * downloads (BENCH_SOAK_KIB KiB each), with the daemon's RSS sampled every second. The trend is the
 * slope of a least-squares line through the samples of the second half (the first half includes
 * the heap growing to its working size).
 */
import { linkSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { LogLine } from '../test/rig/rig.js';
import {
  cmd,
  cmdWatched,
  fixed,
  median,
  MiB,
  processCpuSeconds,
  processMemory,
  progress,
  RssSampler,
  say,
  sleep,
  table,
  writeRandomFile,
} from './lib.js';
import { ENDPOINT_ALIAS, WIDE_POOL, WORKER_ALIAS, type BenchRig } from './rig.js';
import { sessionsSince } from './sessions.js';
import { serveHandshake } from './ssh.js';

const TARGET = `${WIDE_POOL}@${ENDPOINT_ALIAS}`;
const STORE = `ssh-ng://${TARGET}`;

export interface StreamHalf {
  direction: 'upload' | 'download';
  sessions: number;
  completed: number;
  stalled: number;
  wallMs: number;
  narBytes: number;
  /** Most sessions open at the same time (from the daemon's log). */
  maxConcurrent: number;
  sampledPeakRssMiB: number;
  vmHwmMiB: number;
  /** The paths whose transfer stalled and was killed. */
  stalledPaths: string[];
}

export interface SoakResult {
  seconds: number;
  lanes: number;
  handshakes: number;
  copies: number;
  failures: number;
  firstFailure?: string;
  /** [seconds since the start, RSS MiB] every second. */
  samples: [number, number][];
  startRssMiB: number;
  endRssMiB: number;
  maxRssMiB: number;
  firstHalfMedianMiB: number;
  secondHalfMedianMiB: number;
  slopeMiBPerMin: number;
  daemonCpuS: number;
}

export interface ZeroOutput {
  mib: number;
  narBytes: number;
  wallMs: number;
  stalled: boolean;
  /** Bytes from the worker to the daemon (the `session ended` lines' wireDown). */
  wireDownBytes: number;
  vmHwmMiB: number;
}

export interface MemoryResult {
  idleRssMiB: number;
  mibPerPath: number;
  /** Whether VmHWM could be reset before each half (else it is the peak since the daemon started). */
  hwmReset: boolean;
  halves: StreamHalf[];
  zeroOutput?: ZeroOutput;
}

/** Resets the peak RSS (VmHWM) of a process (Linux ≥ 4.0, needs the right to write clear_refs). */
function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** Most sessions of the pool open at once in a slice of the daemon's log. */
function maxConcurrent(lines: LogLine[]): number {
  let open = 0;
  let max = 0;
  for (const l of lines) {
    if (l.user !== WIDE_POOL) continue;
    if (l.msg === 'session started') max = Math.max(max, ++open);
    else if (l.msg === 'session ended') open--;
  }
  return max;
}

function copyArgs(direction: 'upload' | 'download', path: string): string[] {
  return [
    '--extra-experimental-features',
    'nix-command',
    'copy',
    '--no-check-sigs',
    direction === 'upload' ? '--to' : '--from',
    STORE,
    path,
  ];
}

/** New local store paths, each a folder with a hard link to `base` and a nonce file, added in one call. */
async function makePaths(dir: string, base: string, count: number): Promise<string[]> {
  const folders: string[] = [];
  for (let i = 0; i < count; i++) {
    const folder = join(dir, `nhb-bench-mem-${i}-${randomBytes(6).toString('hex')}`);
    mkdirSync(folder);
    linkSync(base, join(folder, 'data'));
    writeFileSync(join(folder, 'nonce'), `${randomBytes(16).toString('hex')}\n`);
    folders.push(folder);
  }
  try {
    const paths = (await cmd('nix-store', ['--add', ...folders])).stdout
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('/nix/store/'));
    if (paths.length !== count) throw new Error(`nix-store --add made ${paths.length} paths, not ${count}`);
    return paths;
  } finally {
    for (const f of folders) rmSync(f, { recursive: true, force: true });
  }
}

async function streamHalf(
  b: BenchRig,
  configFile: string,
  direction: 'upload' | 'download',
  paths: string[],
  narBytes: number,
  stallMs: number,
): Promise<StreamHalf> {
  const env = { ...process.env, NIX_SSHOPTS: `-F ${configFile}` };
  resetPeak(b.pid);
  const sampler = new RssSampler(b.pid);
  const linesBefore = b.daemon.lines.length;
  sampler.start();
  const t0 = performance.now();
  let results: PromiseSettledResult<{ stalled: boolean }>[];
  try {
    results = await Promise.allSettled(paths.map((p) => cmdWatched('nix', copyArgs(direction, p), { env, stallMs })));
  } finally {
    sampler.stop();
  }
  const wallMs = performance.now() - t0;
  const failed = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []));
  if (failed[0]) throw new Error(`${failed.length} of ${paths.length} concurrent ${direction}s failed; the first: ${failed[0].message}`);
  const stalledPaths = paths.filter((_, i) => {
    const r = results[i];
    return r?.status === 'fulfilled' && r.value.stalled;
  });
  const stalled = stalledPaths.length;
  await sleep(300);
  const half: StreamHalf = {
    direction,
    sessions: paths.length,
    completed: paths.length - stalled,
    stalled,
    wallMs,
    narBytes: narBytes * (paths.length - stalled),
    maxConcurrent: maxConcurrent(b.daemon.lines.slice(linesBefore)),
    sampledPeakRssMiB: sampler.max,
    vmHwmMiB: processMemory(b.pid).peakMiB,
    stalledPaths,
  };
  progress(
    `${paths.length} concurrent ${direction}s: ${fixed(wallMs / 1000, 1)} s, ${stalled} stalled (killed after ${stallMs / 1000} s without a byte), at most ${half.maxConcurrent} sessions open at once, daemon peak RSS ${fixed(half.vmHwmMiB, 1)} MiB`,
  );
  return half;
}

/**
 * The zero-output case: the path is made on the worker over direct ssh (its /tmp is this
 * machine's, its store its own), then downloaded once through the daemon.
 */
async function zeroOutput(b: BenchRig, mib: number, stallMs: number): Promise<ZeroOutput> {
  const direct = b.sshConfig(b.workerRecord(WIDE_POOL));
  const onWorker = (script: string): Promise<{ stdout: string }> => cmd('ssh', ['-F', direct, `root@${WORKER_ALIAS}`, script]);
  const folder = join(b.dir, `nhb-bench-zeros-${randomBytes(6).toString('hex')}`);
  progress(`making a store path of ${mib} MiB of zeros on the worker of pool ${WIDE_POOL}`);
  const path = (
    await onWorker(
      `set -e; mkdir ${folder}; head -c ${mib * MiB} /dev/zero > ${folder}/zeros; echo ${randomBytes(16).toString('hex')} > ${folder}/nonce; nix-store --add ${folder}; rm -rf ${folder}`,
    )
  ).stdout.trim();
  if (!path.startsWith('/nix/store/')) throw new Error(`nix-store --add on the worker printed ${JSON.stringify(path)}`);
  try {
    const narBytes = Number((await onWorker(`nix-store -q --size ${path}`)).stdout.trim());
    const env = { ...process.env, NIX_SSHOPTS: `-F ${direct}` };
    resetPeak(b.pid);
    const linesBefore = b.daemon.lines.length;
    const r = await cmdWatched('nix', copyArgs('download', path), { env, stallMs });
    const seen = r.stalled ? undefined : await sessionsSince(b, WIDE_POOL, linesBefore);
    const result: ZeroOutput = {
      mib,
      narBytes,
      wallMs: r.ms,
      stalled: r.stalled,
      wireDownBytes: seen?.wire.down ?? Number.NaN,
      vmHwmMiB: processMemory(b.pid).peakMiB,
    };
    if (!r.stalled) await cmd('nix-store', ['--check-validity', path]);
    progress(
      `${mib} MiB of zeros downloaded: ${r.stalled ? 'STALLED' : `${fixed(r.ms / 1000, 1)} s`}, daemon peak RSS ${fixed(result.vmHwmMiB, 1)} MiB`,
    );
    return result;
  } finally {
    await cmd('nix-store', ['--delete', path], { allowFail: true });
    await onWorker(`nix-store --delete ${path}`).catch(() => undefined);
  }
}

export async function memoryPeak(
  b: BenchRig,
  configFile: string,
  sessions: number,
  mib: number,
  zeroMib: number,
  stallMs: number,
): Promise<MemoryResult> {
  progress(`booting the worker of pool ${WIDE_POOL}`);
  await serveHandshake(configFile, TARGET);
  await sleep(500);
  const result: MemoryResult = { idleRssMiB: processMemory(b.pid).rssMiB, mibPerPath: mib, hwmReset: resetPeak(b.pid), halves: [] };
  const base = join(b.dir, `mem-${mib}m.bin`);
  writeRandomFile(base, mib * MiB);
  progress(`making ${sessions} store paths of ${mib} MiB`);
  const paths = await makePaths(b.dir, base, sessions);
  try {
    const narBytes = Number((await cmd('nix-store', ['-q', '--size', paths[0] as string])).stdout.trim());
    const upload = await streamHalf(b, configFile, 'upload', paths, narBytes, stallMs);
    result.halves.push(upload);
    // A stalled upload (killed) left its path off the worker: only the others come back. Every
    // other path must be there: a `nix copy --to` that succeeded without it is a lost upload.
    const uploaded = paths.filter((p) => !upload.stalledPaths.includes(p));
    const direct = b.sshConfig(b.workerRecord(WIDE_POOL));
    const there = await cmd('ssh', ['-F', direct, `root@${WORKER_ALIAS}`, `nix-store --check-validity ${uploaded.join(' ')}`], {
      allowFail: true,
    });
    if (there.code !== 0)
      throw new Error(`uploads that succeeded left paths off the worker: ${there.stderr.trim().split('\n').slice(0, 3).join('; ')}`);
    await cmd('nix-store', ['--delete', ...paths]);
    const download = await streamHalf(b, configFile, 'download', uploaded, narBytes, stallMs);
    result.halves.push(download);
    const valid = await cmd('nix-store', ['--check-validity', ...uploaded], { allowFail: true });
    if (valid.code !== 0 && result.halves[1]?.stalled === 0)
      throw new Error(`not every downloaded path is valid here: ${valid.stderr.trim()}`);
  } finally {
    await cmd('nix-store', ['--delete', ...paths], { allowFail: true });
    rmSync(base, { force: true });
  }
  result.zeroOutput = await zeroOutput(b, zeroMib, stallMs);
  reportPeak(result, sessions, b.options.compression);
  return result;
}

/** Least-squares slope of y over x. */
function slope(points: [number, number][]): number {
  const n = points.length;
  if (n < 2) return Number.NaN;
  const mx = points.reduce((s, [x]) => s + x, 0) / n;
  const my = points.reduce((s, [, y]) => s + y, 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) * (x - mx);
  }
  return num / den;
}

export async function soak(b: BenchRig, configFile: string, seconds: number, lanes: number, kib: number): Promise<SoakResult> {
  const env = { ...process.env, NIX_SSHOPTS: `-F ${configFile}` };
  await serveHandshake(configFile, TARGET);
  const base = join(b.dir, `soak-${kib}k.bin`);
  writeRandomFile(base, kib * 1024);
  const samples: [number, number][] = [];
  const t0 = Date.now();
  const deadline = t0 + seconds * 1000;
  const cpu0 = processCpuSeconds(b.pid);
  let handshakes = 0;
  let copies = 0;
  let failures = 0;
  let firstFailure: string | undefined;
  const failed = (err: unknown): void => {
    failures++;
    firstFailure ??= (err as Error).message.split('\n')[0];
  };
  const sample = (): void => {
    try {
      samples.push([(Date.now() - t0) / 1000, processMemory(b.pid).rssMiB]);
    } catch {
      // The daemon is gone: the lanes will fail.
    }
  };
  sample();
  const timer = setInterval(sample, 1000);
  let lastReport = t0;
  const handshakeLane = async (): Promise<void> => {
    while (Date.now() < deadline) {
      try {
        await serveHandshake(configFile, TARGET, [], 60_000);
        handshakes++;
      } catch (err) {
        failed(err);
        await sleep(200);
      }
      if (Date.now() - lastReport >= 60_000) {
        lastReport = Date.now();
        progress(
          `soak: ${Math.round((lastReport - t0) / 1000)}/${seconds} s, ${handshakes} handshakes, ${copies} copies, ${failures} failures, RSS ${fixed(samples.at(-1)?.[1] ?? Number.NaN, 1)} MiB`,
        );
      }
    }
  };
  const copyLane = async (): Promise<void> => {
    while (Date.now() < deadline) {
      let path: string | undefined;
      try {
        [path] = await makePaths(b.dir, base, 1);
        await cmd('nix', copyArgs('upload', path as string), { env, timeoutMs: 120_000 });
        await cmd('nix-store', ['--delete', path as string]);
        await cmd('nix', copyArgs('download', path as string), { env, timeoutMs: 120_000 });
        copies += 2;
      } catch (err) {
        failed(err);
        await sleep(200);
      } finally {
        if (path) await cmd('nix-store', ['--delete', path], { allowFail: true });
      }
    }
  };
  try {
    await Promise.all([...Array.from({ length: lanes }, handshakeLane), copyLane()]);
  } finally {
    clearInterval(timer);
    rmSync(base, { force: true });
  }
  sample();
  const daemonCpuS = processCpuSeconds(b.pid) - cpu0;
  const half = seconds / 2;
  const first = samples.filter(([t]) => t < half).map(([, y]) => y);
  const second = samples.filter(([t]) => t >= half);
  const result: SoakResult = {
    seconds,
    lanes,
    handshakes,
    copies,
    failures,
    ...(firstFailure ? { firstFailure } : {}),
    samples: samples.map(([t, y]) => [Math.round(t * 10) / 10, Math.round(y * 10) / 10]),
    startRssMiB: samples[0]?.[1] ?? Number.NaN,
    endRssMiB: samples.at(-1)?.[1] ?? Number.NaN,
    maxRssMiB: Math.max(...samples.map(([, y]) => y)),
    firstHalfMedianMiB: median(first),
    secondHalfMedianMiB: median(second.map(([, y]) => y)),
    slopeMiBPerMin: slope(second) * 60,
    daemonCpuS,
  };
  reportSoak(result);
  return result;
}

function reportPeak(r: MemoryResult, sessions: number, compression: string | undefined): void {
  say(
    `### 5. Daemon memory: ${sessions} sessions streaming at once (\`nix copy\` of ${r.mibPerPath} MiB each, all at once, through pool "${WIDE_POOL}", compression ${compression === 'zstd' ? 'zstd, level auto' : (compression ?? 'the default')})`,
  );
  say();
  say(
    table(
      [
        'half',
        'sessions (stalled)',
        'at most open at once',
        'wall s',
        'aggregate MB/s',
        'highest sampled RSS MiB',
        `VmHWM MiB${r.hwmReset ? ' (reset before)' : ' (since start)'}`,
      ],
      r.halves.map((h) => [
        `${h.direction} (${h.direction === 'upload' ? '--to' : '--from'})`,
        h.stalled > 0 ? `${h.sessions} (**${h.stalled}**)` : String(h.sessions),
        String(h.maxConcurrent),
        fixed(h.wallMs / 1000, 1),
        fixed(h.narBytes / h.wallMs / 1000, 1),
        fixed(h.sampledPeakRssMiB, 1),
        fixed(h.vmHwmMiB, 1),
      ]),
    ),
  );
  say();
  const peak = Math.max(...r.halves.map((h) => h.vmHwmMiB));
  say(
    `RSS with the worker warm and no session: ${fixed(r.idleRssMiB, 1)} MiB. **Peak ${fixed(peak, 1)} MiB = ${fixed((peak * MiB) / 1e6, 0)} MB** (goal ≤ 256 MB).`,
  );
  say();
  const z = r.zeroOutput;
  if (!z) return;
  say(`#### 5a. A ${z.mib} MiB all-zero output comes back (one \`nix copy --from\`, made on the worker)`);
  say();
  const peakMB = (z.vmHwmMiB * MiB) / 1e6;
  say(
    table(
      ['NAR MB', 'wall s', 'MB/s', 'wire MB down', `VmHWM MiB${r.hwmReset ? ' (reset before)' : ' (since start)'}`],
      [
        [
          fixed(z.narBytes / 1e6, 1),
          z.stalled ? '**stalled**' : fixed(z.wallMs / 1000, 2),
          z.stalled ? '' : fixed(z.narBytes / z.wallMs / 1000, 1),
          fixed(z.wireDownBytes / 1e6, 2),
          fixed(z.vmHwmMiB, 1),
        ],
      ],
    ),
  );
  say();
  say(`**Peak ${fixed(peakMB, 0)} MB** (goal ≤ 300 MB): ${!z.stalled && peakMB <= 300 ? 'met' : '**not met**'}.`);
  say();
}

function reportSoak(s: SoakResult): void {
  say(
    `### 5b. Soak: ${s.seconds} s of repeated sessions (${s.lanes} lanes of serve handshakes + 1 lane of small uploads and downloads), RSS every second`,
  );
  say();
  say(
    table(
      [
        'sessions',
        'failures',
        'RSS start MiB',
        'end',
        'max',
        'median 1st half',
        'median 2nd half',
        '**slope of 2nd half, MiB/min**',
        'daemon CPU-s',
      ],
      [
        [
          `${s.handshakes} handshakes + ${s.copies} copies`,
          s.failures > 0 ? `**${s.failures}**` : '0',
          fixed(s.startRssMiB, 1),
          fixed(s.endRssMiB, 1),
          fixed(s.maxRssMiB, 1),
          fixed(s.firstHalfMedianMiB, 1),
          fixed(s.secondHalfMedianMiB, 1),
          `**${fixed(s.slopeMiBPerMin, 3)}**`,
          fixed(s.daemonCpuS, 1),
        ],
      ],
    ),
  );
  say();
  // The course of RSS in tenths of the soak.
  const tenths = Array.from({ length: 10 }, (_, i) =>
    s.samples.filter(([t]) => t >= (i * s.seconds) / 10 && t < ((i + 1) * s.seconds) / 10).map(([, y]) => y),
  );
  say(
    table(['tenth of the soak', ...tenths.map((_, i) => String(i + 1))], [['median RSS MiB', ...tenths.map((v) => fixed(median(v), 1))]]),
  );
  say();
  if (s.firstFailure) say(`First failure: ${s.firstFailure}`);
  if (s.firstFailure) say();
}
