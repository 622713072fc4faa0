/**
 * nixos/scripts/store-volume.sh, the NixOS worker image's warm store, run for real on a block
 * device as on Hetzner: a loop device over a blank file stands for
 * /dev/disk/by-id/scsi-0HC_Volume_<id>, and two folders stand for the /nix of two images (an old
 * one, then a newer one). Each "boot" is a private mount namespace with its own /dev, /run, /mnt
 * and /nix, so nothing of this machine changes; `systemctl` is a stand-in that records its calls.
 * The fake cloud (test/e2e/warm-store-nixos.test.ts) covers the folder path end to end.
 */
import { attachLoopDevice } from '../rig/loop-device.js';
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { STORE_MARKER, STORE_SETTINGS_FILE } from '../../src/daemon/store-script.js';
import { ROOT } from '../rig/rig.js';
import { RIG_NIX_CONF_FILE } from '../rig/nix-config.js';

const SCRIPT = join(ROOT, 'nixos', 'scripts', 'store-volume.sh');
const ID = 9;

interface Boot {
  code: number | null;
  out: string;
}

/**
 * One boot: a namespace whose /nix is `lower` (the image's store), whose /dev holds only `loop`
 * at the by-id path, then `prepare` (the image as built), then store-volume.sh, then `after`.
 */
