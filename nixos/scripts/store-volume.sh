#!/usr/bin/env bash
# Worker boot, after nix-hcloud-builder-keys and before the ready marker: puts the Nix store on the
# pool's store volume (the warm store, see docs/warm-store.md). fetch-keys.sh leaves the
# volume's settings from the user data in /run/nix-hcloud-builder/store-volume.json; without that
# file (a pool without `store`) this does nothing.
#
# The image's system lives in its own /nix/store, so the volume cannot replace /nix. Instead:
#   1. the volume is found (/dev/disk/by-id/scsi-0HC_Volume_<id>, formatted ext4 only when blkid
#      finds it blank; or the folder /mnt/HC_Volume_<id>) and mounted at /mnt/nix-store-volume,
#      with the same lines as on stock images (attach_volume, generated);
#   2. the image's Nix database is dumped (nix-store --dump-db), and every path of the image's
#      store that the volume's layer holds too (a whiteout left by an earlier worker's garbage
#      collection, or a copy) is dropped from that layer, so the image's own copy shows;
#   3. nix-daemon is stopped, and an overlay is mounted at /nix: lower = the image's /nix, upper
#      (and work) on the volume. Everything uploaded or built from now on lands on the volume;
#      the Nix database is the volume's (from earlier workers), into which
#   4. the image's registrations are loaded (nix-store --load-db; existing entries are updated),
#      so the system paths of this image, maybe newer than the volume's last one, are valid and
#      never garbage (GC roots such as /run/current-system keep them);
#   5. /nix/store is made read-only again as NixOS has it, the marker is written, nix-daemon's
#      socket is started again, and the store is checked and garbage-collected as on stock images
#      (check_store, generated): `nix-store --verify` also drops the registrations of an older
#      image's paths that this image's layer no longer has.
# Any failure before the overlay leaves the image's own store (a cold worker: the daemon warns).
#
# The overlay's lower layer may change between mounts (a new image) because none of the features
# that forbid that (redirect_dir, index, metacopy, xino) is on.
#
# Environment (for tests): NHB_STORE_SETTINGS (the settings file), NHB_STORE_MOUNT (where the
# volume is mounted).
set -euo pipefail

settings=${NHB_STORE_SETTINGS:-/run/nix-hcloud-builder/store-volume.json}
target=${NHB_STORE_MOUNT:-/mnt/nix-store-volume}
marker=/run/nix-hcloud-builder/store-volume

if [ ! -e "$settings" ]; then
  echo "store-volume: no store volume in the user data; the store is the image's"
  exit 0
fi
id=$(jq -er '.volumeId | select(type == "number" and . == floor and . > 0)' "$settings")
at=$(jq -er '.gcAtPercent | select(type == "number" and . == floor and . >= 1 and . <= 100)' "$settings")

# 1. Generated from attachVolumeLines() and checkStoreLines() in src/daemon/store-script.ts, the
# lines stock images run (test/nixos/module.test.ts checks that they are the same).
attach_volume() (
  set +e
  dev="/dev/disk/by-id/scsi-0HC_Volume_$id"; dir="/mnt/HC_Volume_$id"; n=0
  while [ ! -b "$dev" ] && [ ! -d "$dir" ] && [ "$n" -lt 60 ]; do n=$((n + 1)); sleep 1; done
  if [ -b "$dev" ]; then
    blkid -p "$dev" >/dev/null 2>&1; rc=$?
    if [ "$rc" -eq 2 ]; then mkfs.ext4 -q -L nix-store "$dev" || exit 1
    elif [ "$rc" -ne 0 ]; then echo "nix-hcloud-builder: cannot probe $dev (blkid status $rc); not using the volume" >&2; exit 1; fi
    mkdir -p "$target" && mount "$dev" "$target" || exit 1
  elif [ -d "$dir" ]; then
    mkdir -p "$target" && mount --bind "$dir" "$target" || exit 1
  else
    echo "nix-hcloud-builder: volume $id did not appear; the store starts empty" >&2; exit 1
  fi
)
check_store() (
  set +e
  [ -e /run/nix-hcloud-builder/store-volume ] || exit 0
  nix-store --verify || echo "nix-hcloud-builder: nix-store --verify reported problems" >&2
  used=$(df -P /nix | awk 'NR == 2 { sub(/%/, "", $5); print $5 }')
  if [ "$used" -gt "$at" ]; then
    bytes=$(df -Pk /nix | awk -v goal="$((at * 3 / 4))" 'NR == 2 { printf "%.0f", ($3 - $2 * goal / 100) * 1024 }')
    echo "nix-hcloud-builder: the store is $used% full (gcAtPercent $at); freeing $bytes bytes"
    nix-store --gc --max-freed "$bytes"
  fi
)

if ! attach_volume; then
  echo "store-volume: volume $id not usable; the store is the image's, empty of earlier builds" >&2
  exit 1
fi
upper=$target/nix-overlay/upper
work=$target/nix-overlay/work
mkdir -p "$upper/store" "$work"

# 2. The image's registrations, and its paths shadowed on the volume.
image_db=$(mktemp)
trap 'rm -f "$image_db"' EXIT
nix-store --dump-db >"$image_db"
paths=0
shadowed=0
while IFS= read -r -d '' path; do
  name=${path##*/}
  paths=$((paths + 1))
  if [ -e "$upper/store/$name" ] || [ -L "$upper/store/$name" ]; then
    rm -rf "${upper:?}/store/$name"
    shadowed=$((shadowed + 1))
  fi
done < <(find /nix/store -mindepth 1 -maxdepth 1 -name '????????????????????????????????-*' -print0)
echo "store-volume: $shadowed of the image's $paths store paths were shadowed on the volume; dropped there"

# 3. The overlay, with nix-daemon stopped (its socket is under /nix); started again on every exit.
systemctl stop nix-daemon.socket nix-daemon.service
trap 'rm -f "$image_db"; systemctl start nix-daemon.socket' EXIT
if ! mount -t overlay overlay -o "lowerdir=/nix,upperdir=$upper,workdir=$work,redirect_dir=off,index=off,metacopy=off,xino=off" /nix; then
  echo "store-volume: cannot mount the overlay on /nix; the store is the image's" >&2
  umount "$target" || true
  exit 1
fi

# 4. The image's registrations into the volume's database.
if ! nix-store --load-db <"$image_db"; then
  echo "store-volume: cannot load the image's registrations into the volume's database; the store is the image's" >&2
  { umount /nix && umount "$target"; } || true
  exit 1
fi

# 5. Read-only store as NixOS has it (Nix remounts it writable for itself), the marker, the check.
if ! { mount --bind /nix/store /nix/store && mount -o remount,ro,bind /nix/store; }; then
  echo "store-volume: could not make /nix/store read-only; going on" >&2
fi
mkdir -p "${marker%/*}"
echo "$id" >"$marker"
check_store
echo "store-volume: /nix is the image's store with volume $id over it ($(df -h --output=used,size /nix | awk 'NR == 2 { print $1 " of " $2 }') used on the volume)"
