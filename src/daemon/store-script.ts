/**
 * The warm store on the worker: shell snippets the cloud-config runs, in this order, around the
 * Nix install (see user-data.ts). Plain POSIX sh (test/daemon/store-script.test.ts runs
 * shellcheck on them); the values put in are integers checked by the config.
 *
 * One script serves Hetzner and the fake cloud. On Hetzner an attached volume is the block device
 * /dev/disk/by-id/scsi-0HC_Volume_<id> (we create volumes with automount off): it is formatted
 * when it has no file system (blkid finds no signature: exit status 2; any other failure is not
 * taken for "blank", so a store is never formatted by mistake) and mounted at /nix. In the fake
 * (or with Hetzner's automount) the volume is a folder at /mnt/HC_Volume_<id>: bind-mounted at
 * /nix. Either way /nix is the volume before Nix is installed or started, and every later ssh
 * session (same mount namespace) sees it.
 *
 * The NixOS worker image runs the same two cores (`attachVolumeLines`, `checkStoreLines`) from
 * nixos/scripts/store-volume.sh, where they are pasted between "generated" lines (test/nixos/module.test.ts
 * checks that they are these): there the volume is mounted beside /nix and becomes the upper
 * layer of an overlay over the image's /nix (see that script).
 *
 * cloud-init writes all runcmd entries into one script, so each snippet is a subshell: its
 * `exit` ends the snippet, never the commands after it (the ready marker's among them). A mount
 * made in the subshell stays: mounts belong to the mount namespace, not to the process.
 */

/** `( lines )`: a runcmd entry whose `exit` cannot end the whole runcmd script. */
function subshell(lines: string[]): string {
  return ['(', ...lines.map((l) => `  ${l}`), ')'].join('\n');
}

/** Written once the volume is the store: the check step runs only then. */
export const STORE_MARKER = '/run/nix-hcloud-builder/store-volume';

/**
 * The store volume's settings as the user data carries them for images without cloud-init (a
 * write_files entry; nixos/scripts/fetch-keys.sh writes it, store-volume.sh reads it).
 */
export const STORE_SETTINGS_FILE = '/run/nix-hcloud-builder/store-volume.json';

/**
 * Finds volume `$id` (waiting up to a minute), formats it when blank and mounts it at `$target`;
 * exits non-zero when it cannot. Reads the shell variables `id` and `target`.
 */
export function attachVolumeLines(): string[] {
  return [
    'dev="/dev/disk/by-id/scsi-0HC_Volume_$id"; dir="/mnt/HC_Volume_$id"; n=0',
    // The device (or automount's folder) may appear a little after boot.
    'while [ ! -b "$dev" ] && [ ! -d "$dir" ] && [ "$n" -lt 60 ]; do n=$((n + 1)); sleep 1; done',
    'if [ -b "$dev" ]; then',
    '  blkid -p "$dev" >/dev/null 2>&1; rc=$?',
    '  if [ "$rc" -eq 2 ]; then mkfs.ext4 -q -L nix-store "$dev" || exit 1',
    '  elif [ "$rc" -ne 0 ]; then echo "nix-hcloud-builder: cannot probe $dev (blkid status $rc); not using the volume" >&2; exit 1; fi',
    '  mkdir -p "$target" && mount "$dev" "$target" || exit 1',
    'elif [ -d "$dir" ]; then',
    '  mkdir -p "$target" && mount --bind "$dir" "$target" || exit 1',
    'else',
    '  echo "nix-hcloud-builder: volume $id did not appear; the store starts empty" >&2; exit 1',
    'fi',
  ];
}

/**
 * With the volume as the store (STORE_MARKER written): checks the store's database (not the
 * contents: that would read every byte), and collects garbage when the file system under /nix is
 * fuller than `$at` percent, down to three quarters of it. Reads the shell variable `at`.
 */
export function checkStoreLines(): string[] {
  return [
    `[ -e ${STORE_MARKER} ] || exit 0`,
    'nix-store --verify || echo "nix-hcloud-builder: nix-store --verify reported problems" >&2',
    'used=$(df -P /nix | awk \'NR == 2 { sub(/%/, "", $5); print $5 }\')',
    'if [ "$used" -gt "$at" ]; then',
    '  bytes=$(df -Pk /nix | awk -v goal="$((at * 3 / 4))" \'NR == 2 { printf "%.0f", ($3 - $2 * goal / 100) * 1024 }\')',
    '  echo "nix-hcloud-builder: the store is $used% full (gcAtPercent $at); freeing $bytes bytes"',
    '  nix-store --gc --max-freed "$bytes"',
    'fi',
  ];
}

/** Mounts volume `volumeId` at /nix; exits non-zero (the worker then builds on a cold, local store) when it cannot. */
export function mountStoreLines(volumeId: number): string[] {
  return [
    `id=${Math.trunc(volumeId)}; target=/nix`,
    ...attachVolumeLines(),
    `mkdir -p "$(dirname ${STORE_MARKER})" && echo "$id" > ${STORE_MARKER}`,
  ];
}

/** mountStoreLines as one runcmd entry of its own. */
export function mountStoreScript(volumeId: number): string {
  return subshell(mountStoreLines(volumeId));
}

/**
 * After Nix is up, before the ready marker: checkStoreLines with `gcAtPercent`. At boot nothing
 * runs, so no path is a GC root.
 */
export function checkStoreAtLines(gcAtPercent: number): string[] {
  return [`at=${Math.trunc(gcAtPercent)}`, ...checkStoreLines()];
}

/** checkStoreAtLines as one runcmd entry of its own. */
export function checkStoreScript(gcAtPercent: number): string {
  return subshell(checkStoreAtLines(gcAtPercent));
}
