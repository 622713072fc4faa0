/**
 * The benchmark rig: the end-to-end rig of the tests (fake Hetzner cloud with real sshd + Nix
 * workers on 127.0.0.N, our daemon as a child process), plus what a *direct* baseline needs: the
 * worker's address, login key and pinned host key from the daemon's state file, and an ssh_config
 * with one Host alias for our endpoint and one for the worker itself.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_WORKER_COMPRESSION, type WorkerCompression } from '../src/core/config.js';
import { CLI, DaemonProcess, nodeFlagsOf, Rig, TOKEN, type PoolOverrides } from '../test/rig/rig.js';
import type { FakeCloudOptions } from '../test/fake-hcloud/fake-cloud.js';
import type { StateData, WorkerRecord } from '../src/daemon/state.js';

/**
 * The `Host *` block of every ssh_config the benchmarks write: only the given key, only the rig's
 * known hosts, no connection sharing, quiet. Compression is the caller's (a route of its own).
 */
export function sshClientDefaults(knownHosts: string): string[] {
  return [
    'Host *',
    '  IdentitiesOnly yes',
    `  UserKnownHostsFile ${knownHosts}`,
    '  GlobalKnownHostsFile /dev/null',
    '  StrictHostKeyChecking yes',
    '  UpdateHostKeys no',
    '  ControlMaster no',
    '  ControlPath none',
    '  LogLevel ERROR',
  ];
}

/** Host alias of our endpoint in the generated ssh_config. */
export const ENDPOINT_ALIAS = 'bench-endpoint';
/** Host alias of the warm worker (direct OpenSSH, the baseline). */
export const WORKER_ALIAS = 'bench-worker';
/** The pool that stays warm for the throughput and session-setup benchmarks. */
export const WARM_POOL = 'x86_64';
/**
 * Like the warm pool, with the compression a user gets by default whatever BENCH_COMPRESSION says
 * (no compression settings: the default level too).
 */
export const DEFAULT_POOL = 'default';
/**
 * Like the warm pool, with compression pinned to "none", as direct OpenSSH has it: the session-setup
 * and build sections run it beside DEFAULT_POOL, to show what the default costs per session.
 */
export const PLAIN_POOL = 'plain';
export const DEFAULT_COMPRESSION_LABEL = `${DEFAULT_WORKER_COMPRESSION}, level auto (the default)`;
/** The pool whose worker is deleted after each session, for the cold-start benchmark. */
export const COLD_POOL = 'cold';
/** Like COLD_POOL, on a stock image without Nix: each boot installs Nix from the rig's release tarball. */
export const COLD_STOCK_POOL = 'cold-stock';
/** The fake's stock image without Nix (its servers boot as test/e2e/stock-image.test.ts's). */
export const STOCK_IMAGE = 'ubuntu-24.04-without-nix';
/** A cold pool of two workers with 32 slots each (deleted one second after going idle), for the burst. */
export const BURST_POOL = 'burst';
export const BURST_MAX_WORKERS = 2;
export const BURST_JOBS_PER_WORKER = 32;
/** One warm worker with 64 slots, for many sessions at once (memory benchmark). */
export const WIDE_POOL = 'wide';
export const WIDE_JOBS_PER_WORKER = 64;

export interface BenchRigOptions {
  /** The daemon's built CLI (dist/src/cli/main.js of this tree unless another build is measured). */
  cli?: string;
  /** Extra node arguments for the daemon, e.g. --cpu-prof --cpu-prof-dir=DIR to profile it. */
  nodeArgs?: string[];
  bootDelayMs: number;
  readyDelayMs: number;
  verbose: boolean;
  /** Other pools instead of the usual four (the uplink section has one per compression setting). */
  pools?: Record<string, PoolOverrides>;
  /** Compression of the usual pools but PLAIN_POOL and DEFAULT_POOL (default: the config's default, at its default level). */
  compression?: WorkerCompression;
  /** More fake cloud options, e.g. an emulated link in front of every server. */
  fake?: Partial<FakeCloudOptions>;
  /** The pool `nix` setting of COLD_STOCK_POOL, which is there (with STOCK_IMAGE) only when given. */
  stockNix?: PoolOverrides;
}

