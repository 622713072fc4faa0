/**
 * A Nix release tarball made from the machine's Nix, laid out as NixOS/nix's
 * packaging/binary-tarball.nix lays out the real ones, and an HTTP server for it: what a fake
 * stock worker downloads and installs. Its `install` and `install-multi-user` are the rig's
 * stand-ins for Nix's (test/rig/nix-installer/, with the real one's HOME check); its
 * `install-systemd-multi-user.sh` is Nix's own, Debian trixie's copy fetched at test time
 * (nix-systemd-installer.sh): code of other projects is never committed here, and Debian's source
 * package of Nix has no other installer script. `@nix@` and `@cacert@` are substituted:
 *
 *   nix-VERSION-SYSTEM/install, install-multi-user, install-systemd-multi-user.sh, .reginfo
 *   nix-VERSION-SYSTEM/store/HASH-nix-VERSION/    bin/nix and its names, etc/profile.d, the
 *                                                 systemd units and tmpfiles.d of nix-daemon
 *   nix-VERSION-SYSTEM/store/HASH-nss-cacert-rig/ etc/ssl/certs/ca-bundle.crt
 *
 * The store paths are real ones: added to a store rooted in a scratch folder with the machine's
 * nix-store, which also writes the `.reginfo` (`--dump-db`). Unlike a real release, whose closure
 * is self-contained, the `nix` binary is Debian's nix-bin and loads its libraries from
 * /usr/lib/nix, which the fake stock image keeps (it hides only the commands).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { ROOT } from './rig.js';
import { RIG_NIX_CONF_DIR } from './nix-config.js';

const RIG_DIR = join(ROOT, 'test', 'rig');
const INSTALLER_SCRIPTS = join(RIG_DIR, 'nix-installer');
/** The names of Nix's multi-call binary that Debian's nix-bin installs. */
const NIX_COMMANDS = [
  'nix-build',
  'nix-channel',
  'nix-collect-garbage',
  'nix-copy-closure',
  'nix-daemon',
  'nix-env',
  'nix-hash',
  'nix-instantiate',
  'nix-prefetch-url',
  'nix-shell',
  'nix-store',
];

export interface RigNixRelease {
  version: string;
  system: string;
  /** The .tar.xz file. */
  file: string;
  sha256: string;
}

