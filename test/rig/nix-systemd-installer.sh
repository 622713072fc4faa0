#!/usr/bin/env bash
# Nix's own install-systemd-multi-user.sh (the systemd part of its multi-user installer: build
# users, the nix-daemon units), as Debian trixie's source package of Nix ships it, for the rig's
# release tarball (test/rig/nix-release.ts). Code of other projects is never committed here, so it
# is taken at test time: apt fetches the source package and checks it against the archive's signed
# index (the debian-archive-keyring), and the script is taken out of its upstream tarball. Debian's
# repack leaves out Nix's other installer scripts (Files-Excluded in debian/copyright), which is
# why the rest of the installer is our own (test/rig/nix-installer/).
#
#   nix-systemd-installer.sh   prints the cached script's path, fetched when missing (seconds)
#
# Settings (environment):
#   NHB_NIX_INSTALLER_CACHE   the cache folder (default /var/cache/nix-hcloud-builder-nix-installer)
set -euo pipefail
cache=${NHB_NIX_INSTALLER_CACHE:-/var/cache/nix-hcloud-builder-nix-installer}
suite=trixie
script="$cache/install-systemd-multi-user.sh"
mkdir -p "$cache"
# One fetch at a time (two test runs on one machine): the others wait, then find it.
exec 9> "$cache/.lock"
flock 9
if [ ! -s "$script" ]; then
  mirror=$(bash "$(dirname "$0")/debian-mirror.sh")
  echo "nix-systemd-installer: fetching the source package nix of Debian $suite from $mirror (once; kept in $cache)" >&2
  work=$(mktemp -d "$cache/.fetch.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # apt with its own sources, lists and cache: the machine's apt state is not touched. The
  # archive's Release files are taken as valid whatever their date (a pinned snapshot mirror).
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/source"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" > "$work/sources.list"
  apt=(apt-get -q -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o Acquire::Check-Valid-Until=false
    -o APT::Sandbox::User=root)
  if ! { "${apt[@]}" update --error-on=any && (cd "$work/source" && "${apt[@]}" source --download-only nix); } > "$work/apt.log" 2>&1; then
    tail -n 20 "$work/apt.log" >&2
    echo "nix-systemd-installer: cannot fetch Debian $suite's source package nix from $mirror (it needs the network once; npm test fetches it before the tests)" >&2
    exit 1
  fi
  orig=$(find "$work/source" -maxdepth 1 -name 'nix_*.orig.tar.*' | head -n 1)
  [ -n "$orig" ] || { echo "nix-systemd-installer: the source package has no upstream tarball" >&2; exit 1; }
  tar -xf "$orig" -C "$work" --wildcards --no-anchored --strip-components=2 '*/scripts/install-systemd-multi-user.sh'
  [ -s "$work/install-systemd-multi-user.sh" ] || { echo "nix-systemd-installer: $(basename "$orig") has no scripts/install-systemd-multi-user.sh" >&2; exit 1; }
  basename "$orig" > "$cache/SOURCE"
  mv "$work/install-systemd-multi-user.sh" "$script"
fi
echo "$script"
