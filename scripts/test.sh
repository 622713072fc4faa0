#!/usr/bin/env bash
# The whole test suite: type check and build, lint (no reads of deprecated API fields among its
# rules), the formatter's check, then every test under test/ (root, sshd and Nix included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
# The roots of the other Nix versions the e2e tests run as clients: made once (minutes), then cached.
bash test/rig/nix-roots.sh trixie sid >/dev/null
# The Debian root that boots with real cloud-init under systemd-nspawn: made once (minutes), then cached.
bash test/rig/cloud-init-root.sh >/dev/null
# Nix's install-systemd-multi-user.sh for the fake stock image's installer: Debian's copy, fetched once.
bash test/rig/nix-systemd-installer.sh >/dev/null
npm run build
npm run lint
npm run format:check
npx tap "$@"
