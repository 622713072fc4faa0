#!/usr/bin/env bash
# A Debian 12 root that boots with systemd and real cloud-init under systemd-nspawn, as a stock
# image boots on a server (cloud-init-boot.sh boots it with a NoCloud seed).
#
#   cloud-init-root.sh   prints the root's folder, made when missing (minutes, once)
#
# The root is `debootstrap --variant=minbase bookworm`, then systemd, cloud-init, openssh-server,
# curl, xz-utils and nix-bin from the machine's own Debian mirror (debian-root.sh). nix-bin is there
# for its libraries only: the rig's release tarball (nix-release.ts) holds Debian's nix binary,
# which loads them from /usr/lib/nix; its commands are removed, so the image has no Nix, as
# Ubuntu's has none. A boot runs on an overlay over it (cloud-init-boot.sh): the root stays as made.
#
# Settings (environment):
#   NHB_NIX_ROOTS_CACHE   the cache folder, shared with nix-roots.sh (default /var/cache/nix-hcloud-builder-nix-roots)
set -euo pipefail
# shellcheck source=test/rig/debian-root.sh
. "$(dirname "$0")/debian-root.sh"

# No Nix commands (the libraries stay); no getty on the console; no machine id (each boot gets one).
without_nix() {
  rm -f "$1"/usr/bin/nix "$1"/usr/bin/nix-*
  rm -f "$1/etc/systemd/system/getty.target.wants/"* "$1/etc/machine-id"
}

debian_root "${NHB_NIX_ROOTS_CACHE:-/var/cache/nix-hcloud-builder-nix-roots}" bookworm-cloud-init bookworm-cloud-init.tar bookworm \
  'systemd systemd-sysv dbus cloud-init openssh-server curl ca-certificates xz-utils nix-bin' without_nix
