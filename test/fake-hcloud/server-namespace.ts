// The mount namespace of a fake server: the script that builds it (and then becomes its sshd),
// the scripts that plug volumes in and out of it, and the environments its processes get.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { shellQuote } from './cloud-config.js';

/**
 * Paths that are the server's own inside its namespace; write_files elsewhere
 * go to DIR/rootfs instead of the host (/etc/ssh and /root only on a NixOS worker image).
 */
export function privatePrefixes(nixos: boolean): string[] {
  const own = ['/nix/', '/run/', '/etc/nix/', '/usr/local/'];
  return nixos ? [...own, '/etc/ssh/', '/root/'] : own;
}

/**
 * The environment cloud-init's final stage gives runcmd on a stock image: cloud-final.service has
 * no User=, so systemd sets no HOME or USER; PATH is systemd's default, LANG from the locale.
 */
export const CLOUD_FINAL_ENV: NodeJS.ProcessEnv = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  LANG: 'C.UTF-8',
};

export const CHILD_ENV: NodeJS.ProcessEnv = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  HOME: '/root',
  LANG: 'C.UTF-8',
};

/**
 * Run by `unshare -m` as `sh -c NAMESPACE_SETUP sh DIR RESCUE_DISK MODE BOOT_VOLUMES`: mounts the
 * server's own file systems, prints "mounted", waits for a line on stdin, then becomes sshd.
 */
export const NAMESPACE_SETUP = [
  'set -e',
  'mount --bind "$1/nix" /nix',
  'mount -t tmpfs -o mode=0755 tmpfs /run',
  'mkdir -p /run/sshd',
  // The server's own /etc: the host's, with writes kept in a tmpfs of this namespace (an overlay's
  // upper layer cannot be on overlayfs, which a container's root may be). Then its own /etc/nix,
  // created in that layer when the host has none; nothing of the host's /etc changes.
  'mkdir -p "$1/etc-layer"',
  'mount -t tmpfs -o mode=0755 tmpfs "$1/etc-layer"',
  'mkdir "$1/etc-layer/upper" "$1/etc-layer/work"',
  'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/etc-layer/upper,workdir=$1/etc-layer/work" /etc',
  // A stock image has no /etc/nix (the installer makes it); others get the rig's nix.conf there.
  'if [ "$3" != stock ]; then mkdir -p /etc/nix && mount --bind "$1/etc-nix" /etc/nix; fi',
  // Its own /usr/local too (cloud-config installs the zstd relay there), the same way.
  'mkdir "$1/etc-layer/usr-local" "$1/etc-layer/usr-local-work"',
  'mount -t overlay overlay -o "lowerdir=/usr/local,upperdir=$1/etc-layer/usr-local,workdir=$1/etc-layer/usr-local-work" /usr/local',
  // NixOS worker image only ($3 = nixos): its boot scripts write /etc/ssh and /root/.ssh, so both
  // are the server's own: a private /etc/ssh holding only the host's moduli (as NixOS has one), and
  // a private, empty /root (the host may have no /root/.ssh to mount over, and a fresh server's
  // root home is empty anyway).
  // Stock image only ($3 = stock): no Nix at all. The host's Nix commands are hidden (an overlay of
  // /usr/bin with them removed; their libraries stay, which the rig's release tarball uses), and so
  // are its /etc/nix and any nixbld users. Its own /root (Nix's tools may write under root's home
  // there) holding the rig's Nix settings as root's user config (Nix reads it after
  // /etc/nix/nix.conf, which the installer writes: the fake workers share one kernel, see
  // test/rig/nix-conf), its own /var/log, /run/systemd/system (systemd is PID 1 on the image;
  // here stand-ins answer for it: systemctl and systemd-tmpfiles in /usr/local/sbin, first on
  // the PATH).
  'if [ "$3" = stock ]; then',
  '  mkdir "$1/etc-layer/usr-bin" "$1/etc-layer/usr-bin-work"',
  '  mount -t overlay overlay -o "lowerdir=/usr/bin,upperdir=$1/etc-layer/usr-bin,workdir=$1/etc-layer/usr-bin-work" /usr/bin',
  '  rm -f /usr/bin/nix /usr/bin/nix-*',
  '  rm -rf /etc/nix',
  '  for f in /etc/passwd /etc/group /etc/shadow /etc/gshadow; do if [ -f "$f" ] && grep -q "^nixbld" "$f"; then sed -i "/^nixbld/d" "$f"; fi; done',
  '  mount -t tmpfs -o mode=0700 tmpfs /root',
  '  mkdir -p /root/.config/nix && cp "$1/etc-nix/nix.conf" /root/.config/nix/nix.conf',
  '  mount -t tmpfs -o mode=0755 tmpfs /var/log',
  '  mkdir -p /run/systemd/system /usr/local/sbin',
  '  cp "$1/stand-ins/systemctl" "$1/stand-ins/systemd-tmpfiles" /usr/local/sbin/',
  'fi',
  'if [ "$3" = nixos ]; then',
  '  [ -d /etc/ssh ] || { echo "this machine has no /etc/ssh to mount over" >&2; exit 1; }',
  '  rm -f "$1/moduli"; if [ -f /etc/ssh/moduli ]; then cp /etc/ssh/moduli "$1/moduli"; fi',
  '  mount -t tmpfs -o mode=0755 tmpfs /etc/ssh',
  '  if [ -f "$1/moduli" ]; then cp "$1/moduli" /etc/ssh/moduli; fi',
  '  mount -t tmpfs -o mode=0700 tmpfs /root',
  'fi',
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
  // The server's own /mnt, holding the volumes attached at boot ($4: one "<id> <folder>" a line),
  // each at /mnt/HC_Volume_<id>, where Hetzner's automount puts it (see VolumeMount).
  'mount -t tmpfs -o mode=0755 tmpfs /mnt',
  'if [ -n "$4" ]; then',
  '  printf "%s\\n" "$4" | while read -r id src; do mkdir "/mnt/HC_Volume_$id"; mount --bind "$src" "/mnt/HC_Volume_$id"; done',
  'fi',
  'echo mounted',
  'read -r _go',
  'exec /usr/sbin/sshd -D -e -f "$1/sshd_config" </dev/null >/dev/null',
].join('\n');

