/**
 * The cloud-config a worker boots with. It pins the worker's sshd host key (so we never trust on
 * first use), authorises our per-worker login key for root, installs Nix on stock images (a pinned,
 * checked release: nix-install.ts), and finally writes the ready marker that the default
 * readyCommand waits for. Its runcmd sets its own environment first and logs a line per step.
 *
 * Written as JSON, which is YAML too: cloud-init reads it, and a NixOS worker image can read the
 * same user data with jq instead of a YAML parser.
 */
import { gzipSync } from 'node:zlib';
import { READY_MARKER, SETUP_FAILED_MARKER } from '../core/config.js';
import { PINNED_NIX_RELEASE, type NixRelease } from '../core/nix-release.js';
import { readPackageFile } from '../core/package-file.js';
import type { KeyPair } from '../ssh/keys.js';
import { ZSTD_RELAY_PATH, ZSTD_RELAY_SOURCE } from '../ssh/zstd-relay.js';
import { installNixLines } from './nix-install.js';
import { checkStoreAtLines, mountStoreLines, STORE_SETTINGS_FILE } from './store-script.js';

export const USER_DATA_LIMIT = 32 * 1024;

/** systemd's default PATH, which cloud-final has too; runcmd states it rather than trusting it. */
export const RUNCMD_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * The runcmd script's own environment, its first line. cloud-init runs runcmd from
 * cloud-final.service, which has no User=, so systemd gives it no HOME and no USER; Nix's
 * installer stops at once without HOME ("$HOME is not set").
 */
export const RUNCMD_ENVIRONMENT = `export HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 PATH=${RUNCMD_PATH}`;

/**
 * `step N/M what` logs one line per step (the console and /var/log/cloud-init-output.log are all a
 * user has of a failed boot); `fail reason` logs the failure, records it in SETUP_FAILED_MARKER
 * for the daemon (the first reason stays) and ends the script (in a step's subshell: the step,
 * whose `|| fail` then ends the script), so no ready marker is written.
 */
const RUNCMD_HELPERS = [
  'step() { nhb_step="$*"; echo "nix-hcloud-builder: step $*"; }',
  `fail() { echo "nix-hcloud-builder: step $nhb_step failed: $*" >&2; mkdir -p ${dirOf(SETUP_FAILED_MARKER)} && { [ -e ${SETUP_FAILED_MARKER} ] || echo "step $nhb_step failed: $*" > ${SETUP_FAILED_MARKER}; }; exit 1; }`,
].join('\n');

function dirOf(path: string): string {
  return path.slice(0, path.lastIndexOf('/'));
}

/** The worker's store volume: its id, and when to collect garbage. */
export interface StoreVolumeInput {
  volumeId: number;
  gcAtPercent: number;
}

/**
 * A Nix installed earlier on the store volume, by a worker before this one: the stock image's
 * root disk has none of the rest (build users, nix.conf, the daemon's units, the links), so that
 * is redone here instead of running the installer, which refuses an existing /nix. The ids are
 * the installer's (group 30000, users from 30001), which own the volume's files already.
 */
const REUSE_NIX_ON_VOLUME = [
  'groupadd -f -r -g 30000 nixbld',
  'for i in $(seq 1 32); do id "nixbld$i" >/dev/null 2>&1 || useradd -r -u $((30000 + i)) -g nixbld -G nixbld -d /var/empty -s /usr/sbin/nologin "nixbld$i"; done',
  'mkdir -p /etc/nix && { [ -e /etc/nix/nix.conf ] || echo "build-users-group = nixbld" > /etc/nix/nix.conf; }',
  'for u in nix-daemon.socket nix-daemon.service; do ln -sf "/nix/var/nix/profiles/default/lib/systemd/system/$u" /etc/systemd/system/; done',
  'systemctl daemon-reload && systemctl start nix-daemon.socket',
];

/** Non-interactive ssh commands read no profile: Nix's tools go where their PATH looks. */
const LINK_NIX_TOOLS = 'ln -sf /nix/var/nix/profiles/default/bin/* /usr/local/bin/';

/** A step of the worker's setup: what it does (logged), its lines, and whether the boot may go on without it. */
interface SetupStep {
  what: string;
  lines: string[];
  /** "go-on": logged, and the next step runs; "stop": the boot fails with the reason. */
  onFailure: 'go-on' | 'stop';
}

