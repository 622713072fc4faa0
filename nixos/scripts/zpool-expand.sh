#!/usr/bin/env bash
# Worker boot, before sshd: the image is a small disk; the server's disk is larger. Moves the
# backup GPT to the new end of the disk, puts a swap partition at the very end, grows the ZFS
# partition up to it, lets the pool take the new space (autoexpand, `zpool online -e`) and waits
# until it has. Idempotent: on a disk already grown it only turns swap on.
#
# Environment: NHB_POOL (default rpool), NHB_SWAP_MIB (default: the memory size, at most 8 GiB,
# 0 for none).
set -euo pipefail

pool=${NHB_POOL:-rpool}
mem_mib=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
swap_mib=${NHB_SWAP_MIB:-$((mem_mib < 8192 ? mem_mib : 8192))}

# The pool's one vdev, as a partition path (e.g. /dev/sda3), and its disk and number.
part=$(zpool list -vHP "$pool" | awk '$1 ~ /^\/dev\// {print $1; exit}')
part=$(readlink -f "$part")
disk=/dev/$(lsblk -no pkname "$part")
number=$(cat "/sys/class/block/${part##*/}/partition")
echo "zpool-expand: pool $pool on $part (partition $number of $disk)"

sector_size=$(blockdev --getss "$disk")
mib=$((1024 * 1024 / sector_size))
# The swap partition of this disk, if any: its partitions from sysfs (a glob like /dev/sda* would
# also match /dev/sdaa, or /dev/loop10 for /dev/loop1).
find_swap() {
  local parts
  mapfile -t parts < <(lsblk -lnpo NAME "$disk" | tail -n +2)
  ((${#parts[@]} > 0)) || return 0
  blkid -t PARTLABEL=swap -o device "${parts[@]}" 2>/dev/null | head -n1 || true
}
swap_part=$(find_swap)

info() { sgdisk --info="$number" "$disk" | sed -n "s/^$1: *//p"; }

if [ -z "$swap_part" ]; then
  sgdisk --move-second-header "$disk" >/dev/null
  last=$(sgdisk --end-of-largest "$disk")
  start=$(info 'First sector' | cut -d' ' -f1)
  end=$(info 'Last sector' | cut -d' ' -f1)
  type=$(info 'Partition GUID code' | cut -d' ' -f1)
  guid=$(info 'Partition unique GUID')
  name=$(info 'Partition name' | sed "s/^'\(.*\)'$/\1/")
  if ((last <= end + (swap_mib + 1) * mib)); then
    echo "zpool-expand: no new space after partition $number of $disk"
  else
    if ((swap_mib > 0)); then
      swap_start=$(((last + 1 - swap_mib * mib) / mib * mib))
      zfs_end=$((swap_start - 1))
    else
      zfs_end=$last
    fi
    # Re-create the ZFS partition at the same start with the same GUID, type and name, only longer.
    args=(--delete="$number" --new="$number:$start:$zfs_end" --typecode="$number:$type"
      --partition-guid="$number:$guid" --change-name="$number:$name")
    if ((swap_mib > 0)); then
      args+=(--new="0:$swap_start:$last" --typecode="0:8200" --change-name="0:swap")
    fi
    sgdisk "${args[@]}" "$disk" >/dev/null
    # Tell the kernel: the new size of the partition in use (BLKPG), and the new partition.
    partx --update --nr "$number" "$disk"
    partx --add "$disk" 2>/dev/null || true
    if command -v udevadm >/dev/null; then udevadm settle; fi
    swap_part=$(find_swap)
    if [ -n "$swap_part" ]; then
      mkswap --label swap "$swap_part" >/dev/null
    fi
  fi
fi

before=$(zpool list -Hp -o size "$pool")
zpool set autoexpand=on "$pool"
zpool online -e "$pool" "$part"
# Wait (at most a minute) until the pool has no expandable space left.
for _ in $(seq 60); do
  [ "$(zpool list -Hp -o expandsize "$pool")" = "-" ] && break
  sleep 1
done
echo "zpool-expand: $pool grew from $before to $(zpool list -Hp -o size "$pool") bytes"

if [ -n "$swap_part" ]; then
  swapon --discard "$swap_part" 2>/dev/null || swapon "$swap_part" 2>/dev/null || true
  echo "zpool-expand: swap on $swap_part"
fi
