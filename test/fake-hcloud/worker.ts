// One fake server as a real machine: an sshd in its own mount namespace, with
// its own /nix (an empty store root), its own /run and its own /etc/nix,
// configured from the server's cloud-config the way cloud-init would.
//
// Layout of the server folder DIR:
//   nix/                     bind-mounted at /nix inside the server
//   etc-nix/                 bind-mounted at /etc/nix (seeded from the host's)
//   rootfs/                  where write_files entries for other paths land
//   ssh_host_ed25519_key     host key (0600), authorized_keys, sshd_config
//   sshd.log, cloud-init-output.log, user-data, boot-finished

import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, cpSync, existsSync, mkdirSync, openSync, closeSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join, posix } from 'node:path';
import { generateKeyPair } from '../../src/keys.js';
import type { CloudConfig } from './cloud-config.js';

/**
 * Paths that are the server's own inside its namespace; write_files elsewhere
 * go to DIR/rootfs instead of the host (/etc/nix is private only if the host has one).
 */
function privatePrefixes(): string[] {
  return existsSync('/etc/nix') ? ['/nix/', '/run/', '/etc/nix/'] : ['/nix/', '/run/'];
}

export const CHILD_ENV: NodeJS.ProcessEnv = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  HOME: '/root',
  LANG: 'C.UTF-8',
};

const SETUP_SCRIPT = [
  'set -e',
  'mount --bind "$1/nix" /nix',
  'mount -t tmpfs -o mode=0755 tmpfs /run',
  'mkdir -p /run/sshd',
  'if [ -d /etc/nix ]; then mount --bind "$1/etc-nix" /etc/nix; fi',
  // Rescue system only ($2 = the disk file): a private /dev holding the host's harmless device
  // nodes (bind mounts) and, at /dev/sda, the regular file $2, so that `dd of=/dev/sda` writes a
  // file the tests can read, and nothing outside this mount namespace changes.
  'if [ -n "$2" ]; then',
  '  : > "$2"',
  '  mkdir -p "$1/host-dev"',
  '  mount --rbind /dev "$1/host-dev"',
  '  mount -t tmpfs -o mode=0755 tmpfs /dev',
  '  for n in null zero full random urandom tty; do',
  '    if [ -e "$1/host-dev/$n" ]; then : > "/dev/$n"; mount --bind "$1/host-dev/$n" "/dev/$n"; fi',
  '  done',
  '  mkdir /dev/pts /dev/shm',
  '  mount --rbind "$1/host-dev/pts" /dev/pts',
  '  mount -t tmpfs -o mode=1777 tmpfs /dev/shm',
  '  ln -s /proc/self/fd /dev/fd; ln -s fd/0 /dev/stdin; ln -s fd/1 /dev/stdout; ln -s fd/2 /dev/stderr',
  '  : > /dev/sda',
  '  mount --bind "$2" /dev/sda',
  '  umount -l "$1/host-dev"',
  'fi',
  'echo mounted',
  'read -r _go',
  'exec /usr/sbin/sshd -D -e -f "$1/sshd_config" </dev/null >/dev/null',
].join('\n');

export interface WorkerOptions {
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
   * /dev/sda, bind-mounted over a private /dev (see SETUP_SCRIPT).
   */
  rescueDisk?: string;
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

export class Worker {
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
  private stopped = false;
  private exited: Promise<void> = Promise.resolve();
  private readonly helpers = new Set<ChildProcess>();
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly o: WorkerOptions) {}

  get sshdPid(): number | null {
    return this.sshd?.pid ?? null;
  }

  /** Writes the server folder; called when the server is created. */
  static prepare(dir: string, userData: string | null): void {
    mkdirSync(join(dir, 'nix'), { recursive: true });
    mkdirSync(join(dir, 'rootfs'), { recursive: true });
    mkdirSync(join(dir, 'etc-nix'), { recursive: true });
    if (existsSync('/etc/nix')) {
      cpSync('/etc/nix', join(dir, 'etc-nix'), { recursive: true, dereference: true, errorOnExist: false, force: true });
    }
    // Fake servers have no internet: without this, every build first waits ~4 s on cache.nixos.org.
    // And they share one kernel and the host's nixbld users, but each has its own user pool lock
    // (in its own /nix): Nix kills every process of a build user before a build, so two servers
    // using nixbld1 at once kill each other's builds. Real servers have users of their own.
    appendFileSync(join(dir, 'etc-nix', 'nix.conf'), '\n# fake server: no network, no shared build users\nsubstituters =\nbuild-users-group =\n');
    writeFileSync(join(dir, 'user-data'), userData ?? '', { mode: 0o600 });
  }

