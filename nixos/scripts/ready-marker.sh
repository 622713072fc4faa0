#!/usr/bin/env bash
# Worker boot, last: once the disk has grown, sshd runs and Nix answers, writes the marker that
# the daemon's default readyCommand waits for (READY_MARKER in src/core/config.ts).
#
# Environment (for tests): NHB_ROOT (a folder standing for /).
set -euo pipefail

root=${NHB_ROOT:-}
marker=/run/nix-hcloud-builder/ready

nix-store --version >/dev/null
mkdir -p "$root${marker%/*}"
touch "$root$marker"
echo "ready-marker: wrote $marker"
