/**
 * Benchmark 1, throughput both ways with real Nix transfers over ssh-ng (our endpoint only lets the
 * Nix remote-store programs through):
 *   upload   = `nix copy --to ssh-ng://…` of a fresh local store path,
 *   download = `nix copy --from ssh-ng://…` of a fresh path made on the worker,
 * through our endpoint (`x86_64@bench-endpoint`) and directly to the same worker with OpenSSH
 * (`root@bench-worker`), with the same client cipher. Runs of both paths take turns.
 *
 * Each path is a folder holding a hard link to one random file (BENCH_MIB MiB) plus a random
 * nonce file, so that every run copies a new store path of new content without rewriting the data.
 * A second series copies paths holding only the nonce: its time is the fixed cost of one
 * `nix copy` (Nix start, ssh login, handshakes, queries), which the "net" figures leave out.
 */
import { linkSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import {
  cmd,
  cmdWatched,
  CpuTracker,
  descendants,
  fixed,
  GiB,
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
import { ENDPOINT_ALIAS, WARM_POOL, WORKER_ALIAS, type BenchRig } from './rig.js';
import { negotiated } from './ssh.js';

export type Via = 'ours' | 'direct';
export type Direction = 'upload' | 'download';

export interface TransferRun {
  direction: Direction;
  via: Via;
  narBytes: number;
  ms: number;
  /** CPU seconds during the copy: nix + ssh here, our daemon, sshd + nix-daemon on the worker. */
  clientCpuS: number;
  daemonCpuS: number;
  workerCpuS: number;
  /** The copy moved no byte for the stall limit and was killed. */
  stalled: boolean;
}

export interface ThroughputRow {
  direction: Direction;
  via: Via;
  runs: number;
  /** Runs that stalled (the later runs of a stalled direction and path are skipped). */
  stalled: number;
  narBytes: number;
  medianMs: number;
  fixedMs: number;
  mbPerS: number;
  netMbPerS: number;
  clientCpuSPerGiB: number;
  daemonCpuSPerGiB: number;
  workerCpuSPerGiB: number;
  totalCpuSPerGiB: number;
}

export interface ThroughputResult {
  cipher: string;
  negotiated: { ours: string; direct: string };
  mib: number;
  rows: ThroughputRow[];
  /** Every measured transfer (the big ones, then the tiny ones of the fixed cost). */
  transfers: TransferRun[];
  ratios: { direction: Direction; wall: number; net: number; cpu: number }[];
  /** Highest daemon RSS sampled (every 50 ms) during this cipher's runs, and VmHWM after them. */
  sampledPeakRssMiB: number;
  vmHwmMiB: number;
}

const WORKER = `root@${WORKER_ALIAS}`;

function isNix(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim().startsWith('nix');
  } catch {
    return false;
  }
}

function storeUri(via: Via): string {
  return via === 'ours' ? `ssh-ng://${WARM_POOL}@${ENDPOINT_ALIAS}` : `ssh-ng://${WORKER}`;
}

export class Transfers {
  private base: string | undefined;
  private sshdPid: number | undefined;

  constructor(
    private readonly b: BenchRig,
    readonly mib: number,
    private readonly stallMs: number,
  ) {}

  /** The random data every big path links to (written once). */
  private baseFile(): string {
    if (!this.base) {
      this.base = join(this.b.dir, 'random.bin');
      progress(`writing ${this.mib} MiB of random data`);
      writeRandomFile(this.base, this.mib * MiB);
    }
    return this.base;
  }

  /** A new store path on the sending side: local for an upload, on the worker for a download. */
  async makeSource(configFile: string, direction: Direction, big: boolean): Promise<{ path: string; narBytes: number }> {
    const folder = join(this.b.dir, `nhb-bench-${direction}-${big ? `${this.mib}m` : 'tiny'}-${randomBytes(6).toString('hex')}`);
    mkdirSync(folder);
    if (big) linkSync(this.baseFile(), join(folder, 'data'));
    writeFileSync(join(folder, 'nonce'), `${randomBytes(16).toString('hex')}\n`);
    try {
      // The worker shares this machine's /tmp (its /nix, /run, /etc and /mnt are its own).
      const onSource = (args: string[]): Promise<{ stdout: string }> =>
        direction === 'upload' ? cmd('nix-store', args) : cmd('ssh', ['-F', configFile, WORKER, `nix-store ${args.join(' ')}`]);
      const path = (await onSource(['--add', folder])).stdout.trim();
      if (!path.startsWith('/nix/store/')) throw new Error(`nix-store --add printed ${JSON.stringify(path)}`);
      const narBytes = Number((await onSource(['-q', '--size', path])).stdout.trim());
      return { path, narBytes };
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  }

  /** Times one `nix copy`. */
  async copy(
    configFile: string,
    direction: Direction,
    via: Via,
    path: string,
    onSpawn?: (pid: number) => void,
  ): Promise<{ ms: number; stalled: boolean }> {
    const args = [
      '--extra-experimental-features',
      'nix-command',
      'copy',
      '--no-check-sigs',
      direction === 'upload' ? '--to' : '--from',
      storeUri(via),
      path,
    ];
    return cmdWatched('nix', args, {
      env: { ...process.env, NIX_SSHOPTS: `-F ${configFile}` },
      stallMs: this.stallMs,
      ...(onSpawn ? { onSpawn } : {}),
    });
  }

  async checkArrived(configFile: string, direction: Direction, path: string): Promise<void> {
    const check =
      direction === 'upload'
        ? cmd('ssh', ['-F', configFile, WORKER, `nix-store --check-validity ${path}`], { allowFail: true })
        : cmd('nix-store', ['--check-validity', path], { allowFail: true });
    if ((await check).code !== 0) throw new Error(`${path} is not valid on the receiving side after nix copy`);
  }

  /** The worker's sshd listener: its process tree holds every session and remote command. */
  private workerSshd(): number {
    if (this.sshdPid !== undefined) return this.sshdPid;
    const worker = this.b.workerRecord(WARM_POOL);
    const server = this.b.rig.fake.liveServers().find((s) => s.address === worker.address);
    if (!server) throw new Error(`no fake server at ${worker.address}`);
    const config = join(server.dir, 'sshd_config');
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
        if (cmdline.includes(config) && cmdline.includes('[listener]')) return (this.sshdPid = Number(entry));
      } catch {
        // gone
      }
    }
    throw new Error(`no sshd listener found for ${config}`);
  }

  /** Waits (up to 5 s) until no Nix command runs under the worker's sshd. */
  private async remoteSettled(sshd: number): Promise<void> {
    for (const deadline = Date.now() + 5000; Date.now() < deadline && descendants(sshd).some(isNix);) await sleep(20);
  }

  /** Deletes a path from both stores (keeps the disks from filling up over the runs). */
  async forget(configFile: string, path: string): Promise<void> {
    await cmd('nix-store', ['--delete', path], { allowFail: true });
    await cmd('ssh', ['-F', configFile, WORKER, `nix-store --delete ${path}`], { allowFail: true });
    // A killed (stalled) download leaves an unregistered partial path and its lock file here
    // (the worker's store goes with the worker).
    if ((await cmd('nix-store', ['--check-validity', path], { allowFail: true })).code !== 0) {
      rmSync(path, { recursive: true, force: true });
      rmSync(`${path}.lock`, { force: true });
    }
  }

  /** One measured transfer: fresh source path, flushed disks, then the timed copy. */
  async run(configFile: string, direction: Direction, via: Via, big: boolean): Promise<TransferRun> {
    const { path, narBytes } = await this.makeSource(configFile, direction, big);
    try {
      // Dirty pages from making the source would otherwise be written back during the copy.
      await cmd('sync', []);
      const sshd = this.workerSshd();
      await this.remoteSettled(sshd);
      let nixPid: number | undefined;
      const client = new CpuTracker(() => (nixPid === undefined ? [] : [nixPid]));
      const worker = new CpuTracker(() => [sshd]);
      const daemon0 = processCpuSeconds(this.b.pid);
      client.start();
      worker.start();
      const { ms, stalled } = await this.copy(configFile, direction, via, path, (pid) => (nixPid = pid));
      // The remote command may still be finishing (OpenSSH does not wait for it on disconnect).
      for (const deadline = Date.now() + 5000; Date.now() < deadline && worker.newAlive().some(isNix);) await sleep(20);
      const run: TransferRun = {
        direction,
        via,
        narBytes,
        ms,
        stalled,
        clientCpuS: client.stop(),
        daemonCpuS: processCpuSeconds(this.b.pid) - daemon0,
        workerCpuS: worker.stop(),
      };
      if (!stalled) await this.checkArrived(configFile, direction, path);
      return run;
    } finally {
      await this.forget(configFile, path);
    }
  }
}

