/**
 * The rig: a fake Hetzner cloud whose servers are real sshd + Nix workers, our daemon as a child
 * process (the built CLI), and real `nix-build` as the client. The end-to-end tests, the demo and
 * the benchmarks share it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import { FakeCloud, type FakeCloudOptions } from '../fake-hcloud/index.js';
import { parseConfig, type Config } from '../../src/core/config.js';
import { Daemon, type DaemonOptions } from '../../src/daemon/daemon.js';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { createLogger } from '../../src/core/log.js';
import { useRigNixConfig } from './nix-config.js';
import { NixClient, nixInstall, type NixSuite } from './nix-client.js';
import { run, waitUntil } from './process.js';

// Every Nix process started from here (the tests', the demo's, the benchmarks') reads the rig's
// nix.conf, never this machine's /etc/nix.
useRigNixConfig();

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export { run, waitUntil } from './process.js';
export const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');

/** The node flags of a CLI build's shebang (`#!/usr/bin/env -S node FLAGS`): started as users start it. */
export function nodeFlagsOf(cli: string): string[] {
  const known = nodeFlags.get(cli);
  if (known) return known;
  const first = readFileSync(cli, 'utf8').split('\n', 1)[0] ?? '';
  const m = /^#!\/usr\/bin\/env(?: -S)? node((?: +--?[\w-]+(?:=\S+)?)*)\s*$/.exec(first);
  if (!m) throw new Error(`${cli}: unexpected first line ${JSON.stringify(first)}`);
  const flags = (m[1] ?? '').trim().split(/ +/).filter(Boolean);
  nodeFlags.set(cli, flags);
  return flags;
}

/** Read once per build: the rig starts the CLI many times. */
const nodeFlags = new Map<string, string[]>();
export const BUILD_NIX = join(ROOT, 'test', 'fixtures', 'build.nix');
export const BIG_NIX = join(ROOT, 'test', 'fixtures', 'big.nix');
/** Port of the fake workers' sshd (not 22: the machine may run its own sshd there). */
export const WORKER_SSH_PORT = 2022;

/** nix-build's arguments for building `expr` on `builders` alone: nothing locally, no substitutes. */
export function remoteBuildArgs(expr: string, builders: string): string[] {
  return buildArgs(expr, builders, 0);
}

/** nix-build's arguments for building `expr` with `builders` and up to `localJobs` local builds at once, no substitutes. */
export function buildArgs(expr: string, builders: string, localJobs: number): string[] {
  return [
    '-E',
    expr,
    '--no-out-link',
    '--max-jobs',
    String(localJobs),
    '--builders',
    builders,
    '--option',
    'substituters',
    '',
    '--option',
    'builders-use-substitutes',
    'false',
  ];
}
export const TOKEN = 'test-token-5f2b9c0e7d1a4e63b8a2f1c9d0e7a6b5';

export interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

export class DaemonProcess {
  readonly lines: LogLine[] = [];
  readonly raw: string[] = [];
  port = 0;
  private readonly waiters: { test: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  readonly exited: Promise<number | null>;

  constructor(readonly proc: ChildProcess) {
    let buffer = '';
    proc.stderr?.setEncoding('utf8');
    proc.stderr?.on('data', (chunk: string) => {
      buffer += chunk;
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const text = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        this.raw.push(text);
        if (process.env.NHB_TEST_VERBOSE) process.stderr.write(`[daemon] ${text}\n`);
        let line: LogLine;
        try {
          line = JSON.parse(text) as LogLine;
        } catch {
          continue;
        }
        this.lines.push(line);
        for (const w of [...this.waiters]) {
          if (w.test(line)) {
            this.waiters.splice(this.waiters.indexOf(w), 1);
            w.resolve(line);
          }
        }
      }
    });
    this.exited = new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
  }

  /** Resolves with the first log line (past or future) that matches. */
  waitFor(test: (l: LogLine) => boolean, timeoutMs = 60_000): Promise<LogLine> {
    const seen = this.lines.find(test);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`daemon log line not seen within ${timeoutMs} ms; last lines:\n${this.raw.slice(-15).join('\n')}`)),
        timeoutMs,
      );
      this.waiters.push({
        test,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
      void this.exited.then((code) =>
        reject(new Error(`daemon exited (${code}) before the expected log line; last lines:\n${this.raw.slice(-15).join('\n')}`)),
      );
    });
  }

  waitForMsg(pattern: RegExp, timeoutMs?: number): Promise<LogLine> {
    return this.waitFor((l) => pattern.test(l.msg), timeoutMs);
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
    return this.exited;
  }
}

export interface PoolOverrides {
  [key: string]: unknown;
}

