// One fake server as a real machine: an sshd in its own mount namespace, with
// its own /nix (an empty store root), its own /run and its own /etc (a copy-on-write view of the
// host's, so that /etc/nix is the server's own even where the host has none),
// configured either from the server's cloud-config the way cloud-init would, or
// (a server of a NixOS worker image, see `NixosBoot`) by the boot scripts of
// nixos/worker.nix, run for real inside the namespace.
//
// Layout of the server folder DIR:
//   nix/                     bind-mounted at /nix inside the server
//   etc-nix/                 bind-mounted at /etc/nix: the rig's nix.conf (test/rig/nix-conf)
//   rootfs/                  where write_files entries for other paths land
//   ssh_host_ed25519_key     host key (0600), authorized_keys, sshd_config
//   sshd.log, cloud-init-output.log, user-data, boot-finished
//   runcmd                   the runcmd entries as one script (cloud-init's scripts/runcmd)
// and for a stock image without Nix:
//   stand-ins/               systemctl and systemd-tmpfiles, copied into the server's /usr/local/sbin
//   stub-calls.log           every call of the stand-ins
// and for a NixOS worker image:
//   worker-disk.img          the server's disk (sparse), attached to a loop device while it runs
//   scripts/                 the copies of nixos/scripts/*.sh that ran
//   bin/                     stand-ins for zpool, swapon and systemctl, first on the scripts' PATH
//   fetch-keys.log, zpool-expand.log, store-volume.log, ready-marker.log   each script's output
//   stub-calls.log           every call of the stand-ins

import { spawn, type ChildProcess } from 'node:child_process';
import {
  appendFileSync,
  copyFileSync,
  mkdirSync,
  openSync,
  closeSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  writeFileSync,
} from 'node:fs';
import { connect } from 'node:net';
import { join, posix } from 'node:path';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { packageRoot } from '../../src/core/package-file.js';
import { ZSTD_RELAY_PATH, ZSTD_RELAY_SOURCE } from '../../src/ssh/zstd-relay.js';
import { RIG_NIX_CONF_FILE } from '../rig/nix-config.js';
import { nixWrapper } from '../rig/nix-client.js';
import type { CloudConfig } from './cloud-config.js';
import { attachWorkerDisk, detachLoopSync, NIXOS_SCRIPTS, NIXOS_UNITS, type NixosBoot, type UnitState } from './nixos-image.js';
import {
  CHILD_ENV,
  CLOUD_FINAL_ENV,
  MOUNT_VOLUME,
  NAMESPACE_SETUP,
  privatePrefixes,
  UNMOUNT_VOLUME,
  writeStockStandIns,
  type VolumeMount,
} from './server-namespace.js';
import { cloudInitSshdConfig, nixosSshdConfig } from './sshd-config.js';

export interface FakeServerOptions {
  id: number;
  dir: string;
  address: string;
  sshPort: number;
  config: CloudConfig;
  /** Use a fresh host key instead of the one in the user data. */
  wrongHostKey: boolean;
  /** Start sshd but never run runcmd. */
  neverReady: boolean;
  readyDelayMs: number;
  /** sshd MaxSessions: channels per connection (OpenSSH's default is 10). */
  maxSessions: number;
  log: (line: string) => void;
  /**
   * Boot the rescue system: this regular file (created empty) is what the server has at
   * /dev/sda, bind-mounted over a private /dev (see NAMESPACE_SETUP).
   */
  rescueDisk?: string;
  /** Boot as the NixOS worker image (nixos/worker.nix): no cloud-init, its boot scripts instead. */
  nixos?: NixosBoot;
  /** The volumes attached when the server boots. */
  volumes?: VolumeMount[];
  /**
   * Boot as a stock image without Nix (Ubuntu, Debian): the cloud-config applies as in the
   * default mode, but no Nix is on the machine and runcmd runs in cloud-final's environment
   * (CLOUD_FINAL_ENV). See NAMESPACE_SETUP.
   */
  stock?: boolean;
  /** Run Nix from this Debian root (test/rig/nix-roots.sh) instead of the machine's. */
  nixRoot?: string;
}

