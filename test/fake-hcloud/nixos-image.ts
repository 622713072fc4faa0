// The NixOS worker image of nixos/worker.nix as the fake runs it: its units (each the script it
// runs on a real worker) and its disk, a sparse file on a loop device with stand-ins for the
// tools that cannot act here (zpool, swapon, systemctl).

import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { shellQuote } from './cloud-config.js';
import { CHILD_ENV } from './server-namespace.js';

/**
 * How a server of a NixOS worker image boots. Instead of cloud-init, the units of
 * nixos/worker.nix run, each as the script it runs on a real worker, inside the server's mount
 * namespace, in systemd's order:
 *
 *   nix-hcloud-builder-keys (fetch-keys.sh) and zpool-expand (zpool-expand.sh), side by side;
 *   nix-hcloud-builder-store (store-volume.sh): after the keys unit, whatever it did (`after`
 *     only), beside sshd; absent from an image built before it (`storeUnit: false`);
 *   sshd: after both, only when the keys unit succeeded (it is `requiredBy` sshd);
 *   nix-hcloud-builder-ready (ready-marker.sh): only when both units succeeded (`requires`), and
 *     after the store unit (which it only `wants`).
 *
 * A unit that requires a failed one is skipped at once.
 *
 * The disk is `DIR/worker-disk.img`, a sparse file laid out like the image (BIOS boot, ESP, the
 * pool partition ending 1 MiB before the end, `imageMib` in all) and then made `diskMib` large,
 * attached to a loop device while the server runs. sgdisk, partx, blkid and mkswap act on it for
 * real; `zpool` (there is no ZFS) and `swapon` (the machine's swap must not change) are stand-ins.
 */
export interface NixosBoot {
  /** NHB_METADATA_URL: this server's user data on the fake metadata service. */
  metadataUrl: string;
  /** NHB_FETCH_ATTEMPTS. */
  fetchAttempts: number;
  /** NHB_SWAP_MIB. */
  swapMib: number;
  /** Size of the image as written to the disk (the pool partition ends 1 MiB before it). */
  imageMib: number;
  /** Size of the server's disk. */
  diskMib: number;
  /** The image has the store unit (nix-hcloud-builder-store); false for an image built before it. */
  storeUnit: boolean;
}

/**
 * A unit's state: not started yet, running, done (a script exited 0; sshd listens), failed,
 * skipped (a unit it requires failed), absent (not in this image), or stopped (the machine
 * stopped, e.g. the server was deleted, before the unit ended).
 */
export type UnitState = 'waiting' | 'running' | 'done' | 'failed' | 'skipped' | 'absent' | 'stopped';

/** The units of nixos/worker.nix that the fake runs, with their scripts and log files. */
export const NIXOS_UNITS = {
  keys: { unit: 'nix-hcloud-builder-keys.service', script: 'fetch-keys.sh', log: 'fetch-keys.log' },
  expand: { unit: 'zpool-expand.service', script: 'zpool-expand.sh', log: 'zpool-expand.log' },
  store: { unit: 'nix-hcloud-builder-store.service', script: 'store-volume.sh', log: 'store-volume.log' },
  sshd: { unit: 'sshd.service', script: null, log: 'sshd.log' },
  ready: { unit: 'nix-hcloud-builder-ready.service', script: 'ready-marker.sh', log: 'ready-marker.log' },
} as const;

export const NIXOS_SCRIPTS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'nixos', 'scripts');

/** Loop devices attached by the fake servers of this process, detached by `releaseAllDisksSync` at exit. */
const attachedLoops = new Set<string>();

export function detachLoopSync(loop: string): void {
  // The partitions first (partx added them), then the device; a device still held open is
  // detached when its last user closes it.
  spawnSync('partx', ['--delete', loop], { stdio: 'ignore' });
  spawnSync('losetup', ['--detach', loop], { stdio: 'ignore' });
  attachedLoops.delete(loop);
}

