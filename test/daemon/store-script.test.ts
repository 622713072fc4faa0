/**
 * The worker's store-volume script on a real block device, as on Hetzner: a loop device over a
 * blank file stands for /dev/disk/by-id/scsi-0HC_Volume_<id>. Each run is in a private mount
 * namespace with its own /dev, /run and /nix, so nothing of this machine changes. The fake cloud
 * (test/e2e/warm-store.test.ts) covers the folder path.
 */
import { attachLoopDevice } from '../rig/loop-device.js';
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mountStoreScript, STORE_MARKER } from '../../src/daemon/store-script.js';

const ID = 7;

/** Runs `script` in a private mount namespace whose /dev holds only `loop` at the by-id path. */
function inNamespace(dir: string, loop: string, script: string): { code: number | null; out: string } {
  const setup = [
    'set -e',
    `mkdir -p "${dir}/host-dev"`,
    `mount --rbind /dev "${dir}/host-dev"`,
    'mount -t tmpfs -o mode=0755 tmpfs /dev',
    `for n in null zero urandom; do : > "/dev/$n"; mount --bind "${dir}/host-dev/$n" "/dev/$n"; done`,
    `: > ${loop}`,
    `mount --bind "${dir}/host-dev/${loop.slice('/dev/'.length)}" ${loop}`,
    'mkdir -p /dev/disk/by-id',
    `ln -s ${loop} /dev/disk/by-id/scsi-0HC_Volume_${ID}`,
    'mount -t tmpfs tmpfs /run',
    'mkdir -p /nix && mount -t tmpfs tmpfs /nix',
    'set +e',
  ].join('\n');
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', `${setup}\n( ${script} )\n`], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout + r.stderr };
}

t.test('a blank volume is formatted once and mounted at /nix; a formatted one keeps its data', async (t) => {
  const { dir, device: loop, image, release } = attachLoopDevice('nhb-store-vol-', 64);
  t.teardown(release);

  const first = inNamespace(
    dir,
    loop,
    `${mountStoreScript(ID)}\necho "status $?"\nfindmnt -n -o FSTYPE /nix | tail -n 1\ncat ${STORE_MARKER}\necho kept > /nix/probe`,
  );
  t.match(first.out, /status 0\next4\n7\n/, `formatted, mounted at /nix, marker written:\n${first.out}`);
  t.equal(spawnSync('blkid', ['-p', '-o', 'value', '-s', 'TYPE', image], { encoding: 'utf8' }).stdout.trim(), 'ext4');

  const second = inNamespace(dir, loop, `${mountStoreScript(ID)}\necho "status $?"\ncat /nix/probe`);
  t.match(second.out, /status 0\nkept\n/, `not formatted again: the file written on the first mount is there:\n${second.out}`);
});
