#!/bin/sh
# Runs a program of another Debian root (one of nix-roots.sh's) with that root's own libraries,
# ssh and /bin/sh, but on this machine's processes, network and files where the tests need them:
#
#   nix-in-root.sh [--etc-nix DIR] ROOT NIX_DIR PROGRAM [ARG...]
#
# In a mount namespace of its own: ROOT becomes / (pivot_root, not chroot: Nix re-enters its saved
# mount namespace with setns, which would leave a chroot), with NIX_DIR at /nix (the client's or
# worker's own store), the caller's /dev, /proc, /tmp, /var/tmp and the project's folder (fixtures,
# the rig's nix.conf), and a private /root (HOME). /etc/nix is the root's empty one unless
# --etc-nix names a folder to put there (a fake server's own /etc/nix): a client reads the rig's
# config through NIX_CONF_DIR, never this machine's /etc/nix. The root's own files are never written.
set -eu
etc_nix=
if [ "${1:-}" = --etc-nix ]; then etc_nix=$2; shift 2; fi
[ $# -ge 3 ] || { echo "usage: $0 ROOT NIX_DIR PROGRAM [ARG...]" >&2; exit 2; }
project=$(cd "$(dirname "$0")/../.." && pwd)
root=$1 nix=$2
shift 2
exec unshare --mount --propagation private /bin/sh -c '
  set -eu
  root=$1 nix=$2 project=$3 cwd=$4 etc_nix=$5
  shift 5
  mount --bind "$root" "$root"
  mount --bind "$nix" "$root/nix"
  mount --rbind /dev "$root/dev"
  mount --rbind /proc "$root/proc"
  mount -t tmpfs -o mode=0700 tmpfs "$root/root"
  for d in /tmp /var/tmp "$project"; do
    mkdir -p "$root$d" 2>/dev/null || [ -d "$root$d" ]
    mount --rbind "$d" "$root$d"
  done
  if [ -n "$etc_nix" ]; then mount --bind "$etc_nix" "$root/etc/nix"; fi
  mount -o remount,bind,ro "$root"
  cd "$root" && pivot_root . .host && cd /
  umount -l /.host
  cd "$cwd" 2>/dev/null || cd /
  # The root'"'"'s own programs only: the caller'"'"'s PATH may name stand-ins that run this script.
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin exec "$@"
' sh "$root" "$nix" "$project" "$(pwd)" "$etc_nix" "$@"
