#!/usr/bin/env bash
# Runs the README's commands in a pristine root: what a user's fresh machine of this project's kind
# has (Debian 12 and the machine's Node 20 with npm) and nothing else. Nothing of this machine's
# /etc, /root, /nix or node_modules is visible there, so an install step that only this machine
# has done fails here. See .ci/README.md.
#
# Settings (environment):
#   NHB_CI_CACHE   where the debootstrap base and the other Nix versions' roots are kept between
#                  runs (default /var/cache/nix-hcloud-builder-ci)
#   NHB_CI_KEEP=1  keep the root after the run (default: removed)
#   NHB_CI_STOCK=0 skip the second phase (stock /etc/nix)
set -euo pipefail
repo=$(pwd)
[ "$(id -u)" = 0 ] || { echo "ci: needs root (debootstrap, namespaces, mounts); run: sudo bash .ci/run" >&2; exit 1; }
started=$(date +%s)
step() { printf '\n== ci [%ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }

# 1. The base: debootstrap --variant=minbase bookworm from the machine's own Debian source, kept
#    between runs as a tarball (it is what a fresh machine has; nothing the project installs).
cache=${NHB_CI_CACHE:-/var/cache/nix-hcloud-builder-ci}
base="$cache/bookworm-minbase.tar"
mirror=$(sed -n 's/^URIs: *\(\S*\/debian\)\/\?$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\?\(\S*\/debian\)\/\? bookworm .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}
if [ ! -s "$base" ]; then
  step "1. debootstrap --variant=minbase bookworm from $mirror (cached in $base)"
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
  mkdir -p "$cache"
  fresh=$(mktemp -d /var/tmp/nhb-ci-base.XXXXXX)
  debootstrap --variant=minbase bookworm "$fresh" "$mirror" > "$cache/debootstrap.log" 2>&1 || { tail -n 20 "$cache/debootstrap.log" >&2; rm -rf "$fresh"; exit 1; }
  tar -C "$fresh" -cf "$base.tmp" . && mv "$base.tmp" "$base"
  rm -rf "$fresh"
else
  step "1. debootstrap base from the cache ($base)"
fi

root=$(mktemp -d /var/tmp/nhb-ci-root.XXXXXX)
running=
cleanup() {
  local code=$?
  set +e  # clean up as far as possible, whatever fails
  # Everything a command started dies with its namespace's first process (unshare --kill-child).
  # SIGKILL: unshare --fork ignores SIGTERM while it waits for its child.
  if [ -n "$running" ]; then kill -KILL "$running" 2>/dev/null; wait "$running" 2>/dev/null || true; fi
  umount -R -l "$root" 2>/dev/null || true
  if [ "${NHB_CI_KEEP:-0}" = 1 ]; then echo "ci: root kept at $root" >&2
  elif ! findmnt -R "$root" >/dev/null 2>&1; then rm -rf --one-file-system "$root"
  else echo "ci: $root still has mounts; not removed" >&2
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
tar -C "$root" -xf "$base"
chmod 0755 "$root"  # mktemp made it 0700: apt's _apt user and sshd's privilege separation need to pass

# 2. What the machine's kind gives every fresh machine: its package source (and how apt reaches
#    it), name resolution, and Node with its headers, npm and npm's own settings (its CA file among them).
step "2. the machine's apt source, resolver, Node $(node --version) and npm $(npm --version)"
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  rm -f "$root/etc/apt/sources.list"
  cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
elif [ -f /etc/apt/sources.list ]; then
  cp /etc/apt/sources.list "$root/etc/apt/sources.list"
fi
for f in /etc/apt/apt.conf.d/*; do
  if grep -q '^Acquire::' "$f" 2>/dev/null; then cp "$f" "$root/etc/apt/apt.conf.d/"; fi
done
cp /etc/resolv.conf "$root/etc/resolv.conf"
node_bin=$(readlink -f "$(command -v node)")
prefix=$(dirname "$(dirname "$(command -v node)")")
cp "$node_bin" "$root/usr/bin/node"
mkdir -p "$root/usr/lib/node_modules"
cp -a "$prefix/lib/node_modules/npm" "$root/usr/lib/node_modules/"
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/bin/npx"
if [ -f "$prefix/etc/npmrc" ]; then mkdir -p "$root/usr/etc" && cp "$prefix/etc/npmrc" "$root/usr/etc/npmrc"; fi
# Node's headers, for native addons (zstd-napi) built by node-gyp; npm's nodedir names them.
if [ -d "$prefix/include/node" ]; then mkdir -p "$root/usr/include" && cp -a "$prefix/include/node" "$root/usr/include/"; fi
cafile=$(npm config get cafile 2>/dev/null || true)
if [ -n "$cafile" ] && [ "$cafile" != null ] && [ -f "$cafile" ]; then
  mkdir -p "$root$(dirname "$cafile")" && cp "$cafile" "$root$cafile"
fi
# The machine's own CA certificates, where its trust store takes them from: a package that pulls in
# ca-certificates (cloud-init does) rebuilds the bundle above from Debian's list plus these, and
# without them npm could no longer reach its registry.
if [ -d /usr/local/share/ca-certificates ]; then
  mkdir -p "$root/usr/local/share" && cp -a /usr/local/share/ca-certificates "$root/usr/local/share/"
fi

# 3. The mounts the tests need (/proc comes with each command's PID namespace), and a clean clone.
step "3. /sys, /dev, /run; a clean clone of $(git -C "$repo" rev-parse --short HEAD)"
mount --bind "$root" "$root"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
# The other Nix versions' roots (test/rig/nix-roots.sh) are kept on the machine between runs, like
# the base: a fresh machine makes them once.
mkdir -p "$cache/nix-roots" "$root/var/cache/nix-hcloud-builder-nix-roots"
mount --bind "$cache/nix-roots" "$root/var/cache/nix-hcloud-builder-nix-roots"
mkdir -p "$root/build"
git clone -q "$repo" "$root/build/nix-hcloud-builder"

# A command ($2) in the root as on a machine of its own: a new mount namespace whose root IS the
# pristine root (pivot_root, not chroot: Nix re-enters its saved mount namespace with setns, which
# leaves a chroot), and a new PID namespace with its own /proc, so that nothing the command starts
# outlives it. It runs in the background with its output also in a log ($1): `wait` lets a
# signal's trap run at once.
inside() {
  unshare --mount --propagation private --pid --fork --kill-child=SIGKILL /bin/bash -c '
    set -e
    mount -t proc proc "$1/proc"
    cd "$1" && mkdir -p .host && pivot_root . .host && cd /
    umount -l /.host && rmdir /.host
    exec /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb CI=true \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      bash -c "cd /build/nix-hcloud-builder && $2"' _ "$root" "$2" > >(tee "$1") 2>&1 &
  running=$!
  local status=0
  wait "$running" || status=$?
  running=
  return "$status"
}

# tap's closing counts, added up over the phases, for the last line.
passed=0 failed=0
tests() {
  local out="$root/build/tests-$1.log" counts status=0
  inside "$out" "$2" || status=$?
  counts=$(grep -E '^# \{ total: [0-9]+' "$out" | tail -n 1 || true)
  passed=$(( passed + $(sed -n 's/.*pass: \([0-9]*\).*/\1/p' <<< "$counts" | grep . || echo 0) ))
  failed=$(( failed + $(sed -n 's/.*fail: \([0-9]*\).*/\1/p' <<< "$counts" | grep . || echo 0) ))
  if [ "$status" != 0 ]; then
    echo "ci: $2 failed ($1)" >&2
    echo "$passed passed, $(( failed > 0 ? failed : 1 )) failed"
    exit 1
  fi
}

# The demo's output is what a new user reads: the boot steps, the build, the deletion, no noise.
demo_clean() {
  local out="$root/build/demo-$1.log"
  if ! inside "$out" "${2:-}npm run demo"; then echo "ci: npm run demo failed ($1)" >&2; return 1; fi
  if grep -nEi 'nixbld|cache\.nixos\.org|warning:|unable to download' "$out"; then
    echo "ci: the demo's output ($1) has the lines above, which a new user must not see" >&2
    return 1
  fi
}

# 4. The README's commands, on the fresh root: no /etc/nix, no sshd, no nixbld group.
step "4. npm test (fresh root)"
[ ! -e "$root/etc/nix" ] || { echo "ci: the base has an /etc/nix" >&2; exit 1; }
tests fresh 'npm test'
step "5. npm run demo (fresh root)"
demo_clean fresh

# 5. Whatever a machine's /etc/nix says changes nothing: a stock config (sandbox, nixbld build
#    users, the public cache), a machines file naming another builder, the nixbld group, and a
#    system sshd on port 22 (started with each command: nothing outlives a command's namespace).
if [ "${NHB_CI_STOCK:-1}" = 1 ]; then
  step "6. a stock /etc/nix, /etc/nix/machines, the nixbld group and a system sshd on port 22"
  mkdir -p "$root/etc/nix"
  printf '%s\n' 'build-users-group = nixbld' 'sandbox = true' 'substituters = https://cache.nixos.org/' \
    'trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=' > "$root/etc/nix/nix.conf"
  echo 'ssh://nobody@builder.invalid x86_64-linux - 4 1' > "$root/etc/nix/machines"
  inside "$root/build/stock-setup.log" 'groupadd -r nixbld && for i in 1 2; do useradd -r -g nixbld -G nixbld -M -d /var/empty -s /usr/sbin/nologin nixbld$i; done && ssh-keygen -A'
  sshd='mkdir -p /run/sshd && /usr/sbin/sshd -o ListenAddress=127.0.0.1 -o Port=22 && '
  step "7. npm run demo (stock /etc/nix)"
  demo_clean stock "$sshd"
  step "8. the end-to-end tests (stock /etc/nix)"
  tests stock "${sshd}npx tap test/e2e/*.test.ts"
fi
step "done"
echo "$passed passed, $failed failed"