export interface RigOptions {
  fake?: Partial<FakeCloudOptions>;
  pool?: PoolOverrides;
  pools?: Record<string, PoolOverrides>;
  /** Extra top-level config keys. */
  config?: Record<string, unknown>;
  /** The Nix of the client (nix-build, nix): this machine's (bookworm, the default) or a root's. */
  client?: NixSuite;
  /** The Nix of the fake workers: this machine's (bookworm, the default) or a root's. */
  workerNix?: NixSuite;
}

export class Rig {
  readonly dir: string;
  readonly clientKeyFile: string;
  readonly configFile: string;
  readonly instance: string;
  fake!: FakeCloud;
  /** The Nix that builds through the daemon (nixBuild) and its store. */
  readonly client: NixClient;
  private daemons: DaemonProcess[] = [];

  private constructor(private readonly options: RigOptions) {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run "npm run build" first (npm test does)`);
    this.dir = mkdtempSync(join(tmpdir(), 'nhb-e2e-'));
    this.instance = `t${process.pid}x${Math.floor(Math.random() * 1e6)}`;
    const client = generateKeyPair('nix-daemon@test');
    this.clientKeyFile = join(this.dir, 'client_ed25519');
    writeFileSync(this.clientKeyFile, client.privateKey, { mode: 0o600 });
    writeFileSync(`${this.clientKeyFile}.pub`, `${client.publicKey}\n`);
    this.configFile = join(this.dir, 'config.json');
    this.client = new NixClient(nixInstall(options.client ?? 'bookworm'), this.dir);
  }

  static async start(options: RigOptions = {}): Promise<Rig> {
    const rig = new Rig(options);
    const workerRoot = options.workerNix === undefined ? undefined : nixInstall(options.workerNix).root;
    rig.fake = await FakeCloud.start({
      token: TOKEN,
      dataDir: join(rig.dir, 'cloud'),
      sshPort: WORKER_SSH_PORT,
      bootDelayMs: 300,
      readyDelayMs: 200,
      // Two rigs at once on one machine (two work trees) need servers on other addresses.
      ...(process.env.NHB_RIG_FIRST_ADDRESS ? { firstAddress: Number(process.env.NHB_RIG_FIRST_ADDRESS) } : {}),
      ...(workerRoot === undefined ? {} : { nixRoot: workerRoot }),
      ...options.fake,
    });
    rig.writeConfig();
    return rig;
  }

  writeConfig(extra: Record<string, unknown> = {}): void {
    const basePool = {
      serverTypes: ['cx23'],
      locations: ['fsn1'],
      image: 'ubuntu-24.04',
      sshPort: WORKER_SSH_PORT,
      idleTimeout: '3s',
      bootTimeout: '60s',
      ...this.options.pool,
    };
    const pools = this.options.pools
      ? Object.fromEntries(Object.entries(this.options.pools).map(([name, p]) => [name, { ...basePool, ...p }]))
      : { x86_64: basePool };
    const config = {
      instance: this.instance,
      listen: { host: '127.0.0.1', port: 0 },
      stateDir: join(this.dir, 'state'),
      authorizedKeysFile: `${this.clientKeyFile}.pub`,
      hcloud: { endpoint: this.fake.url },
      pools,
      log: { level: 'debug' },
      ...this.options.config,
      ...extra,
    };
    writeFileSync(this.configFile, JSON.stringify(config, null, 2));
  }

  /**
   * The daemon in this process (its internals can be inspected), on this rig's config, logging
   * JSON lines into `lines`. Stopped by the caller.
   */
  async startInProcessDaemon(
    options: { level?: string } & Pick<DaemonOptions, 'adoptTimeoutMs'> = {},
  ): Promise<{ daemon: Daemon; lines: string[]; config: Config }> {
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(chunk.toString());
        done();
      },
    });
    const log = createLogger({ level: options.level ?? 'info', pretty: false, destination });
    const config = parseConfig(JSON.parse(readFileSync(this.configFile, 'utf8')), this.dir);
    const { level: _level, ...daemonOptions } = options;
    const daemon = new Daemon({ config, token: TOKEN, log, ...daemonOptions });
    await daemon.start();
    return { daemon, lines, config };
  }

  /** Starts `nix-hcloud-builder serve` as a child process and waits until it listens. */
  async startDaemon(
    args: string[] = [],
    env: Record<string, string> = { HCLOUD_TOKEN: TOKEN },
    configFile = this.configFile,
  ): Promise<DaemonProcess> {
    const proc = this.spawnDaemon(args, env, configFile);
    const daemon = new DaemonProcess(proc);
    this.daemons.push(daemon);
    const listening = await daemon.waitForMsg(/listening for Nix/, 60_000);
    daemon.port = listening.port as number;
    return daemon;
  }

  spawnDaemon(args: string[] = [], env: Record<string, string> = { HCLOUD_TOKEN: TOKEN }, configFile = this.configFile): ChildProcess {
    return spawn(process.execPath, [...nodeFlagsOf(CLI), CLI, 'serve', '--config', configFile, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  }

  /** Runs the CLI once (status, down) and collects its output. */
  cli(
    args: string[],
    env: Record<string, string> = { HCLOUD_TOKEN: TOKEN },
    configFile = this.configFile,
  ): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return run(process.execPath, [...nodeFlagsOf(CLI), CLI, ...args, '--config', configFile], { env: { ...process.env, ...env } });
  }

  /**
   * A second daemon's config on this rig's cloud: the same, with its own state folder, and
   * `instance` replaced by `changes.instance` (left out: the default).
   */
  otherConfig(name: string, changes: { instance?: string } = {}): string {
    const config = JSON.parse(readFileSync(this.configFile, 'utf8')) as Record<string, unknown>;
    delete config.instance;
    const file = join(this.dir, `config-${name}.json`);
    writeFileSync(file, JSON.stringify({ ...config, ...changes, stateDir: join(this.dir, `state-${name}`) }, null, 2));
    return file;
  }

  hostKeyBase64(): string {
    const pub = join(this.dir, 'state', 'ssh_host_ed25519_key.pub');
    return Buffer.from(readFileSync(pub, 'utf8').trim()).toString('base64');
  }

  /** An ssh_config with the Host alias a user would have, and HostKeyAlias so field 8 matches. */
  sshConfig(port: number): string {
    const file = join(this.dir, `ssh_config_${port}`);
    writeFileSync(
      file,
      [
        'Host hcloud-builder',
        '  HostName 127.0.0.1',
        `  Port ${port}`,
        '  HostKeyAlias hcloud-builder',
        '  IdentitiesOnly yes',
        '  StrictHostKeyChecking yes',
        '  LogLevel ERROR',
        '',
      ].join('\n'),
    );
    return file;
  }

  /** A known_hosts file holding the endpoint's host key under the alias. */
  knownHostsFile(): string {
    const file = join(this.dir, 'known_hosts');
    writeFileSync(file, `hcloud-builder ${Buffer.from(this.hostKeyBase64(), 'base64').toString()}\n`);
    return file;
  }

  /** ssh through the endpoint as a pool's user, running `command` (as Nix's ssh would). */
  sshArgs(daemon: { port: number }, command: string[], pool = 'x86_64'): string[] {
    return [
      '-T',
      '-F',
      this.sshConfig(daemon.port),
      '-i',
      this.clientKeyFile,
      '-o',
      `UserKnownHostsFile=${this.knownHostsFile()}`,
      '-o',
      'BatchMode=yes',
      `${pool}@hcloud-builder`,
      ...command,
    ];
  }

  /** `feature`: a system feature that the machine supports and requires (only derivations that ask for it go there). */
  machinesLine(scheme: 'ssh-ng' | 'ssh', pool: string, maxJobs: number, feature = '-'): string {
    return `${scheme}://${pool}@hcloud-builder x86_64-linux ${this.clientKeyFile} ${maxJobs} 1 ${feature} ${feature} ${this.hostKeyBase64()}`;
  }