export async function throughput(
  b: BenchRig,
  configFile: string,
  cipher: string,
  mib: number,
  runs: number,
  fixedRuns: number,
  stallMs: number,
): Promise<ThroughputResult> {
  const t = new Transfers(b, mib, stallMs);
  const ours = await negotiated(configFile, `${WARM_POOL}@${ENDPOINT_ALIAS}`);
  const direct = await negotiated(configFile, WORKER);
  const directions: Direction[] = ['upload', 'download'];
  const order = (i: number): Via[] => (i % 2 === 0 ? ['ours', 'direct'] : ['direct', 'ours']);

  const tiny: TransferRun[] = [];
  for (let i = 0; i < fixedRuns; i++) {
    for (const direction of directions) {
      for (const via of order(i)) {
        const run = await t.run(configFile, direction, via, false);
        if (run.stalled) throw new Error(`a tiny ${direction} via ${via} stalled`);
        tiny.push(run);
      }
    }
  }
  progress(`fixed cost of one nix copy measured (${fixedRuns} runs each)`);

  const big: TransferRun[] = [];
  const sampler = new RssSampler(b.pid);
  sampler.start();
  try {
    for (const direction of directions) {
      for (let i = 0; i < runs; i++) {
        for (const via of order(i)) {
          if (big.some((r) => r.direction === direction && r.via === via && r.stalled)) continue;
          const run = await t.run(configFile, direction, via, true);
          big.push(run);
          if (run.stalled)
            progress(
              `${cipher}: ${direction} via ${via} ${i + 1}/${runs}: STALLED (no byte moved for ${stallMs / 1000} s; killed; later runs skipped)`,
            );
          else
            progress(
              `${cipher}: ${direction} via ${via} ${i + 1}/${runs}: ${fixed(run.narBytes / run.ms / 1000, 1)} MB/s, daemon ${fixed(run.daemonCpuS, 2)} CPU-s`,
            );
        }
      }
    }
  } finally {
    sampler.stop();
  }

  const rows: ThroughputRow[] = [];
  for (const direction of directions) {
    for (const via of ['ours', 'direct'] as Via[]) {
      const all = big.filter((r) => r.direction === direction && r.via === via);
      const mine = all.filter((r) => !r.stalled);
      const fixedMs = median(tiny.filter((r) => r.direction === direction && r.via === via).map((r) => r.ms));
      const gib = (r: TransferRun): number => r.narBytes / GiB;
      rows.push({
        direction,
        via,
        runs: mine.length,
        stalled: all.length - mine.length,
        narBytes: mine[0]?.narBytes ?? 0,
        medianMs: median(mine.map((r) => r.ms)),
        fixedMs,
        mbPerS: median(mine.map((r) => r.narBytes / r.ms / 1000)),
        netMbPerS: median(mine.map((r) => r.narBytes / (r.ms - fixedMs) / 1000)),
        clientCpuSPerGiB: median(mine.map((r) => r.clientCpuS / gib(r))),
        daemonCpuSPerGiB: median(mine.map((r) => r.daemonCpuS / gib(r))),
        workerCpuSPerGiB: median(mine.map((r) => r.workerCpuS / gib(r))),
        totalCpuSPerGiB: median(mine.map((r) => (r.clientCpuS + r.daemonCpuS + r.workerCpuS) / gib(r))),
      });
    }
  }
  const find = (d: Direction, v: Via): ThroughputRow => rows.find((r) => r.direction === d && r.via === v) as ThroughputRow;
  const result: ThroughputResult = {
    cipher,
    negotiated: { ours: `${ours.kex} / ${ours.cipher}`, direct: `${direct.kex} / ${direct.cipher}` },
    mib,
    rows,
    transfers: [...big, ...tiny],
    ratios: directions.map((d) => ({
      direction: d,
      wall: find(d, 'ours').mbPerS / find(d, 'direct').mbPerS,
      net: find(d, 'ours').netMbPerS / find(d, 'direct').netMbPerS,
      cpu: find(d, 'ours').totalCpuSPerGiB / find(d, 'direct').totalCpuSPerGiB,
    })),
    sampledPeakRssMiB: sampler.max,
    vmHwmMiB: processMemory(b.pid).peakMiB,
  };
  report(result);
  return result;
}

