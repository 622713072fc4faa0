#!/usr/bin/env bash
# The demo: fake cloud + daemon + a real nix-build through it. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
npm run build >/dev/null
node --import tsx scripts/demo.ts