function ownMountNamespace(): string {
  return readlinkSync('/proc/self/ns/mnt');
}

function killQuietly(pid: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
/** A sleep that keeps the event loop alive: the children are unref'd, so waiting for them needs one. */
const refSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class FakeServer {
  sshd: ChildProcess | null = null;
  mntNs: string | null = null;
  /**
   * An open fd on the namespace: it keeps the namespace (and so its inode
   * number) alive, so that a scan by inode can never hit a newer namespace
   * that reused the number. Scans happen only while it is open.
   */
  private nsFd: number | null = null;
  listening = false;
  cloudInitDone = false;
  /** NixOS worker image only: each unit's state (see NixosBoot). */
  readonly units: Record<keyof typeof NIXOS_UNITS, UnitState> | null;
  /** NixOS worker image only: the loop device holding DIR/worker-disk.img while the server runs. */
  loopDevice: string | null = null;
  private stopped = false;
  private exited: Promise<void> = Promise.resolve();
  private readonly helpers = new Set<ChildProcess>();
  private readonly timers = new Set<NodeJS.Timeout>();
  /** The volumes the server has now: given at boot, then hot-plugged (`mountVolume`). */
  private readonly volumes = new Map<number, string>();

  constructor(private readonly o: FakeServerOptions) {
    this.units = o.nixos
      ? { keys: 'waiting', expand: 'waiting', store: o.nixos.storeUnit ? 'waiting' : 'absent', sshd: 'waiting', ready: 'waiting' }
      : null;
    for (const v of o.volumes ?? []) this.volumes.set(v.id, v.dir);
  }

  get sshdPid(): number | null {
    return this.sshd?.pid ?? null;
  }

  /** Writes the server folder; called when the server is created. */
  static prepare(dir: string, userData: string | null): void {
    mkdirSync(join(dir, 'nix'), { recursive: true });
    mkdirSync(join(dir, 'rootfs'), { recursive: true });
    // The server's /etc/nix holds the rig's nix.conf alone: never the host's (see its comments).
    mkdirSync(join(dir, 'etc-nix'), { recursive: true });
    copyFileSync(RIG_NIX_CONF_FILE, join(dir, 'etc-nix', 'nix.conf'));
    writeFileSync(join(dir, 'user-data'), userData ?? '', { mode: 0o600 });
  }

  /**
   * Boots the server: host key, authorized keys, sshd in a new mount
   * namespace, write_files, and (after readyDelayMs) runcmd. Resolves once
   * sshd accepts connections, or rejects when it could not start.
   * A NixOS worker image boots by its own units instead (see NixosBoot).
   */
  async start(): Promise<void> {
    if (this.o.nixos) return this.startNixos(this.o.nixos);
    const { dir, config } = this.o;
    let hostKey = config.hostKey?.private ?? null;
    let hostPub = config.hostKey?.public ?? null;
    if (this.o.wrongHostKey) {
      const fresh = generateKeyPair('wrong-host-key');
      hostKey = fresh.privateKey;
      hostPub = fresh.publicKey;
    }
    if (hostKey === null) throw new Error('no ed25519 host key in the user data: sshd not started');
    writeFileSync(join(dir, 'ssh_host_ed25519_key'), hostKey.endsWith('\n') ? hostKey : `${hostKey}\n`, { mode: 0o600 });
    if (hostPub !== null) writeFileSync(join(dir, 'ssh_host_ed25519_key.pub'), `${hostPub.trim()}\n`, { mode: 0o644 });
    writeFileSync(join(dir, 'authorized_keys'), config.authorizedKeys.map((k) => `${k.trim()}\n`).join(''), { mode: 0o600 });
    writeFileSync(join(dir, 'sshd_config'), cloudInitSshdConfig(this.o, dir), { mode: 0o644 });

    if (this.o.stock) writeStockStandIns(dir);
    const child = await this.spawnNamespace(this.o.stock ? 'stock' : '');
    if (child === null) return;
    await this.installNixRoot();

    // cloud-init writes files in its init stage, before sshd runs.
    for (const wf of config.writeFiles) {
      if (this.stopped) return;
      await this.writeFile(wf.path, wf.content, wf.permissions, wf.append);
    }
    child.stdin?.end('go\n');

    await this.waitListening();
    if (this.stopped) return;
    if (!this.o.neverReady) {
      const t = setTimeout(() => {
        this.timers.delete(t);
        void this.runcmd();
      }, this.o.readyDelayMs);
      t.unref();
      this.timers.add(t);
    }
  }

  /**
   * A server with another Nix version: its own /usr/local/bin (first on every session's PATH) gets
   * nix-daemon, nix-store and nix that run the root's programs on the server's /nix and /etc/nix.
   */
  private async installNixRoot(): Promise<void> {
    const root = this.o.nixRoot;
    if (root === undefined) return;
    for (const program of ['nix-daemon', 'nix-store', 'nix'] as const) {
      await this.writeFile(`/usr/local/bin/${program}`, Buffer.from(nixWrapper(root, '/nix', program, '/etc/nix')), 0o755, false);
    }
  }

  /**
   * Starts the namespace holder (`unshare` running NAMESPACE_SETUP, which becomes sshd once told
   * "go" on its stdin) and waits until its mounts are in place. Null when the server was stopped
   * meanwhile.
   */
  private async spawnNamespace(mode: '' | 'nixos' | 'stock'): Promise<ChildProcess | null> {
    const { dir } = this.o;
    const logFd = openSync(join(dir, 'sshd.log'), 'a');
    const atBoot = new Map(this.volumes);
    let child: ChildProcess;
    try {
      const bootVolumes = [...atBoot].map(([id, src]) => `${id} ${src}`).join('\n');
      child = spawn(
        'unshare',
        ['-m', '--propagation', 'private', 'sh', '-c', NAMESPACE_SETUP, 'sh', dir, this.o.rescueDisk ?? '', mode, bootVolumes],
        {
          detached: true,
          stdio: ['pipe', 'pipe', logFd],
          env: CHILD_ENV,
          cwd: '/',
        },
      );
    } finally {
      closeSync(logFd);
    }
    this.sshd = child;
    child.unref();
    this.exited = new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once('exit', () => resolve());
      child.once('error', () => resolve());
    });
    child.once('exit', (code, signal) => {
      this.listening = false;
      if (!this.stopped) this.o.log(`server ${this.o.id}: sshd exited (${signal ?? `status ${code}`}), see ${join(dir, 'sshd.log')}`);
    });

    // Wait until the mounts are in place before touching the namespace.
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const onData = (b: Buffer) => {
        out += b.toString();
        if (out.includes('mounted\n')) {
          cleanup();
          resolve();
        }
      };
      const onExit = () => {
        cleanup();
        reject(new Error(`could not set up the mount namespace, see ${join(dir, 'sshd.log')}`));
      };
      const cleanup = () => {
        child.stdout?.off('data', onData);
        child.off('exit', onExit);
      };
      child.stdout?.on('data', onData);
      child.once('exit', onExit);
    });
    const pid = child.pid;
    if (pid === undefined) throw new Error('sshd has no pid');
    const ns = readlinkSync(`/proc/${pid}/ns/mnt`);
    if (ns === ownMountNamespace()) throw new Error('unshare did not create a new mount namespace');
    this.nsFd = openSync(`/proc/${pid}/ns/mnt`, 'r');
    this.mntNs = ns;
    child.stdout?.destroy();
    // Volumes attached or detached while the namespace was being set up.
    for (const [id, src] of this.volumes) {
      if (!atBoot.has(id)) await this.nsScript(MOUNT_VOLUME, [String(id), src], `mount volume ${id}`);
    }
    for (const id of atBoot.keys()) {
      if (!this.volumes.has(id)) await this.nsScript(UNMOUNT_VOLUME, [String(id)], `unmount volume ${id}`);
    }
    if (this.stopped) {
      await this.stop();
      return null;
    }
    return child;
  }

  // ------------------------------------------------------------ NixOS worker image

  /**
   * Boots a NixOS worker image: attaches its disk, then runs the units of nixos/worker.nix in
   * systemd's order (see NixosBoot). Resolves once sshd accepts connections; rejects when sshd
   * is not started (the keys unit failed) or does not come up. The ready unit runs readyDelayMs
   * after sshd listens, unless a unit it requires failed (or the behaviour is never-ready).
   */
  private async startNixos(n: NixosBoot): Promise<void> {
    const { dir } = this.o;
    const units = this.units as Record<keyof typeof NIXOS_UNITS, UnitState>;
    if (dir === '/root' || dir.startsWith('/root/')) {
      throw new Error(`a NixOS worker's /root is a private tmpfs, so its folder ${dir} must not be under /root`);
    }
    mkdirSync(join(dir, 'scripts'), { recursive: true });
    for (const u of Object.values(NIXOS_UNITS)) {
      if (u.script !== null) copyFileSync(join(NIXOS_SCRIPTS, u.script), join(dir, 'scripts', u.script));
    }
    writeFileSync(join(dir, 'sshd_config'), nixosSshdConfig(this.o), { mode: 0o644 });
    await attachWorkerDisk(
      dir,
      n,
      () => this.stopped,
      (loop) => (this.loopDevice = loop),
    );
    if (this.stopped) {
      this.releaseDisk();
      return;
    }
    const child = await this.spawnNamespace('nixos');
    if (child === null) return;
    // The image's system packages that sessions use: the zstd relay, which nixos/worker.nix puts on
    // the PATH; here in the server's own /usr/local/bin, on every session's PATH.
    await this.writeFile(ZSTD_RELAY_PATH, readFileSync(join(packageRoot(), ZSTD_RELAY_SOURCE)), 0o755, false);
    await this.installNixRoot();

    const path = `${join(dir, 'bin')}:${CHILD_ENV.PATH ?? ''}`;
    // Both are ordered before sshd and not after each other: systemd starts them side by side. A
    // unit that requires a failed one fails at once (sshd and ready on the keys unit, ready on
    // zpool-expand), without waiting for the other.
    const expand = this.runUnit('expand', { PATH: path, NHB_SWAP_MIB: String(n.swapMib) })
      .catch(() => false)
      .then((ok) => {
        if (!ok && !this.stopped) units.ready = 'skipped';
        return ok;
      });
    const keysOk = await this.runUnit('keys', { PATH: path, NHB_METADATA_URL: n.metadataUrl, NHB_FETCH_ATTEMPTS: String(n.fetchAttempts) });
    if (this.stopped) return;
    // Ordered after the keys unit only: it runs whatever that did, beside sshd.
    const store = n.storeUnit ? this.runUnit('store', { PATH: path }).catch(() => false) : Promise.resolve(true);
    if (!keysOk) {
      units.sshd = 'skipped';
      units.ready = 'skipped';
      throw new Error(
        `${NIXOS_UNITS.keys.unit} failed, see ${join(dir, NIXOS_UNITS.keys.log)}: sshd (which requires it) and the ready marker not started`,
      );
    }
    // sshd is ordered after zpool-expand, but does not require it.
    const expandOk = await expand;
    if (this.stopped) return;
    if (this.o.wrongHostKey) {
      // After the keys unit: sshd presents another key than the one the user data gave.
      const fresh = generateKeyPair('wrong-host-key');
      const pair = {
        '/etc/ssh/ssh_host_ed25519_key': [`${fresh.privateKey.trim()}\n`, 0o600],
        '/etc/ssh/ssh_host_ed25519_key.pub': [`${fresh.publicKey.trim()}\n`, 0o644],
      } as const;
      for (const [p, [content, mode]] of Object.entries(pair)) await this.writeFile(p, Buffer.from(content), mode, false);
    }

    units.sshd = 'running';
    child.stdin?.end('go\n');
    try {
      await this.waitListening();
    } catch (e) {
      units.sshd = 'failed';
      units.ready = 'skipped';
      throw e;
    }
    if (this.stopped) return;
    units.sshd = 'done';
    if (!expandOk) {
      this.o.log(
        `server ${this.o.id}: ${NIXOS_UNITS.expand.unit} failed, see ${join(dir, NIXOS_UNITS.expand.log)}: ${NIXOS_UNITS.ready.unit} (which requires it) not started`,
      );
      return;
    }
    if (this.o.neverReady) return;
    const t = setTimeout(() => {
      this.timers.delete(t);
      // After the store unit, whatever it did (the ready unit only wants it).
      void store
        .then(() => (this.stopped ? false : this.runUnit('ready', {})))
        .then((ok) => {
          if (ok) {
            writeFileSync(join(dir, 'boot-finished'), `${new Date().toISOString()}\n`);
            this.cloudInitDone = true;
          }
        });
    }, this.o.readyDelayMs);
    t.unref();
    this.timers.add(t);
  }

  /**
   * Runs one unit's script inside the namespace with bash (the image wraps each in
   * writeShellApplication), its output going to its log file in the server folder.
   */
  private async runUnit(which: 'keys' | 'expand' | 'store' | 'ready', env: NodeJS.ProcessEnv): Promise<boolean> {
    const u = NIXOS_UNITS[which];
    const units = this.units as Record<keyof typeof NIXOS_UNITS, UnitState>;
    const logPath = join(this.o.dir, u.log);
    const note = (line: string) => appendFileSync(logPath, `${line}\n`);
    units[which] = 'running';
    note(`${new Date().toISOString()} ${u.unit}: starting ${u.script}`);
    const fd = openSync(logPath, 'a');
    let child: ChildProcess;
    try {
      child = this.nsExec(['bash', join(this.o.dir, 'scripts', u.script ?? '')], ['ignore', fd, fd], env);
    } finally {
      closeSync(fd);
    }
    const result = await new Promise<string>((resolve) => {
      child.once('exit', (code, signal) => resolve(signal ?? String(code)));
      child.once('error', (e) => resolve(e.message));
    });
    if (this.stopped) return false;
    const ok = result === '0';
    units[which] = ok ? 'done' : 'failed';
    note(`${new Date().toISOString()} ${u.unit}: ${ok ? 'finished' : `failed (${result})`}`);
    if (!ok) this.o.log(`server ${this.o.id}: ${u.unit} failed (${result}), see ${logPath}`);
    return ok;
  }

  /** Detaches the loop device (once every process in the server is gone, or lazily before). */
  private releaseDisk(): void {
    const loop = this.loopDevice;
    if (loop === null) return;
    this.loopDevice = null;
    detachLoopSync(loop);
  }

  /**
   * Hot-plugs a volume (attached while the server runs): bind-mounts its folder at
   * /mnt/HC_Volume_<id> in the namespace. Before the namespace exists, it is only noted, and the
   * boot mounts it.
   */
  async mountVolume(id: number, dir: string): Promise<void> {
    const known = this.volumes.has(id);
    this.volumes.set(id, dir);
    if (known || this.mntNs === null || this.stopped) return;
    await this.nsScript(MOUNT_VOLUME, [String(id), dir], `mount volume ${id}`);
  }

  /** Unplugs a volume (detached while the server runs): its mount point goes away. */
  async unmountVolume(id: number): Promise<void> {
    if (!this.volumes.delete(id) || this.mntNs === null || this.stopped) return;
    await this.nsScript(UNMOUNT_VOLUME, [String(id)], `unmount volume ${id}`);
  }

  /** Runs a short script in the namespace; a failure is logged. */
  private async nsScript(script: string, args: string[], what: string): Promise<void> {
    const child = this.inNamespace(script, args, ['ignore', 'ignore', 'pipe']);
    let err = '';
    child.stderr?.on('data', (b: Buffer) => (err += b.toString()));
    const code = await new Promise<number | null>((resolve) => {
      child.once('close', (c) => resolve(c));
      child.once('error', () => resolve(-1));
    });
    if (code !== 0) this.o.log(`server ${this.o.id}: ${what} failed: ${err.trim()}`);
  }

  /** Reads a file as the server sees it (inside its namespace); null when it cannot. */
  async readFile(path: string): Promise<string | null> {
    if (this.sshdPid === null || this.stopped) return null;
    const child = this.nsExec(['cat', '--', path], ['ignore', 'pipe', 'ignore'], {});
    let out = '';
    child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
    const code = await new Promise<number | null>((resolve) => {
      child.once('close', (c) => resolve(c));
      child.once('error', () => resolve(-1));
    });
    return code === 0 ? out : null;
  }

  private async waitListening(): Promise<void> {
    const deadline = Date.now() + 10_000;
    while (!this.stopped) {
      if (this.sshd?.exitCode !== null || this.sshd?.signalCode !== null) {
        throw new Error(`sshd exited before listening, see ${join(this.o.dir, 'sshd.log')}`);
      }
      const ok = await new Promise<boolean>((resolve) => {
        const s = connect({ host: this.o.address, port: this.o.sshPort });
        s.once('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.once('error', () => resolve(false));
      });
      if (ok) {
        this.listening = true;
        return;
      }
      if (Date.now() > deadline) throw new Error('sshd did not listen within 10 s');
      await sleep(25);
    }
  }

  /** Runs `sh -c script` inside the server's mount namespace. */
  private inNamespace(script: string, args: string[], stdio: ('ignore' | 'pipe' | number)[]): ChildProcess {
    return this.nsExec(['sh', '-c', script, 'sh', ...args], stdio, {});
  }

  /** Runs a command inside the server's mount namespace (clean environment plus `env`). */
  private nsExec(
    argv: string[],
    stdio: ('ignore' | 'pipe' | number)[],
    env: NodeJS.ProcessEnv,
    base: NodeJS.ProcessEnv = CHILD_ENV,
  ): ChildProcess {
    const pid = this.sshdPid;
    if (pid === null) throw new Error('no namespace');
    const child = spawn('nsenter', ['-t', String(pid), '-m', '--', ...argv], {
      detached: true,
      stdio,
      env: { ...base, ...env },
      cwd: '/',
    });
    child.unref();
    this.helpers.add(child);
    child.once('exit', () => this.helpers.delete(child));
    child.once('error', () => this.helpers.delete(child));
    return child;
  }

  private async writeFile(rawPath: string, content: Buffer, mode: number, append: boolean): Promise<void> {
    const path = posix.normalize(posix.join('/', rawPath));
    const target = privatePrefixes(this.o.nixos !== undefined).some((p) => path.startsWith(p)) ? path : join(this.o.dir, 'rootfs', path);
    if (target !== path) this.o.log(`server ${this.o.id}: write_files ${path} is outside the server's own mounts, written to ${target}`);
    const script = 'mkdir -p -- "$(dirname -- "$1")" && if [ "$3" = 1 ]; then cat >> "$1"; else cat > "$1"; fi && chmod "$2" "$1"';
    const child = this.inNamespace(script, [target, mode.toString(8), append ? '1' : '0'], ['pipe', 'ignore', 'pipe']);
    let err = '';
    child.stderr?.on('data', (b: Buffer) => (err += b.toString()));
    child.stdin?.end(content);
    const code = await new Promise<number | null>((resolve) => {
      child.once('exit', (c) => resolve(c));
      child.once('error', () => resolve(-1));
    });
    if (code !== 0) this.o.log(`server ${this.o.id}: write_files ${path} failed: ${err.trim()}`);
  }

  /**
   * cloud-init's runcmd: every entry a line of one shell script (string entries verbatim, list
   * entries shell-quoted by parseUserData), written to DIR/runcmd as cloud-init writes
   * /var/lib/cloud/instance/scripts/runcmd, and run once with sh inside the namespace. As there,
   * a failing line does not stop the next (no `set -e`), and an `exit` ends the rest. The script
   * and then its output go to cloud-init-output.log; boot-finished is written however it ended.
   */
  private async runcmd(): Promise<void> {
    const logPath = join(this.o.dir, 'cloud-init-output.log');
    const note = (line: string) => appendFileSync(logPath, `${line}\n`);
    const entries = this.o.config.runcmd;
    const script = `#!/bin/sh\n${entries.map((c) => `${c}\n`).join('')}`;
    const file = join(this.o.dir, 'runcmd');
    writeFileSync(file, script, { mode: 0o700 });
    note(`Cloud-init (fake) runcmd start: ${entries.length} command(s) as one script, ${file}:`);
    note(script.trimEnd());
    note('Cloud-init (fake) runcmd output:');
    const fd = openSync(logPath, 'a');
    let child: ChildProcess;
    try {
      child = this.nsExec(['sh', file], ['ignore', fd, fd], {}, this.o.stock ? CLOUD_FINAL_ENV : CHILD_ENV);
    } finally {
      closeSync(fd);
    }
    const result = await new Promise<string>((resolve) => {
      child.once('exit', (code, signal) => resolve(signal ?? String(code)));
      child.once('error', (e) => resolve(e.message));
    });
    if (this.stopped) return;
    if (result !== '0') note(`runcmd script failed (${result})`);
    note('Cloud-init (fake) finished');
    writeFileSync(join(this.o.dir, 'boot-finished'), `${new Date().toISOString()}\n`);
    this.cloudInitDone = true;
  }

  /** Pids of every process living in this server's mount namespace. */
  private namespaceMembers(): number[] {
    const ns = this.mntNs;
    if (ns === null || this.nsFd === null || ns === ownMountNamespace()) return [];
    const pids: number[] = [];
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        if (readlinkSync(`/proc/${entry}/ns/mnt`) === ns) pids.push(Number(entry));
      } catch {
        // gone, or a zombie
      }
    }
    return pids;
  }

  /**
   * Freezes the server (SIGSTOP to everything in it): TCP stays open but nothing answers, as
   * with a network partition or a hung machine. killSync() still ends it (SIGKILL works on stopped processes).
   */
  freeze(): number {
    const pids = this.namespaceMembers();
    for (const p of pids) {
      try {
        process.kill(p, 'SIGSTOP');
      } catch {
        // gone meanwhile
      }
    }
    return pids.length;
  }

  /**
   * SIGKILLs sshd, its sessions, runcmd and anything else in the namespace, and detaches the
   * disk's loop device (lazily, if a process being killed still holds it).
   */
  killSync(): void {
    this.killProcessesSync();
    this.releaseDisk();
  }

  private killProcessesSync(): void {
    this.stopped = true;
    // A unit that had not ended never will: say so, rather than leave it running or waiting forever.
    if (this.units)
      for (const [name, state] of Object.entries(this.units))
        if (state === 'running' || state === 'waiting') this.units[name as keyof typeof NIXOS_UNITS] = 'stopped';
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const pid = this.sshdPid;
    if (pid !== null) killQuietly(-pid);
    for (const h of this.helpers) if (h.pid !== undefined) killQuietly(-h.pid);
    for (const p of this.namespaceMembers()) killQuietly(p);
    this.listening = false;
  }

  /** Kills everything, waits until the namespace is empty, and detaches the disk. */
  async stop(): Promise<void> {
    this.killProcessesSync();
    const deadline = Date.now() + 5000;
    for (;;) {
      const left = this.namespaceMembers();
      // The helpers too (a boot script may hold the loop disk): one killed before it entered the
      // namespace is not among its members.
      if (left.length === 0 && this.helpers.size === 0) break;
      if (Date.now() > deadline) {
        this.o.log(`server ${this.o.id}: processes still alive after kill: ${left.join(' ')}`);
        break;
      }
      for (const p of left) killQuietly(p);
      await refSleep(20);
    }
    this.releaseDisk();
    if (this.nsFd !== null) {
      closeSync(this.nsFd);
      this.nsFd = null;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 2000);
      void this.exited.then(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}