export class BenchRig {
  /** Scratch folder of the benchmarks (ssh_config, keys, data files); removed by stop(). */
  readonly dir: string;
  private stopped = false;
  /** Set by stop() when the daemon did not exit within 90 s of SIGTERM and was killed. */
  stopProblem: string | undefined;

  private constructor(
    readonly rig: Rig,
    readonly daemon: DaemonProcess,
    readonly options: BenchRigOptions,
  ) {
    this.dir = mkdtempSync(join(tmpdir(), 'nhb-bench-'));
  }

  static async start(options: BenchRigOptions): Promise<BenchRig> {
    const compression = options.compression ?? DEFAULT_WORKER_COMPRESSION;
    const rig = await Rig.start({
      fake: {
        bootDelayMs: options.bootDelayMs,
        readyDelayMs: options.readyDelayMs,
        // Schema checks of every answer cost the fake time that is not the daemon's.
        validateResponses: false,
        log: options.verbose ? (line: string) => void process.stderr.write(`[fake] ${line}\n`) : () => undefined,
        ...options.fake,
      },
      // These sections measure what a user gets against direct OpenSSH over loopback: the default
      // compression unless BENCH_COMPRESSION says otherwise (none: the pipe alone, as direct
      // OpenSSH has it). No compressionLevel: the default level.
      pools: options.pools ?? {
        // One warm worker for the whole run: nothing is deleted while measuring.
        [WARM_POOL]: { maxWorkers: 1, jobsPerWorker: 8, idleTimeout: '60m', compression },
        // No compression setting: the default's.
        [DEFAULT_POOL]: { maxWorkers: 1, jobsPerWorker: 8, idleTimeout: '60m' },
        [PLAIN_POOL]: { maxWorkers: 1, jobsPerWorker: 8, idleTimeout: '60m', compression: 'none' },
        // Deleted one second after each session, so that every session there is a cold start. The
        // cold section times the worker's own answer after a boot: without earlyHandshake off, a
        // pool's second cold session is answered from the first one's record in ≈ 50 ms (what Nix
        // sees with the default; the stall section measures that).
        [COLD_POOL]: { maxWorkers: 1, jobsPerWorker: 8, idleTimeout: '1s', compression, earlyHandshake: false },
        // The same for bursts: a second burst would be answered from the first one's records.
        [BURST_POOL]: {
          maxWorkers: BURST_MAX_WORKERS,
          jobsPerWorker: BURST_JOBS_PER_WORKER,
          idleTimeout: '1s',
          compression,
          earlyHandshake: false,
        },
        [WIDE_POOL]: { maxWorkers: 1, jobsPerWorker: WIDE_JOBS_PER_WORKER, idleTimeout: '60m', compression },
        ...(options.stockNix
          ? {
              [COLD_STOCK_POOL]: {
                maxWorkers: 1,
                jobsPerWorker: 8,
                idleTimeout: '1s',
                compression,
                earlyHandshake: false,
                image: STOCK_IMAGE,
                nix: options.stockNix,
              },
            }
          : {}),
      },
    });
    try {
      if (options.stockNix)
        rig.fake.addImage({ name: STOCK_IMAGE, type: 'system', description: 'Ubuntu 24.04 (stock, no Nix)', worker: 'stock' });
      // Production log level: debug lines would cost the daemon time per session. BENCH_LOG_LEVEL=debug
      // (with NHB_TEST_VERBOSE=1 to see them) traces what the daemon decided, at that cost.
      rig.writeConfig({ log: { level: process.env.BENCH_LOG_LEVEL || 'info' } });
      const cli = options.cli ?? CLI;
      if (!existsSync(cli)) throw new Error(`${cli} is missing: run "npm run build" first`);
      // As Rig.startDaemon, but with a choice of build.
      const daemon = new DaemonProcess(
        spawn(process.execPath, [...nodeFlagsOf(cli), ...(options.nodeArgs ?? []), cli, 'serve', '--config', rig.configFile], {
          env: { ...process.env, HCLOUD_TOKEN: TOKEN },
          stdio: ['ignore', 'pipe', 'pipe'],
        }),
      );
      try {
        daemon.port = (await daemon.waitForMsg(/listening for Nix/, 60_000)).port as number;
      } catch (err) {
        daemon.proc.kill('SIGKILL');
        throw err;
      }
      return new BenchRig(rig, daemon, options);
    } catch (err) {
      await rig.stop();
      throw err;
    }
  }

