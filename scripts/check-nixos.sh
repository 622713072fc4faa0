#!/usr/bin/env bash
# Evaluates nixos/module.nix with nixpkgs' real module system (lib.evalModules), against typed
# declarations of the NixOS options it sets (nixos/check/nixos-options.nix) and stand-ins for the
# few packages it calls (nixos/check/pkgs.nix). No nixpkgs checkout and no network needed: only
# nixpkgs' lib folder, e.g. from https://github.com/nix-community/nixpkgs.lib.
#
#   bash scripts/check-nixos.sh path/to/nixpkgs.lib          # the repository (or its lib/ folder)
#   bash scripts/check-nixos.sh path/to/nixpkgs.lib --unit nix-hcloud-builder.service
#
# Prints PASS or FAIL per check and exits non-zero when one fails. The negative checks are
# configurations that must not evaluate (a wrong pool type, a setting the module owns, no pool,
# no token): each passes only when evaluation fails with the expected message. --unit FILE also
# writes the service's unit file as NixOS would render it (for `systemd-analyze security`).
set -euo pipefail

usage() { echo "usage: $0 NIXPKGS_LIB_DIR [--unit FILE]" >&2; exit 2; }
[ $# -ge 1 ] || usage
lib=$1; shift
unit_out=
while [ $# -gt 0 ]; do
  case $1 in
    --unit) [ $# -ge 2 ] || usage; unit_out=$2; shift 2 ;;
    *) usage ;;
  esac
done
if [ -f "$lib/lib/modules.nix" ]; then lib=$lib/lib; fi
if [ ! -f "$lib/modules.nix" ] || [ ! -f "$lib/default.nix" ]; then
  echo "$lib: not nixpkgs' lib folder (no modules.nix)" >&2
  exit 2
fi
lib=$(cd "$lib" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
eval_nix=$root/nixos/check/eval.nix

# --read-write-mode: the module writes its JSON config and prepare script with builtins.toFile,
# and the checks read them back.
nixeval() {
  nix-instantiate --read-write-mode --eval --strict --json "$eval_nix" --arg lib "import $lib" "$@"
}

failures=0
pass() { printf 'PASS  %s\n' "$1"; }
fail() { printf 'FAIL  %s\n' "$1"; [ -z "${2:-}" ] || printf '      %s\n' "$2"; failures=$((failures + 1)); }

# The JSON answers are read with node (the daemon's runtime, so it is there).
json_lines() { node -e "$@"; }

echo "nixpkgs lib: $lib ($(nix-instantiate --eval --expr "(import $lib).version" 2>/dev/null || echo "version unknown"))"
if ! out=$(nixeval -A checks 2>&1); then
  fail "the sample configuration evaluates" "$out"
else
  pass "the sample configuration evaluates"
  while IFS=$'\t' read -r ok name detail; do
    if [ "$ok" = true ]; then pass "$name"; else fail "$name" "$detail"; fi
  done < <(json_lines 'for (const c of JSON.parse(process.argv[1])) console.log([c.ok, c.name, c.detail].join("\t"))' "$out")
fi

echo "negative checks (each configuration must fail to evaluate):"
negatives="(import $eval_nix { lib = import $lib; }).negatives"
names=$(nix-instantiate --eval --strict --json -E "builtins.attrNames $negatives")
while IFS= read -r name; do
  attr="$negatives.\"${name//\"/\\\"}\""  # the name as a Nix string (the names have no $ or \\)
  expect=$(nix-instantiate --eval --strict --json -E "$attr.expect" | json_lines 'console.log(JSON.parse(require("fs").readFileSync(0, "utf8")))')
  if out=$(nix-instantiate --read-write-mode --eval --strict --json -E "$attr.result" 2>&1); then
    fail "refused: $name" "it evaluated: $out"
  elif grep -Eq -- "$expect" <<<"$out"; then
    pass "refused: $name ($(grep -Eo -- "$expect.*" <<<"$out" | head -1 | cut -c1-110))"
  else
    fail "refused: $name" "failed, but without /$expect/: $(tail -3 <<<"$out")"
  fi
done < <(json_lines 'for (const n of JSON.parse(process.argv[1])) console.log(n)' "$names")

if [ -n "$unit_out" ]; then
  nixeval -A unit | json_lines 'process.stdout.write(JSON.parse(require("fs").readFileSync(0, "utf8")))' > "$unit_out"
  echo "unit file written to $unit_out"
fi

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) FAILED"
  exit 1
fi
echo "all checks passed"
