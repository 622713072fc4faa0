#!/usr/bin/env bash
# Installs what the demo and the tests need: npm packages, and Debian's nix-bin and
# openssh-server (the real Nix client and the workers' sshd) when they are missing, systemd (for
# `systemd-analyze verify` of the unit), jq and curl (the NixOS worker's scripts use them),
# shellcheck (checks those scripts), debootstrap (the other Nix versions' roots), gdisk (the
# disk-growing script runs on a loop device), zstd (`image upload` of a .zst image decompresses it
# on the server; the tests make one), cloud-init (`cloud-init schema` checks every user data the
# daemon writes; on a machine that boots with systemd its units then run at boot, and disable
# themselves when they find no datasource), xz (the rig packs a Nix release tarball for the fake
# stock image), systemd-container and iproute2 (test/rig/cloud-init-boot.sh boots a Debian root with
# real cloud-init under systemd-nspawn, in a network namespace whose lo it brings up), and python3,
# make and g++ (below).
set -euo pipefail

missing=()
command -v nix-build >/dev/null 2>&1 || missing+=(nix-bin)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v sgdisk >/dev/null 2>&1 || missing+=(gdisk)
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v cloud-init >/dev/null 2>&1 || missing+=(cloud-init)
command -v xz >/dev/null 2>&1 || missing+=(xz-utils)
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# python3 runs the worker's zstd relay in the fake servers (and node-gyp); make and g++ build the
# zstd-napi addon when npm installs it.
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
# debootstrap makes the roots holding Debian's newer Nix versions (test/rig/nix-roots.sh).
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing: ${missing[*]}; install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

# node-gyp builds zstd-napi against Node's headers: those of the node that runs here, when it has
# them beside it (distribution and official builds do), rather than a download from nodejs.org.
if [ -z "${npm_config_nodedir:-}" ]; then
  node_prefix=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
  if [ -f "$node_prefix/include/node/node_api.h" ]; then export npm_config_nodedir="$node_prefix"; fi
fi

# npm ci when node_modules is missing or older than the lock file.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