/** Stock images (Ubuntu, Debian) have no Nix: install the pool's release. Images with Nix skip this. */
function installNixStep(release: NixRelease, store: boolean): SetupStep {
  return {
    what: `install Nix ${release.version} unless the image has Nix`,
    onFailure: 'stop',
    lines: [
      'if command -v nix-store >/dev/null; then echo "nix-hcloud-builder: the image has Nix ($(nix-store --version)): not installing"; exit 0; fi',
      ...(store
        ? [
            'if [ -x /nix/var/nix/profiles/default/bin/nix-store ]; then',
            ...REUSE_NIX_ON_VOLUME.map((l) => `  ${l} || fail "cannot set up the Nix found on the store volume"`),
            `  ${LINK_NIX_TOOLS}`,
            '  echo "nix-hcloud-builder: set up the Nix found on the store volume ($(nix-store --version))"; exit 0',
            'fi',
          ]
        : []),
      ...installNixLines(release),
      `${LINK_NIX_TOOLS} || fail "cannot link Nix's tools into /usr/local/bin"`,
    ],
  };
}

function setupSteps(release: NixRelease, store?: StoreVolumeInput): SetupStep[] {
  return [
    // The store volume becomes /nix before anything of Nix runs or is installed.
    ...(store
      ? [
          {
            what: `mount the store volume ${Math.trunc(store.volumeId)} at /nix`,
            onFailure: 'go-on' as const,
            lines: mountStoreLines(store.volumeId),
          },
        ]
      : []),
    installNixStep(release, store !== undefined),
    ...(store ? [{ what: 'check the store', onFailure: 'go-on' as const, lines: checkStoreAtLines(store.gcAtPercent) }] : []),
    { what: 'write the ready marker', onFailure: 'stop', lines: [`mkdir -p ${dirOf(READY_MARKER)} && touch ${READY_MARKER}`] },
  ];
}

/**
 * One runcmd entry per step: its log line, then its lines in a subshell (cloud-init writes all
 * entries into one script: a step's `exit` ends the step only; mounts stay, they belong to the
 * mount namespace).
 */
function renderStep(step: SetupStep, n: number, of: number): string {
  const failure =
    step.onFailure === 'stop'
      ? 'fail "status $?"'
      : `echo "nix-hcloud-builder: step ${n}/${of} failed (status $?); going on without it" >&2`;
  return [`step '${n}/${of} ${step.what}'`, '(', ...step.lines.map((l) => `  ${l}`), `) || ${failure}`].join('\n');
}

/** Commands run by cloud-init's final stage, in order: the environment, the helpers, then each step. */
export function workerSetupCommands(o: { nix?: NixRelease; store?: StoreVolumeInput } = {}): string[] {
  const steps = setupSteps(o.nix ?? PINNED_NIX_RELEASE, o.store);
  return [RUNCMD_ENVIRONMENT, RUNCMD_HELPERS, ...steps.map((s, i) => renderStep(s, i + 1, steps.length))];
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
  /** The Nix release a stock image installs; the pinned one when absent. */
  nix?: NixRelease;
}

export function workerUserData(input: WorkerUserDataInput): string {
  const files = [
    // The store volume's settings as data, for an image without cloud-init (the NixOS worker
    // image reads them from here; see nixos/scripts/store-volume.sh). cloud-init just writes them.
    ...(input.store ? [storeSettingsFile(input.store)] : []),
    // The worker's end of compression "zstd" (the NixOS worker image has it on its PATH), gzipped:
    // as text it would take most of the 32 KiB that Hetzner allows for user data.
    ...(input.zstdRelay
      ? [
          {
            path: ZSTD_RELAY_PATH,
            permissions: '0755',
            encoding: 'gz+b64',
            content: gzipSync(readPackageFile(ZSTD_RELAY_SOURCE), { level: 9 }).toString('base64'),
          },
        ]
      : []),
  ];
  const config = {
    disable_root: false,
    ssh_pwauth: false,
    ssh_deletekeys: true,
    // cloud-init's schema wants a non-empty list: ed25519, whose key is given, so nothing is generated.
    ssh_genkeytypes: ['ed25519'],
    ssh_keys: {
      ed25519_private: input.hostKey.privateKey,
      ed25519_public: input.hostKey.publicKey,
    },
    users: [{ name: 'root', ssh_authorized_keys: [input.loginPublicKey] }],
    ...(files.length > 0 ? { write_files: files } : {}),
    runcmd: workerSetupCommands({ ...(input.nix ? { nix: input.nix } : {}), ...(input.store ? { store: input.store } : {}) }),
  };
  const text = `#cloud-config\n${JSON.stringify(config, null, 1)}\n`;
  if (Buffer.byteLength(text) > USER_DATA_LIMIT)
    throw new Error(`user data is ${Buffer.byteLength(text)} bytes, over Hetzner's 32 KiB limit`);
  return text;
}