  /**
   * `nix-build` of derivations from test/fixtures/build.nix through the daemon, with no local
   * builds allowed (`--max-jobs 0`) and no substituters (no network here), by the rig's client.
   */
  nixBuild(
    daemon: DaemonProcess,
    opts: { scheme: 'ssh-ng' | 'ssh'; pool?: string; nonces: string[]; sleep?: number; maxJobs?: number; mib?: number },
  ): Promise<{ code: number | null; stdout: string; stderr: string; outPaths: string[] }> {
    const pool = opts.pool ?? 'x86_64';
    const one = (n: string): string =>
      opts.mib === undefined
        ? `(import ${BUILD_NIX} { nonce = "${n}"; sleep = "${opts.sleep ?? 0}"; })`
        : `(import ${BIG_NIX} { nonce = "${n}"; mib = "${opts.mib}"; })`;
    const expr = `[ ${opts.nonces.map(one).join(' ')} ]`;
    return this.client
      .run('nix-build', remoteBuildArgs(expr, this.machinesLine(opts.scheme, pool, opts.maxJobs ?? 4)), {
        env: { ...process.env, NIX_SSHOPTS: `-F ${this.sshConfig(daemon.port)}` },
      })
      .then((r) => ({
        ...r,
        outPaths: r.stdout.split('\n').filter((l) => l.startsWith('/nix/store/')),
      }));
  }

  /** Waits until `daemon` deleted more than `deletedBefore` servers and the fake has none left running (an idle timeout ran out). */
  async idledOut(daemon: DaemonProcess, deletedBefore: number): Promise<void> {
    await daemon.waitFor(() => daemon.lines.filter((l) => /deleted server/.test(l.msg)).length > deletedBefore, 30_000);
    await waitUntil(() => this.fake.liveServers().length === 0, 30_000);
  }

  async stop(): Promise<void> {
    await Promise.all(this.daemons.map((d) => d.stop('SIGTERM')));
    await this.fake?.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