function must(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env, maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** The nix-daemon units as Nix ships them, with the profile's path for the binary. */
const UNITS: Record<string, string> = {
  'lib/systemd/system/nix-daemon.socket':
    '[Unit]\nDescription=Nix Daemon Socket\nBefore=multi-user.target\nRequiresMountsFor=/nix/store\nConditionPathIsReadWrite=/nix/var/nix/daemon-socket\n\n[Socket]\nListenStream=/nix/var/nix/daemon-socket/socket\n\n[Install]\nWantedBy=sockets.target\n',
  'lib/systemd/system/nix-daemon.service':
    '[Unit]\nDescription=Nix Daemon\nRequires=nix-daemon.socket\nAfter=nix-daemon.socket\nRequiresMountsFor=/nix/store\nRequiresMountsFor=/nix/var\nConditionPathIsReadWrite=/nix/var/nix/daemon-socket\n\n[Service]\nExecStart=@/nix/var/nix/profiles/default/bin/nix-daemon nix-daemon --daemon\nKillMode=process\nLimitNOFILE=1048576\n\n[Install]\nWantedBy=multi-user.target\n',
  'lib/tmpfiles.d/nix-daemon.conf': 'd /nix/var/nix/daemon-socket 0755 root root - -\n',
};

/** Makes the tarball in `dir` (once: a second call returns the first one's). */
export function makeNixRelease(dir: string): RigNixRelease {
  const version = /(\d+\.\d+(\.\d+)?)/.exec(must('nix-store', ['--version']))?.[1];
  if (!version) throw new Error("cannot read the version of this machine's nix-store");
  const system = process.arch === 'arm64' ? 'aarch64-linux' : 'x86_64-linux';
  const name = `nix-${version}-${system}`;
  const file = join(dir, `${name}.tar.xz`);
  if (!existsSync(file)) {
    const stage = join(dir, 'stage');
    const nix = join(stage, `nix-${version}`);
    mkdirSync(join(nix, 'bin'), { recursive: true });
    copyFileSync(realpathSync(must('sh', ['-c', 'command -v nix-store']).trim()), join(nix, 'bin', 'nix'));
    chmodSync(join(nix, 'bin', 'nix'), 0o755);
    for (const c of NIX_COMMANDS) symlinkSync('nix', join(nix, 'bin', c));
    mkdirSync(join(nix, 'etc', 'profile.d'), { recursive: true });
    const examples = '/usr/share/doc/nix-bin/examples';
    for (const [from, to] of [
      ['nix-profile-daemon.sh', 'nix-daemon.sh'],
      ['nix-profile.sh', 'nix.sh'],
    ] as const) {
      const src = join(examples, from);
      writeFileSync(join(nix, 'etc', 'profile.d', to), existsSync(src) ? readFileSync(src) : '');
    }
    for (const [path, text] of Object.entries(UNITS)) {
      mkdirSync(join(nix, path, '..'), { recursive: true });
      writeFileSync(join(nix, path), text);
    }
    const cacert = join(stage, 'nss-cacert-rig');
    mkdirSync(join(cacert, 'etc', 'ssl', 'certs'), { recursive: true });
    const bundle = '/etc/ssl/certs/ca-certificates.crt';
    writeFileSync(join(cacert, 'etc', 'ssl', 'certs', 'ca-bundle.crt'), existsSync(bundle) ? readFileSync(bundle) : '');

    // Real store paths, in a store rooted in the scratch folder (the machine's /nix is not touched).
    const storeRoot = join(dir, 'store-root');
    const env = { ...process.env, NIX_REMOTE: `local?root=${storeRoot}`, NIX_CONF_DIR: RIG_NIX_CONF_DIR };
    const nixPath = must('nix-store', ['--add', nix], env).trim();
    const cacertPath = must('nix-store', ['--add', cacert], env).trim();
    const top = join(dir, name);
    mkdirSync(join(top, 'store'), { recursive: true });
    for (const p of [nixPath, cacertPath])
      cpSync(join(storeRoot, p), join(top, 'store', p.slice('/nix/store/'.length)), { recursive: true, verbatimSymlinks: true });
    writeFileSync(join(top, '.reginfo'), must('nix-store', ['--dump-db', nixPath, cacertPath], env));
    const systemdPart = must('bash', [join(RIG_DIR, 'nix-systemd-installer.sh')]).trim();
    const scripts: [string, string][] = [
      [join(INSTALLER_SCRIPTS, 'install'), 'install'],
      [join(INSTALLER_SCRIPTS, 'install-multi-user'), 'install-multi-user'],
      [systemdPart, 'install-systemd-multi-user.sh'],
    ];
    for (const [from, to] of scripts) {
      const text = readFileSync(from, 'utf8').replaceAll('@nix@', nixPath).replaceAll('@cacert@', cacertPath);
      writeFileSync(join(top, to), text, { mode: 0o755 });
    }
    must('sh', ['-c', 'tar -c --owner=0 --group=0 -C "$1" "$2" | xz -1 -T1 > "$3"', 'sh', dir, name, file]);
  }
  return { version, system, file, sha256: createHash('sha256').update(readFileSync(file)).digest('hex') };
}

/** A pool's `nix` setting for `release` downloaded from `url` (a template with {version} and {system}). */
export function poolNixSetting(release: RigNixRelease, url: string): { version: string; url: string; sha256: Record<string, string> } {
  return { version: release.version, url, sha256: { [release.system]: release.sha256 } };
}

export interface ReleaseServer {
  /** The `nix.url` template that points at this server. */
  url: string;
  /** Requests so far, by status. */
  statuses: number[];
  /** Serve these bytes instead of the tarball's (a tampered download). */
  tamper(on: boolean): void;
  close(): Promise<void>;
}

/** Serves the tarball at /nix-VERSION/nix-VERSION-SYSTEM.tar.xz on 127.0.0.1. */
export async function serveNixRelease(release: RigNixRelease): Promise<ReleaseServer> {
  const body = readFileSync(release.file);
  const path = `/nix-${release.version}/nix-${release.version}-${release.system}.tar.xz`;
  let tampered = false;
  const statuses: number[] = [];
  const server: Server = createServer((req, res) => {
    if (req.url !== path) {
      statuses.push(404);
      res.writeHead(404).end();
      return;
    }
    statuses.push(200);
    const bytes = tampered ? Buffer.concat([body.subarray(0, body.length - 1), Buffer.from([(body.at(-1) ?? 0) ^ 1])]) : body;
    res.writeHead(200, { 'content-type': 'application/x-xz', 'content-length': bytes.length }).end(bytes);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/nix-{version}/nix-{version}-{system}.tar.xz`,
    statuses,
    tamper: (on) => (tampered = on),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