function boot(dir: string, loop: string, lower: string, prepare: string, after: string, settings = true): Boot {
  const bin = join(dir, 'bin');
  const setup = [
    'set -e',
    `mkdir -p "${dir}/host-dev"`,
    `mount --rbind /dev "${dir}/host-dev"`,
    'mount -t tmpfs -o mode=0755 tmpfs /dev',
    `for n in null zero urandom random; do : > "/dev/$n"; mount --bind "${dir}/host-dev/$n" "/dev/$n"; done`,
    'ln -s /proc/self/fd /dev/fd',
    ...(loop
      ? [
          `: > ${loop}`,
          `mount --bind "${dir}/host-dev/${loop.slice('/dev/'.length)}" ${loop}`,
          'mkdir -p /dev/disk/by-id',
          `ln -s ${loop} /dev/disk/by-id/scsi-0HC_Volume_${ID}`,
        ]
      : []),
    `umount -l "${dir}/host-dev"`,
    'mount -t tmpfs tmpfs /run',
    'mount -t tmpfs tmpfs /mnt',
    `mkdir -p /nix && mount --bind "${lower}" /nix`,
    settings ? `mkdir -p /run/nix-hcloud-builder && echo '{"volumeId":${ID},"gcAtPercent":100}' > ${STORE_SETTINGS_FILE}` : ':',
    'cd /tmp',
    prepare,
    'set +e',
    `bash ${SCRIPT}; echo "script status $?"`,
    after,
  ].join('\n');
  const env = {
    PATH: `${bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
    HOME: '/root',
    NIX_CONF_DIR: join(RIG_NIX_CONF_FILE, '..'),
    NHB_CALLS: join(dir, 'calls.log'),
  };
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'bash', '-c', setup], { encoding: 'utf8', env, timeout: 120_000 });
  return { code: r.status, out: r.stdout + r.stderr };
}

/** `nix-store --add` of a file NAME holding TEXT (the same name and text give the same path). */
const add = (name: string, text: string): string =>
  `mkdir -p /tmp/nhb-add && printf '%s\\n' '${text}' > /tmp/nhb-add/${name} && nix-store --add /tmp/nhb-add/${name}`;

t.test("the volume becomes the upper layer of /nix; a newer image's paths stay valid and survive GC", async (t) => {
  const { dir, device: loop, image, release } = attachLoopDevice('nhb-nixos-store-', 128);
  t.teardown(release);
  mkdirSync(join(dir, 'bin'));
  writeFileSync(join(dir, 'bin', 'systemctl'), '#!/bin/sh\necho "systemctl $*" >> "$NHB_CALLS"\n');
  chmodSync(join(dir, 'bin', 'systemctl'), 0o755);
  const old = join(dir, 'image-old');
  const newer = join(dir, 'image-new');
  mkdirSync(old);
  mkdirSync(newer);

  // The old image: its system (a GC root) and a path it has but does not keep alive.
  const first = boot(
    dir,
    loop,
    old,
    [`sys1=$(${add('sys1', 'system one')}); ln -s "$sys1" /nix/var/nix/gcroots/sys1`, `shared=$(${add('shared', 'in both images')})`].join(
      '\n',
    ),
    [
      'findmnt -n -o FSTYPE /nix | tail -n 1',
      `echo "marker $(cat ${STORE_MARKER})"`,
      `up=$(${add('upload', 'uploaded by a build')}); echo "upload $up"`,
      'nix-store --check-validity "$sys1" && echo "sys1 valid"',
      // A GC of the old worker deletes the image path nothing keeps: a whiteout on the volume.
      'nix-store --delete "$shared" >/dev/null 2>&1 && echo "shared deleted"',
      'test -c "/mnt/nix-store-volume/nix-overlay/upper/store/${shared##*/}" && echo "whiteout on the volume"',
      'test -e "/mnt/nix-store-volume/nix-overlay/upper/store/${up##*/}" && echo "upload on the volume"',
      'touch /nix/store/probe 2>/dev/null || echo "store read-only"',
      'echo "shared $shared"; echo "sys1 $sys1"',
    ].join('\n'),
  );
  t.match(
    first.out,
    /script status 0\noverlay\nmarker 9\nupload \/nix\/store\/\S+-upload\nsys1 valid\nshared deleted\nwhiteout on the volume\nupload on the volume\nstore read-only\n/,
    `first boot:\n${first.out}`,
  );
  t.equal(
    spawnSync('blkid', ['-p', '-o', 'value', '-s', 'TYPE', image], { encoding: 'utf8' }).stdout.trim(),
    'ext4',
    'the blank volume was formatted',
  );
  t.same(
    readFileSync(join(dir, 'calls.log'), 'utf8').split('\n'),
    ['systemctl stop nix-daemon.socket nix-daemon.service', 'systemctl start nix-daemon.socket', ''],
    'nix-daemon was stopped around the overlay, its socket started again',
  );
  const upload = /upload (\S+)/.exec(first.out)?.[1] ?? '?';
  const shared = /shared (\/\S+)/.exec(first.out)?.[1] ?? '?';
  const sys1 = /sys1 (\/\S+)/.exec(first.out)?.[1] ?? '?';

  // The newer image: another system, and the shared path, now part of it.
  const second = boot(
    dir,
    loop,
    newer,
    [
      `sys2=$(${add('sys2', 'system two')}); ln -s "$sys2" /nix/var/nix/gcroots/sys2`,
      `shared=$(${add('shared', 'in both images')}); ln -s "$shared" /nix/var/nix/gcroots/shared`,
    ].join('\n'),
    [
      `nix-store --check-validity ${upload} && echo "upload valid"`,
      'nix-store --check-validity "$sys2" "$shared" && echo "image paths valid"',
      `nix-store --check-validity ${sys1} 2>/dev/null || echo "old image path dropped"`,
      'nix-store --gc >/dev/null 2>&1; echo "gc $?"',
      'nix-store --check-validity "$sys2" "$shared" && cat "$sys2" "$shared"',
      `test -e ${upload} || echo "upload collected"`,
    ].join('\n'),
  );
  t.match(
    second.out,
    /1 of the image's \d+ store paths were shadowed on the volume; dropped there/,
    `the whiteout was dropped:\n${second.out}`,
  );
  t.match(
    second.out,
    /script status 0\nupload valid\nimage paths valid\nold image path dropped\ngc 0\nsystem two\nin both images\nupload collected\n/,
    "the volume's database has the upload, the newer image's paths are valid and kept by GC, the old image's are gone",
  );
  t.not(shared, '?');
});

t.test('without store settings (a pool without a store) it changes nothing', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-nixos-store-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'bin'));
  writeFileSync(join(dir, 'bin', 'systemctl'), '#!/bin/sh\necho "systemctl $*" >> "$NHB_CALLS"\n');
  chmodSync(join(dir, 'bin', 'systemctl'), 0o755);
  mkdirSync(join(dir, 'lower'));
  const r = boot(
    dir,
    '',
    join(dir, 'lower'),
    ':',
    `findmnt -n -o FSTYPE /nix | grep -q overlay || echo "no overlay"; test -e ${STORE_MARKER} || echo "no marker"`,
    false,
  );
  t.match(
    r.out,
    /store-volume: no store volume in the user data; the store is the image's\nscript status 0\nno overlay\nno marker\n/,
    r.out,
  );
  t.throws(() => readFileSync(join(dir, 'calls.log')), 'nix-daemon untouched');
});
