/**
 * The cloud-config a worker boots with. It pins the worker's sshd host key (so we never trust on
 * first use), authorises our per-worker login key for root, installs Nix on stock images, and
 * finally writes the ready marker that the default readyCommand waits for.
 *
 * Written as JSON, which is YAML too: cloud-init reads it, and a NixOS worker image can read the
 * same user data with jq instead of a YAML parser.
 */
import { READY_MARKER } from '../core/config.js';
import type { KeyPair } from '../ssh/keys.js';

export const USER_DATA_LIMIT = 32 * 1024;

const NIX_INSTALLER = 'https://nixos.org/nix/install';

/** Commands run by cloud-init's final stage, in order; each is idempotent. */
export function workerSetupCommands(): string[] {
  const markerDir = READY_MARKER.slice(0, READY_MARKER.lastIndexOf('/'));
  return [
    // Stock images (Ubuntu, Debian) have no Nix: install it multi-user, and put its tools on the
    // PATH of non-interactive ssh commands, which read no profile. Images with Nix skip this.
    `command -v nix-store >/dev/null || { curl -fsSL ${NIX_INSTALLER} | sh -s -- --daemon --yes && ln -sf /nix/var/nix/profiles/default/bin/* /usr/local/bin/; }`,
    `mkdir -p ${markerDir} && touch ${READY_MARKER}`,
  ];
}

export interface WorkerUserDataInput {
  hostKey: KeyPair;
  loginPublicKey: string;
}

export function workerUserData(input: WorkerUserDataInput): string {
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
    runcmd: workerSetupCommands(),
  };
  const text = `#cloud-config\n${JSON.stringify(config, null, 1)}\n`;
  if (Buffer.byteLength(text) > USER_DATA_LIMIT) throw new Error(`user data is ${Buffer.byteLength(text)} bytes, over Hetzner's 32 KiB limit`);
  return text;
}
