/**
 * The cloud-config a worker boots with. It pins the worker's sshd host key (so we never trust on
 * first use), authorises our per-worker login key for root, installs Nix on stock images, and
 * finally writes the ready marker that the default readyCommand waits for.
 *
 * Written as JSON, which is YAML too: cloud-init reads it, and a NixOS worker image can read the
 * same user data with jq instead of a YAML parser.
 */
import { READY_MARKER } from '../core/config.js';
import { readPackageFile } from '../core/package-file.js';
import type { KeyPair } from '../ssh/keys.js';
import { ZSTD_RELAY_PATH, ZSTD_RELAY_SOURCE } from '../ssh/zstd-relay.js';
import { checkStoreScript, mountStoreScript, STORE_SETTINGS_FILE } from './store-script.js';

export const USER_DATA_LIMIT = 32 * 1024;

const NIX_INSTALLER = 'https://nixos.org/nix/install';

/** The worker's store volume: its id, and when to collect garbage. */
export interface StoreVolumeInput {
  volumeId: number;
  gcAtPercent: number;
}

/**
 * A Nix installed earlier on the store volume, by a worker before this one: the stock image's
 * root disk has none of the rest (build users, nix.conf, the daemon's units, the links), so that
 * is redone here instead of running the installer, which refuses an existing /nix.
 */
const REUSE_NIX_ON_VOLUME = [
  'groupadd -f -r nixbld',
  'for i in $(seq 1 32); do id "nixbld$i" >/dev/null 2>&1 || useradd -r -g nixbld -G nixbld -d /var/empty -s /usr/sbin/nologin "nixbld$i"; done',
  'mkdir -p /etc/nix && { [ -e /etc/nix/nix.conf ] || echo "build-users-group = nixbld" > /etc/nix/nix.conf; }',
  'for u in nix-daemon.socket nix-daemon.service; do ln -sf "/nix/var/nix/profiles/default/lib/systemd/system/$u" /etc/systemd/system/; done',
  'systemctl daemon-reload && systemctl start nix-daemon.socket',
].join('; ');

/** Commands run by cloud-init's final stage, in order; each is idempotent. */
export function workerSetupCommands(store?: StoreVolumeInput): string[] {
  const markerDir = READY_MARKER.slice(0, READY_MARKER.lastIndexOf('/'));
  const link = 'ln -sf /nix/var/nix/profiles/default/bin/* /usr/local/bin/';
  return [
    // The store volume becomes /nix before anything of Nix runs or is installed.
    ...(store ? [mountStoreScript(store.volumeId)] : []),
    // Stock images (Ubuntu, Debian) have no Nix: install it multi-user, and put its tools on the
    // PATH of non-interactive ssh commands, which read no profile. Images with Nix skip this.
    store
      ? `command -v nix-store >/dev/null || if [ -x /nix/var/nix/profiles/default/bin/nix-store ]; then ${REUSE_NIX_ON_VOLUME}; ${link}; else curl -fsSL ${NIX_INSTALLER} | sh -s -- --daemon --yes && ${link}; fi`
      : `command -v nix-store >/dev/null || { curl -fsSL ${NIX_INSTALLER} | sh -s -- --daemon --yes && ${link}; }`,
    ...(store ? [checkStoreScript(store.gcAtPercent)] : []),
    `mkdir -p ${markerDir} && touch ${READY_MARKER}`,
  ];
}

/** The write_files entry that carries the store volume's settings (STORE_SETTINGS_FILE). */
function storeSettingsFile(store: StoreVolumeInput): { path: string; permissions: string; content: string } {
  const settings = { volumeId: Math.trunc(store.volumeId), gcAtPercent: Math.trunc(store.gcAtPercent) };
  return { path: STORE_SETTINGS_FILE, permissions: '0644', content: `${JSON.stringify(settings)}\n` };
}

export interface WorkerUserDataInput {
  hostKey: KeyPair;
  loginPublicKey: string;
  /** The store volume this server is created with; absent: the store is the server's own disk. */
  store?: StoreVolumeInput;
  /** Install the worker's end of compression "zstd" (stock images; the NixOS image has it). */
  zstdRelay?: boolean;
}

export function workerUserData(input: WorkerUserDataInput): string {
  const files = [
    // The store volume's settings as data, for an image without cloud-init (the NixOS worker
    // image reads them from here; see nixos/scripts/store-volume.sh). cloud-init just writes them.
    ...(input.store ? [storeSettingsFile(input.store)] : []),
    // The worker's end of compression "zstd" (the NixOS worker image has it on its PATH).
    ...(input.zstdRelay ? [{ path: ZSTD_RELAY_PATH, permissions: '0755', content: readPackageFile(ZSTD_RELAY_SOURCE) }] : []),
  ];
  const config = {
    disable_root: false,
    ssh_pwauth: false,
    ssh_deletekeys: true,
    ssh_genkeytypes: [],
    ssh_keys: {
      ed25519_private: input.hostKey.privateKey,
      ed25519_public: input.hostKey.publicKey,
    },
    users: [{ name: 'root', ssh_authorized_keys: [input.loginPublicKey] }],
    ...(files.length > 0 ? { write_files: files } : {}),
    runcmd: workerSetupCommands(input.store),
  };
  const text = `#cloud-config\n${JSON.stringify(config, null, 1)}\n`;
  if (Buffer.byteLength(text) > USER_DATA_LIMIT) throw new Error(`user data is ${Buffer.byteLength(text)} bytes, over Hetzner's 32 KiB limit`);
  return text;
}
