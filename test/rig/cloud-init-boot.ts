/**
 * A boot with real cloud-init: the daemon's user data as the NoCloud seed of a Debian 12 root
 * booted with systemd under systemd-nspawn (cloud-init-boot.sh, cloud-init-root.sh), in a network
 * namespace of its own where a folder of files (the rig's Nix release tarball) is served at
 * SERVED_URL.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './rig.js';

const BOOT_SCRIPT = join(ROOT, 'test', 'rig', 'cloud-init-boot.sh');
/** Where the boot's runcmd finds the files of `serve`. */
export const SERVED_URL = 'http://127.0.0.1:8080';

export interface CloudInitBoot {
  /** cloud-init's final stage finished (boot-finished) before the timeout. */
  finished: boolean;
  /** The container's /var/log/cloud-init-output.log: runcmd's output, as a user reads it. */
  output: string;
  /** systemd's and cloud-init's console. */
  console: string;
  /** `cloud-init status --long` inside, at the end. */
  status: string;
  /** Unfinished jobs and failed units inside, at the end. */
  units: string;
  /** The ready marker (the default readyCommand's) exists. */
  ready: boolean;
  /** The failed marker's reason, when runcmd failed. */
  failed?: string;
  /** The files asked for (and sshd's ed25519 public key, root's authorized_keys), by path, as cloud-init left them. */
  files: Record<string, string>;
  /** The script's own stderr. */
  log: string;
}

const KEY_FILES = ['/etc/ssh/ssh_host_ed25519_key.pub', '/root/.ssh/authorized_keys'];

/**
 * Boots with `userData` as the seed's user-data (a new instance id each boot), `serve` served at
 * SERVED_URL; `collect` names more files of the container to read.
 */
export async function bootWithCloudInit(
  userData: string,
  o: { serve?: string; collect?: string[]; timeoutS?: number } = {},
): Promise<CloudInitBoot> {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-cloud-init-boot-'));
  try {
    const seed = join(dir, 'seed');
    const out = join(dir, 'out');
    mkdirSync(seed);
    writeFileSync(join(seed, 'user-data'), userData);
    writeFileSync(join(seed, 'meta-data'), `instance-id: nhb-${process.pid}-${Date.now()}\nlocal-hostname: nhb-worker\n`);
    const args = [...(o.serve ? ['--serve', o.serve] : []), ...(o.collect ?? []).flatMap((p) => ['--collect', p])];
    const log = await new Promise<string>((resolve, reject) => {
      const child = spawn('bash', [BOOT_SCRIPT, ...args, seed, out, String(o.timeoutS ?? 180)], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve(stderr) : reject(new Error(`cloud-init-boot.sh failed (${code}): ${stderr}`))));
    });
    const read = (name: string): string => (existsSync(join(out, name)) ? readFileSync(join(out, name), 'utf8') : '');
    const failed = read('nix-hcloud-builder/failed').trim();
    const files = Object.fromEntries(
      [...KEY_FILES, ...(o.collect ?? [])].filter((p) => existsSync(join(out, 'files', p))).map((p) => [p, read(join('files', p))]),
    );
    return {
      finished: existsSync(join(out, 'finished')),
      output: read('cloud-init-output.log'),
      console: read('console.log'),
      status: read('status'),
      units: read('units'),
      ready: existsSync(join(out, 'nix-hcloud-builder', 'ready')),
      ...(failed ? { failed } : {}),
      files,
      log,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
