#!/usr/bin/env bash
# Prints the machine's Debian mirror (as .ci/pristine-root.sh finds it): the first `.../debian`
# URI of apt's sources, else deb.debian.org.
set -euo pipefail
mirror=$(sed -n 's/^URIs: *\(\S*\/debian\)\/\?$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\?\(\S*\/debian\)\/\? \S* .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
echo "${mirror:-http://deb.debian.org/debian}"
