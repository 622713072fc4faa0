#!/usr/bin/env bash
# Debian roots holding other Nix versions than this machine's, for the tests that run Nix as a
# client (and a fake worker's nix-daemon) of another version: Debian's archive serves newer
# `nix-bin` than bookworm's 2.8 (trixie 2.26, sid 2.34).
#
#   nix-roots.sh SUITE...   prints, one a line, the folder of each suite's root, made when missing
#
# Each root is `debootstrap --variant=minbase SUITE` and then nix-bin and openssh-client (Nix runs
# ssh from its own root), from the machine's own Debian mirror (debian-root.sh). It is kept as a
# tarball in the cache folder (made once, minutes; kept between runs) and unpacked beside it, where
# nix-in-root.sh runs its programs. The roots are only read: every run gets its own mounts over them.
#
# Settings (environment):
#   NHB_NIX_ROOTS_CACHE   the cache folder (default /var/cache/nix-hcloud-builder-nix-roots)
set -euo pipefail
cache=${NHB_NIX_ROOTS_CACHE:-/var/cache/nix-hcloud-builder-nix-roots}
[ $# -gt 0 ] || { echo "usage: $0 SUITE..." >&2; exit 2; }
# shellcheck source=test/rig/debian-root.sh
. "$(dirname "$0")/debian-root.sh"

# What nix-in-root.sh mounts on: the client's or worker's store, its /etc/nix, the old root.
mount_points() { mkdir -p "$1/nix" "$1/etc/nix" "$1/.host"; }

for suite in "$@"; do
  case "$suite" in *[!a-z]* | '') echo "nix-roots: bad suite name $suite" >&2; exit 2 ;; esac
  debian_root "$cache" "$suite" "$suite-nix.tar" "$suite" 'nix-bin openssh-client' mount_points
done