  get pid(): number {
    const pid = this.daemon.proc.pid;
    if (pid === undefined) throw new Error('the daemon has no pid');
    return pid;
  }

  /** The daemon's record of the ready worker of `pool` (from state.json). */
  workerRecord(pool: string): WorkerRecord {
    const state = JSON.parse(readFileSync(join(this.rig.dir, 'state', 'state.json'), 'utf8')) as StateData;
    const record = state.workers.find((w) => w.pool === pool && w.phase === 'ready' && w.address);
    if (!record) throw new Error(`no ready worker of pool ${pool} in the state file`);
    return record;
  }

  /**
   * Writes an ssh_config with Host aliases, each with its pinned host key: `bench-endpoint` (our
   * daemon) and, given a worker, `bench-worker` (that worker; root with its login key). `cipher`
   * is forced for both when given, so that the client side of both paths uses the same one.
   */
  sshConfig(worker?: WorkerRecord, cipher?: string): string {
    const hostKey = (line: string): string => line.trim().split(/\s+/).slice(0, 2).join(' ');
    const known = [`${ENDPOINT_ALIAS} ${hostKey(readFileSync(join(this.rig.dir, 'state', 'ssh_host_ed25519_key.pub'), 'utf8'))}`];
    const lines = [
      `Host ${ENDPOINT_ALIAS}`,
      '  HostName 127.0.0.1',
      `  Port ${this.daemon.port}`,
      `  HostKeyAlias ${ENDPOINT_ALIAS}`,
      `  IdentityFile ${this.rig.clientKeyFile}`,
    ];
    if (worker) {
      const workerKey = join(this.dir, 'worker_login_key');
      writeFileSync(workerKey, worker.loginPrivateKey, { mode: 0o600 });
      known.push(`${WORKER_ALIAS} ${hostKey(worker.hostPublicKey)}`);
      lines.push(
        `Host ${WORKER_ALIAS}`,
        `  HostName ${worker.address as string}`,
        `  Port ${worker.sshPort}`,
        `  HostKeyAlias ${WORKER_ALIAS}`,
        `  IdentityFile ${workerKey}`,
      );
    }
    const knownHosts = join(this.dir, 'known_hosts');
    writeFileSync(knownHosts, `${known.join('\n')}\n`);
    const file = join(this.dir, `ssh_config${worker ? '' : '.endpoint'}${cipher ? `.${cipher.replace(/[^A-Za-z0-9]+/g, '-')}` : ''}`);
    writeFileSync(
      file,
      [...lines, ...sshClientDefaults(knownHosts), '  Compression no', ...(cipher ? [`  Ciphers ${cipher}`] : []), ''].join('\n'),
    );
    return file;
  }

  /**
   * SIGTERM to the daemon (it deletes its servers) and up to 90 s for it to exit (it gives open
   * sessions 60 s; SIGKILL after that, noted in stopProblem), then the fake cloud, then the
   * scratch folders.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    try {
      const started = Date.now();
      let timer: NodeJS.Timeout | undefined;
      const exited = await Promise.race([
        this.daemon.stop('SIGTERM').then(() => true),
        new Promise<false>((r) => (timer = setTimeout(() => r(false), 90_000))),
      ]);
      clearTimeout(timer);
      if (!exited) {
        this.stopProblem = `the daemon had not exited ${Math.round((Date.now() - started) / 1000)} s after SIGTERM; killed it. Last log lines:\n${this.daemon.raw.slice(-8).join('\n')}`;
        this.daemon.proc.kill('SIGKILL');
        await this.daemon.exited;
      }
    } finally {
      await this.rig.stop();
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}