/** Hot-plugging a volume inside the namespace ($1 = id, $2 = its folder), and unplugging it. */
export const MOUNT_VOLUME = 'mkdir -p "/mnt/HC_Volume_$1" && mount --bind "$2" "/mnt/HC_Volume_$1"';
export const UNMOUNT_VOLUME = 'umount -l "/mnt/HC_Volume_$1" && rmdir "/mnt/HC_Volume_$1"';

/**
 * A volume as a server sees it. On Hetzner an attached volume is a block device,
 * /dev/disk/by-id/scsi-0HC_Volume_<id>, which automount formats once and mounts at
 * /mnt/HC_Volume_<id>. A folder cannot be a block device, so the fake gives the server the
 * volume's folder, bind-mounted at /mnt/HC_Volume_<id> in its private /mnt, whatever automount
 * said: the file system is already there and mounted, and there is no device node.
 */
export interface VolumeMount {
  id: number;
  /** The folder standing for the volume's content (dataDir/volumes/<id>). */
  dir: string;
}

/**
 * Stock image: the stand-ins for systemd's tools that NAMESPACE_SETUP copies into the server's
 * /usr/local/sbin, which Nix's installer calls (`systemctl link`, `enable`, `start
 * nix-daemon.socket`, `systemd-tmpfiles --create`): they record their calls in
 * `<serverDir>/stub-calls.log`. No nix-daemon is started: sessions run Nix as root on the local store.
 */
export function writeStockStandIns(serverDir: string): void {
  const dir = join(serverDir, 'stand-ins');
  mkdirSync(dir, { recursive: true });
  const calls = shellQuote(join(serverDir, 'stub-calls.log'));
  for (const tool of ['systemctl', 'systemd-tmpfiles']) {
    writeFileSync(join(dir, tool), `#!/bin/sh\n# Stand-in for ${tool}: the fake runs no systemd.\necho "${tool} $*" >> ${calls}\n`, {
      mode: 0o755,
    });
  }
}
