#!/usr/bin/env bash
# Boots the root of cloud-init-root.sh with systemd under systemd-nspawn, with a NoCloud seed, so
# that real cloud-init applies a user data as on a server: its local, network, config and final
# stages, runcmd in cloud-final.service's environment. Stops the container when cloud-init's
# final stage is done (boot-finished) or after the timeout, and copies out what a user would read.
#
#   cloud-init-boot.sh [--serve DIR] [--collect PATH]... SEED OUT [TIMEOUT_S]
#
#   DIR    served at http://127.0.0.1:8080/ while the container runs (a Nix release tarball)
#   PATH   a file of the container to copy out, to OUT/files/PATH, besides its sshd's ed25519
#          public key and root's authorized_keys (what cloud-init wrote)
#   SEED   a folder with user-data and meta-data (NoCloud's files)
#   OUT    where the boot's files go: console.log (systemd's and cloud-init's console),
#          cloud-init-output.log, cloud-init.log, status (`cloud-init status --long`), units
#          (the failed and unfinished units), nix-hcloud-builder/ (the container's /run/nix-hcloud-builder:
#          the ready or failed marker),
#          finished (present when cloud-init's final stage finished before the timeout)
#
# The container runs on an overlay over the cached root (its changes go to a scratch folder,
# removed after), in network and mount namespaces of this script's own that it shares with the served
# folder (no --private-network: the seed's runcmd reaches 127.0.0.1:8080, and the container's sshd
# listens on port 22 of that namespace only), not registered with machined (--register=no
# --keep-unit: the machine need not boot with systemd). Needs root, systemd-nspawn (the
# systemd-container package), ip (iproute2) and python3 (the file server).
set -euo pipefail
# Its own network and mount namespaces (the overlay, and cgroup2 where the caller has no
# /sys/fs/cgroup, as in a pristine CI root: systemd in the container needs it).
if [ -z "${NHB_CLOUD_INIT_BOOT_NS:-}" ]; then
  exec unshare --net --mount --propagation private env NHB_CLOUD_INIT_BOOT_NS=1 bash "$0" "$@"
fi
ip link set lo up
if ! mountpoint -q /sys/fs/cgroup; then mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup; fi
serve=''
collect=(/etc/ssh/ssh_host_ed25519_key.pub /root/.ssh/authorized_keys)
while [ $# -gt 0 ]; do
  case "$1" in
    --serve) serve=$2; shift 2 ;;
    --collect) collect+=("$2"); shift 2 ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || { echo "usage: $0 [--serve DIR] [--collect PATH]... SEED OUT [TIMEOUT_S]" >&2; exit 2; }
seed=$1 out=$2 timeout_s=${3:-180}
if [ ! -f "$seed/user-data" ] || [ ! -f "$seed/meta-data" ]; then echo "cloud-init-boot: $seed has no user-data and meta-data" >&2; exit 2; fi
command -v systemd-nspawn >/dev/null || { echo "cloud-init-boot: systemd-nspawn is missing (the systemd-container package; scripts/ensure-deps.sh installs it)" >&2; exit 1; }
root=$(bash "$(dirname "$0")/cloud-init-root.sh")
mkdir -p "$out"

scratch=$(mktemp -d /var/tmp/nhb-cloud-init-boot.XXXXXX)
nspawn=''
server=''
cleanup() {
  set +e
  if [ -n "$nspawn" ]; then kill -KILL "$nspawn" 2>/dev/null; wait "$nspawn" 2>/dev/null; fi
  if [ -n "$server" ]; then kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; fi
  umount "$scratch/merged" 2>/dev/null
  rm -rf --one-file-system "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# 1. The container's root: an overlay (the cached root stays as made), the seed in it.
mkdir -p "$scratch/upper" "$scratch/work" "$scratch/merged"
mount -t overlay overlay -o "lowerdir=$root,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/merged"
m=$scratch/merged
mkdir -p "$m/var/lib/cloud/seed/nocloud"
cp "$seed/user-data" "$seed/meta-data" "$m/var/lib/cloud/seed/nocloud/"
# What the machine differs in from a server, told to cloud-init: no network to configure (only lo,
# the namespace's), and the locale C.UTF-8 (the minbase root has no en_US.UTF-8, cloud-init's
# default, so its locale module would fail and report the boot as degraded).
printf '%s\n' 'network: {config: disabled}' 'locale: C.UTF-8' > "$m/etc/cloud/cloud.cfg.d/99-nspawn.cfg"

# 2. The served folder, answering before the boot starts.
if [ -n "$serve" ]; then
  python3 -m http.server 8080 --bind 127.0.0.1 --directory "$serve" > "$out/http.log" 2>&1 &
  server=$!
  until curl -s -o /dev/null http://127.0.0.1:8080/; do
    kill -0 "$server" 2>/dev/null || { cat "$out/http.log" >&2; exit 1; }
    sleep 0.2
  done
fi

# 3. The boot, its console in console.log, until cloud-init's final stage is done.
echo "cloud-init-boot: booting $root (overlay) with the seed of $seed, at most ${timeout_s}s" >&2
systemd-nspawn --quiet --boot --register=no --keep-unit --console=read-only -D "$m" > "$out/console.log" 2>&1 &
nspawn=$!
started=$(date +%s)
# (/var/lib/cloud/instance is an absolute link, to be followed inside: the instance's folder by its id.)
finished_file="$m/var/lib/cloud/instances/$(sed -n 's/^instance-id: *//p' "$seed/meta-data")/boot-finished"
while kill -0 "$nspawn" 2>/dev/null && [ ! -e "$finished_file" ] && [ $(( $(date +%s) - started )) -lt "$timeout_s" ]; do
  sleep 1
done
finished=no
[ -e "$finished_file" ] && finished=yes
echo "cloud-init-boot: cloud-init's final stage finished: $finished ($(( $(date +%s) - started ))s)" >&2

# 4. What the machine shows, read inside while it still runs (nsenter into its PID 1).
leader=$(pgrep -P "$nspawn" | head -n 1 || true)
if [ -n "$leader" ]; then
  inside() { nsenter -t "$leader" -m -u -i -p -- "$@"; }
  inside cloud-init status --long > "$out/status" 2>&1 || true
  { inside systemctl --no-pager list-jobs; inside systemctl --no-pager --failed; inside systemctl --no-pager list-units --all 'nix-daemon.*'; } > "$out/units" 2>&1 || true
  # The markers the daemon's readyCommand looks for (in /run, the container's own tmpfs).
  inside tar -C /run -c nix-hcloud-builder 2>/dev/null | tar -x -C "$out" 2>/dev/null || true
fi
for f in "${collect[@]}"; do
  if [ -e "$m$f" ]; then mkdir -p "$out/files$(dirname "$f")" && cp "$m$f" "$out/files$f"; fi
done
cp "$m/var/log/cloud-init-output.log" "$out/" 2>/dev/null || true
cp "$m/var/log/cloud-init.log" "$out/" 2>/dev/null || true
[ "$finished" = no ] || touch "$out/finished"

# 5. Stopped as a server is powered off: SIGTERM asks its systemd to shut down; then SIGKILL.
kill -TERM "$nspawn" 2>/dev/null || true
for _ in $(seq 1 30); do kill -0 "$nspawn" 2>/dev/null || break; sleep 1; done
