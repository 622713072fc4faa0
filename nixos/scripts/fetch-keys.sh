#!/usr/bin/env bash
# Worker boot, before sshd: takes the sshd host key and root's authorized key from the user data
# that nix-hcloud-builder created the server with ("#cloud-config" then JSON, see
# src/daemon/user-data.ts), as served by the Hetzner metadata service. So the daemon knows the host key
# before the first connection, and only its per-worker key can log in. When the pool has a warm
# store, the user data also carries the store volume's settings (a write_files entry at
# /run/nix-hcloud-builder/store-volume.json): written there, as cloud-init would, for
# store-volume.sh, which runs next.
#
# Environment (for tests): NHB_METADATA_URL, NHB_ROOT (a folder standing for /),
# NHB_FETCH_ATTEMPTS (one a second; the network may come up late).
set -euo pipefail

url=${NHB_METADATA_URL:-http://169.254.169.254/hetzner/v1/userdata}
root=${NHB_ROOT:-}
attempts=${NHB_FETCH_ATTEMPTS:-120}

userdata=$(mktemp)
trap 'rm -f "$userdata"' EXIT
for ((i = 1; ; i++)); do
  if curl --fail --silent --show-error --max-time 5 --output "$userdata" "$url"; then
    break
  fi
  if ((i >= attempts)); then
    echo "fetch-keys: no user data from $url after $attempts attempts" >&2
    exit 1
  fi
  sleep 1
done

# Drop the "#cloud-config" line: the rest is JSON.
json=$(sed '1{/^#cloud-config/d}' "$userdata")
if ! jq -e 'type == "object"' >/dev/null 2>&1 <<<"$json"; then
  echo "fetch-keys: the user data from $url is not \"#cloud-config\" followed by a JSON object" >&2
  exit 1
fi
private=$(jq -er '.ssh_keys.ed25519_private // error("no ssh_keys.ed25519_private")' <<<"$json")
public=$(jq -er '.ssh_keys.ed25519_public // error("no ssh_keys.ed25519_public")' <<<"$json")
settings_path=/run/nix-hcloud-builder/store-volume.json
settings=$(jq -r --arg p "$settings_path" '[.write_files[]? | select(.path == $p) | .content] | first // empty' <<<"$json")
if [ -n "$settings" ] && ! jq -e '(.volumeId | type == "number") and (.gcAtPercent | type == "number")' >/dev/null 2>&1 <<<"$settings"; then
  echo "fetch-keys: the store volume settings in the user data are not {\"volumeId\": N, \"gcAtPercent\": N}" >&2
  exit 1
fi
authorized=$(jq -er '[.users[]? | select(.name == "root") | .ssh_authorized_keys[]?]
  | if length == 0 then error("no ssh_authorized_keys for root") else .[] end' <<<"$json")

# Each file is written whole, then renamed into place.
put() { # put MODE FILE CONTENT
  printf '%s\n' "$3" >"$2.tmp"
  chmod "$1" "$2.tmp"
  mv -f "$2.tmp" "$2"
}
umask 077
mkdir -p "$root/etc/ssh" "$root/root/.ssh"
chmod 0755 "$root/etc/ssh"
chmod 0700 "$root/root/.ssh"
put 0600 "$root/etc/ssh/ssh_host_ed25519_key" "$private"
put 0644 "$root/etc/ssh/ssh_host_ed25519_key.pub" "$public"
put 0600 "$root/root/.ssh/authorized_keys" "$authorized"
rm -f "$root$settings_path"
if [ -n "$settings" ]; then
  mkdir -p "$root${settings_path%/*}"
  chmod 0755 "$root${settings_path%/*}"
  put 0644 "$root$settings_path" "$settings"
fi
echo "fetch-keys: host key $(cut -d' ' -f1,2 <<<"$public"), $(wc -l <<<"$authorized") authorized key(s) for root${settings:+, store volume settings $settings}"