  /**
   * Boots the worker: host key, authorized keys, sshd in a new mount
   * namespace, write_files, and (after readyDelayMs) runcmd. Resolves once
   * sshd accepts connections, or rejects when it could not start.
   */
  async start(): Promise<void> {
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
    writeFileSync(join(dir, 'sshd_config'), this.sshdConfig(), { mode: 0o644 });

    const logFd = openSync(join(dir, 'sshd.log'), 'a');
    let child: ChildProcess;
    try {
      child = spawn('unshare', ['-m', '--propagation', 'private', 'sh', '-c', SETUP_SCRIPT, 'sh', dir, this.o.rescueDisk ?? ''], {
        detached: true,
        stdio: ['pipe', 'pipe', logFd],
        env: CHILD_ENV,
        cwd: '/',
      });
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
    if (this.stopped) {
      await this.stop();
      return;
    }

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

  private sshdConfig(): string {
    const { dir, address, sshPort } = this.o;
    return [
      `ListenAddress ${address}:${sshPort}`,
      `HostKey ${join(dir, 'ssh_host_ed25519_key')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      'PermitRootLogin prohibit-password',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'StrictModes no',
      `PidFile ${join(dir, 'sshd.pid')}`,
      `MaxSessions ${this.o.maxSessions}`,
      'MaxStartups 100:30:200',
      // bash reads root's .bashrc for ssh commands unless SHLVL is already set.
      'SetEnv SHLVL=1',
      'AcceptEnv LANG LC_*',
      'PrintMotd no',
      'PrintLastLog no',
      'LogLevel ERROR',
      // No Subsystem line: none is configured (sshd rejects "Subsystem none").
      '',
    ].join('\n');
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
    const pid = this.sshdPid;
    if (pid === null) throw new Error('no namespace');
    const child = spawn('nsenter', ['-t', String(pid), '-m', '--', 'sh', '-c', script, 'sh', ...args], {
      detached: true,
      stdio,
      env: CHILD_ENV,
      cwd: '/',
    });
    child.unref();
    this.helpers.add(child);
    child.once('exit', () => this.helpers.delete(child));
    return child;
  }

  private async writeFile(rawPath: string, content: Buffer, mode: number, append: boolean): Promise<void> {
    const path = posix.normalize(posix.join('/', rawPath));
    const target = privatePrefixes().some((p) => path.startsWith(p)) ? path : join(this.o.dir, 'rootfs', path);
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

  private async runcmd(): Promise<void> {
    const logPath = join(this.o.dir, 'cloud-init-output.log');
    const note = (line: string) => {
      const fd = openSync(logPath, 'a');
      try {
        writeFileSync(fd, `${line}\n`);
      } finally {
        closeSync(fd);
      }
    };
    note(`Cloud-init (fake) runcmd start: ${this.o.config.runcmd.length} command(s)`);
    for (const [i, cmd] of this.o.config.runcmd.entries()) {
      if (this.stopped) return;
      note(`+ runcmd[${i}]: ${cmd}`);
      const fd = openSync(logPath, 'a');
      let child: ChildProcess;
      try {
        child = this.inNamespace(cmd, [], ['ignore', fd, fd]);
      } finally {
        closeSync(fd);
      }
      const result = await new Promise<string>((resolve) => {
        child.once('exit', (code, signal) => resolve(signal ?? String(code)));
        child.once('error', (e) => resolve(e.message));
      });
      if (this.stopped) return;
      if (result !== '0') note(`runcmd[${i}] failed (${result}); continuing`);
    }
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

  /** SIGKILLs sshd, its sessions, runcmd and anything else in the namespace. */
  killSync(): void {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const pid = this.sshdPid;
    if (pid !== null) killQuietly(-pid);
    for (const h of this.helpers) if (h.pid !== undefined) killQuietly(-h.pid);
    for (const p of this.namespaceMembers()) killQuietly(p);
    this.listening = false;
  }

  /** Kills everything and waits until the namespace is empty. */
  async stop(): Promise<void> {
    this.killSync();
    const deadline = Date.now() + 5000;
    for (;;) {
      const left = this.namespaceMembers();
      if (left.length === 0) break;
      if (Date.now() > deadline) {
        this.o.log(`server ${this.o.id}: processes still alive after kill: ${left.join(' ')}`);
        break;
      }
      for (const p of left) killQuietly(p);
      await refSleep(20);
    }
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