/** Last-resort cleanup (process exit): detaches every loop device a fake server of this process holds. */
export function releaseAllDisksSync(): void {
  for (const loop of [...attachedLoops]) detachLoopSync(loop);
}

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: CHILD_ENV });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    child.once('error', (e) => resolve({ code: -1, out: e.message }));
    child.once('close', (code) => resolve({ code, out }));
  });
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.out.trim()}`);
  return r.out;
}

/** A sleep that keeps the event loop alive (the children are unref'd). */
const refSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Makes DIR/worker-disk.img on the first boot (the image written to a bigger disk), attaches it
 * to a loop device and writes the stand-ins for `zpool` and `swapon` into DIR/bin. Later boots
 * reuse the disk as the last boot left it. The loop device goes to `attached` as soon as it
 * exists (a stop meanwhile detaches it); once `stopped()` says so, the rest is skipped.
 */
export async function attachWorkerDisk(dir: string, n: NixosBoot, stopped: () => boolean, attached: (loop: string) => void): Promise<void> {
  const img = join(dir, 'worker-disk.img');
  if (!existsSync(img)) {
    if (n.imageMib < 20 || n.diskMib < n.imageMib) throw new Error('the worker image needs imageMib >= 20 and diskMib >= imageMib');
    // As make-single-disk-zfs-image lays it out: BIOS boot, ESP, the pool up to 1 MiB before the end.
    await must('truncate', ['-s', `${n.imageMib}M`, img]);
    await must('sgdisk', [
      '--clear',
      '--new=1:1M:+1M',
      '--typecode=1:EF02',
      '--new=2:2M:+14M',
      '--typecode=2:EF00',
      '--change-name=2:ESP',
      `--new=3:16M:${n.imageMib * 2048 - 2048 - 1}`,
      '--typecode=3:BF00',
      '--change-name=3:primary',
      img,
    ]);
    await must('truncate', ['-s', `${n.diskMib}M`, img]);
  }
  if (stopped()) return;
  const loop = (await must('losetup', ['--find', '--show', '--partscan', img])).trim();
  attachedLoops.add(loop);
  attached(loop);
  if (stopped()) return;
  // Partition nodes, as the kernel makes them when a disk appears (--partscan may not here).
  await run('partx', ['--add', loop]);
  const part = `${loop}p3`;
  const sysSize = `/sys/class/block/${part.slice('/dev/'.length)}/size`;
  for (let i = 0; !existsSync(part) || !existsSync(sysSize); i++) {
    if (i >= 100) throw new Error(`${part} did not appear`);
    await refSleep(20);
  }
  // The pool's size before `zpool online -e` is the partition's size on the first boot.
  const expandedMarker = join(dir, 'pool-expanded');
  const poolBytes = Number(readFileSync(sysSize, 'utf8')) * 512;
  const q = shellQuote;
  const calls = q(join(dir, 'stub-calls.log'));
  mkdirSync(join(dir, 'bin'), { recursive: true });
  writeFileSync(
    join(dir, 'bin', 'zpool'),
    [
      '#!/bin/sh',
      "# Stand-in for zpool (no ZFS here): the pool rpool is partition 3 of this server's loop disk.",
      `echo "zpool $*" >> ${calls}`,
      `part=${q(part)}`,
      'case "$*" in',
      `  "list -vHP rpool") printf 'rpool\\t-\\t-\\t-\\t-\\t-\\t-\\t-\\t1.00x\\tONLINE\\t-\\n\\t%s\\t-\\t-\\t-\\t-\\t-\\t-\\t-\\t-\\tONLINE\\n' "$part" ;;`,
      `  "list -Hp -o size rpool") if [ -e ${q(expandedMarker)} ]; then echo $(($(cat ${q(sysSize)}) * 512)); else echo ${poolBytes}; fi ;;`,
      '  "list -Hp -o expandsize rpool") echo - ;;',
      '  "set autoexpand=on rpool") ;;',
      `  "online -e rpool $part") : > ${q(expandedMarker)} ;;`,
      '  *) echo "zpool (stand-in): not supported: $*" >&2; exit 1 ;;',
      'esac',
      '',
    ].join('\n'),
  );
  writeFileSync(
    join(dir, 'bin', 'swapon'),
    `#!/bin/sh\n# Stand-in for swapon: the machine's swap must not change.\necho "swapon $*" >> ${calls}\n`,
  );
  // No systemd in the fake, and no nix-daemon: sessions run Nix as root on the local store.
  writeFileSync(
    join(dir, 'bin', 'systemctl'),
    `#!/bin/sh\n# Stand-in for systemctl: the fake runs no systemd (and no nix-daemon to stop).\necho "systemctl $*" >> ${calls}\n`,
  );
  for (const stub of ['zpool', 'swapon', 'systemctl']) chmodSync(join(dir, 'bin', stub), 0o755);
}
