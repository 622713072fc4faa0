#!/usr/bin/env bash
# Debian roots holding other Nix versions than this machine's, for the tests that run Nix as a
# client (and a fake worker's nix-daemon) of another version: Debian's archive serves newer
# `nix-bin` than bookworm's 2.8 (trixie 2.26, sid 2.34).
#
#   nix-roots.sh SUITE...   prints, one a line, the folder of each suite's root, made when missing
#
# Each root is `debootstrap --variant=minbase SUITE` and then nix-bin and openssh-client (Nix runs
# ssh from its own root), from the machine's own Debian mirror. It is kept as a tarball in the cache
# folder (made once, minutes; kept between runs) and unpacked beside it, where nix-in-root.sh runs
# its programs. The roots are only read: every run gets its own mounts over them.
#
# Settings (environment):
#   NHB_NIX_ROOTS_CACHE   the cache folder (default /var/cache/nix-hcloud-builder-nix-roots)
set -euo pipefail
cache=${NHB_NIX_ROOTS_CACHE:-/var/cache/nix-hcloud-builder-nix-roots}
[ $# -gt 0 ] || { echo "usage: $0 SUITE..." >&2; exit 2; }

mirror=$(bash "$(dirname "$0")/debian-mirror.sh")

mkdir -p "$cache"

for suite in "$@"; do
  case "$suite" in *[!a-z]* | '') echo "nix-roots: bad suite name $suite" >&2; exit 2 ;; esac
  # One maker of a root at a time (two test runs on one machine): the others wait, then find it.
  exec 9> "$cache/.$suite.lock"
  flock 9
  tarball="$cache/$suite-nix.tar"
  root="$cache/$suite"
  # 1. The tarball: debootstrap into a fresh folder, then packed (only a complete root is kept).
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { echo "nix-roots: debootstrap is missing (scripts/ensure-deps.sh installs it)" >&2; exit 1; }
    echo "nix-roots: 1. debootstrap --variant=minbase $suite, then nix-bin from $mirror (once; kept in $tarball)" >&2
    fresh=$(mktemp -d "$cache/.make-$suite.XXXXXX")
    log="$cache/$suite-debootstrap.log"
    # debootstrap's own --include resolves dependencies poorly (nix-bin's Perl bindings fail to
    # configure): the base first, then apt-get inside, with the archive's Release files taken as
    # valid whatever their date, and the machine's resolver; /proc and /dev only for that command.
    if ! { debootstrap --variant=minbase "$suite" "$fresh" "$mirror" &&
      echo 'Acquire::Check-Valid-Until "false";' > "$fresh/etc/apt/apt.conf.d/99nix-roots" &&
      cp /etc/resolv.conf "$fresh/etc/resolv.conf" &&
      unshare --mount --propagation private sh -c 'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" &&
        chroot "$1" sh -c "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nix-bin openssh-client && apt-get clean"' sh "$fresh"
    } > "$log" 2>&1; then
      tail -n 20 "$log" >&2
      cp "$fresh/debootstrap/debootstrap.log" "$cache/$suite-debootstrap-inner.log" 2>/dev/null || true
      rm -rf --one-file-system "$fresh"
      echo "nix-roots: making the $suite root failed (whole log: $log)" >&2
      exit 1
    fi
    # What nix-in-root.sh mounts on: the client's or worker's store, its /etc/nix, the old root.
    mkdir -p "$fresh/nix" "$fresh/etc/nix" "$fresh/.host"
    rm -rf "$fresh/var/lib/apt/lists/"*_dists_* 2>/dev/null || true
    tar -C "$fresh" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf --one-file-system "$fresh"
  fi
  # 2. The root itself, unpacked from the tarball when missing or older than it.
  if [ ! -e "$root/.unpacked" ] || [ "$tarball" -nt "$root/.unpacked" ]; then
    echo "nix-roots: 2. unpacking $tarball" >&2
    rm -rf --one-file-system "$root"
    mkdir "$root.tmp.$$"
    tar -C "$root.tmp.$$" -xf "$tarball"
    chmod 0755 "$root.tmp.$$"
    touch "$root.tmp.$$/.unpacked"
    mv "$root.tmp.$$" "$root"
  fi
  echo "$root"
done
