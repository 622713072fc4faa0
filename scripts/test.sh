#!/usr/bin/env bash
# The whole test suite: type check and build, then every test under test/ (root, sshd and Nix included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
npm run build
npx tap "$@"