function report(r: ThroughputResult): void {
  say(`### 1. Throughput, ${r.mib} MiB per path, client cipher ${r.cipher} (medians of the runs that finished)`);
  say();
  say(`Negotiated by the OpenSSH client (kex / cipher): ours ${r.negotiated.ours}; direct ${r.negotiated.direct}.`);
  say();
  say(
    table(
      [
        'direction',
        'path',
        'runs (stalled)',
        'wall s',
        'MB/s',
        'Gbit/s',
        'fixed cost s',
        'net MB/s',
        'CPU-s/GiB: client (nix+ssh)',
        'daemon',
        'worker (sshd+nix)',
        'total',
      ],
      r.rows.map((row) => [
        row.direction,
        row.via === 'ours' ? 'ours (endpoint)' : 'direct OpenSSH',
        row.stalled > 0 ? `${row.runs} (**${row.stalled} stalled**)` : String(row.runs),
        fixed(row.medianMs / 1000, 2),
        fixed(row.mbPerS, 1),
        fixed((row.mbPerS * 8) / 1000, 2),
        fixed(row.fixedMs / 1000, 2),
        fixed(row.netMbPerS, 1),
        fixed(row.clientCpuSPerGiB, 2),
        row.via === 'ours' ? fixed(row.daemonCpuSPerGiB, 2) : '—',
        fixed(row.workerCpuSPerGiB, 2),
        fixed(row.totalCpuSPerGiB, 2),
      ]),
    ),
  );
  say();
  say(
    table(
      ['direction', 'ours ÷ direct (wall MB/s)', 'ours ÷ direct (net MB/s)', 'ours ÷ direct (total CPU per GiB)'],
      r.ratios.map((x) => [x.direction, fixed(x.wall, 3), fixed(x.net, 3), fixed(x.cpu, 2)]),
    ),
  );
  const stalled = r.rows.filter((row) => row.stalled > 0);
  if (stalled.length > 0) {
    say();
    say(
      `**Stalled:** ${stalled.map((row) => `${row.direction} via ${row.via}`).join(', ')}: the copy moved no byte for the stall limit (BENCH_STALL_S) and was killed; a ratio of n/a means no run finished.`,
    );
  }
  say();
  say(
    `Daemon memory during these runs: highest sampled RSS ${fixed(r.sampledPeakRssMiB, 1)} MiB; VmHWM (peak since start) ${fixed(r.vmHwmMiB, 1)} MiB.`,
  );
  say();
}
