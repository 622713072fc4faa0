# shellcheck shell=bash
# Sourced by nix-roots.sh and cloud-init-root.sh: a Debian root made once from the machine's own
# mirror, kept as a tarball in a cache folder and unpacked beside it.
#
#   debian_root CACHE NAME TARBALL SUITE PACKAGES [PREPARE]
#
# makes CACHE/TARBALL when missing (`debootstrap --variant=minbase SUITE`, then PACKAGES, then the
# command PREPARE with the fresh root's folder, then packed: only a complete root is kept), unpacks
# it to CACHE/NAME when missing or older, and prints that folder. One maker at a time (two test
# runs on one machine): the others wait on CACHE/.NAME.lock, then find it. Messages go to stderr
# with the calling script's name.

debian_root() {
  local cache=$1 name=$2 tarball=$1/$3 suite=$4 packages=$5 prepare=${6:-}
  local me root=$1/$2 fresh log mirror
  me=$(basename "$0" .sh)
  mkdir -p "$cache"
  exec 9> "$cache/.$name.lock"
  flock 9
  # 1. The tarball: debootstrap into a fresh folder, then packed.
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { echo "$me: debootstrap is missing (scripts/ensure-deps.sh installs it)" >&2; exit 1; }
    mirror=$(bash "$(dirname "${BASH_SOURCE[0]}")/debian-mirror.sh")
    echo "$me: 1. debootstrap --variant=minbase $suite, then $packages from $mirror (once; kept in $tarball)" >&2
    fresh=$(mktemp -d "$cache/.make-$name.XXXXXX")
    log="$cache/$name-debootstrap.log"
    # debootstrap's own --include resolves dependencies poorly (nix-bin's Perl bindings fail to
    # configure): the base first, then apt-get inside, with the archive's Release files taken as
    # valid whatever their date, and the machine's resolver; /proc and /dev only for that command.
    if ! { debootstrap --variant=minbase "$suite" "$fresh" "$mirror" &&
      echo 'Acquire::Check-Valid-Until "false";' > "$fresh/etc/apt/apt.conf.d/99nix-roots" &&
      cp /etc/resolv.conf "$fresh/etc/resolv.conf" &&
      unshare --mount --propagation private sh -c 'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" &&
        chroot "$1" sh -c "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $2 && apt-get clean"' sh "$fresh" "$packages"
    } > "$log" 2>&1; then
      tail -n 20 "$log" >&2
      cp "$fresh/debootstrap/debootstrap.log" "$cache/$name-debootstrap-inner.log" 2>/dev/null || true
      rm -rf --one-file-system "$fresh"
      echo "$me: making the $name root failed (whole log: $log)" >&2
      exit 1
    fi
    [ -z "$prepare" ] || "$prepare" "$fresh"
    rm -rf "$fresh/var/lib/apt/lists/"*_dists_* 2>/dev/null || true
    tar -C "$fresh" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf --one-file-system "$fresh"
  fi
  # 2. The root itself, unpacked from the tarball when missing or older than it.
  if [ ! -e "$root/.unpacked" ] || [ "$tarball" -nt "$root/.unpacked" ]; then
    echo "$me: 2. unpacking $tarball" >&2
    rm -rf --one-file-system "$root"
    mkdir "$root.tmp.$$"
    tar -C "$root.tmp.$$" -xf "$tarball"
    chmod 0755 "$root.tmp.$$"
    touch "$root.tmp.$$/.unpacked"
    mv "$root.tmp.$$" "$root"
  fi
  exec 9>&-
  echo "$root"
}
