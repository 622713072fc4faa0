/**
 * The config reference: every key the config loader knows, with its default and meaning. The
 * table in docs/configuration.md is generated from this (`npm run docs`), and a test checks that this list and
 * the loader's keys are the same set, so the docs cannot drift from the code.
 */
import { DEFAULT_READY_COMMAND } from './config.js';
import { NIX_RELEASE_URL, PINNED_NIX_RELEASE } from './nix-release.js';

export interface ConfigKeyDoc {
  key: string;
  default: string;
  meaning: string;
}

export const CONFIG_REFERENCE: ConfigKeyDoc[] = [
  {
    key: 'instance',
    default: 'host name + random suffix kept in `<stateDir>/instance`',
    meaning:
      "value of the `nix-hcloud-builder/instance` label: which daemon owns a server. Two daemons on one Hetzner project need different instances: a second daemon claiming a live one's instance refuses to start (see [Money](money.md#one-daemon-per-instance-moving-a-daemon))",
  },
  { key: 'listen.host', default: '`127.0.0.1`', meaning: 'address Nix connects to' },
  { key: 'listen.port', default: '`2222`', meaning: 'port Nix connects to' },
  {
    key: 'stateDir',
    default: '`$XDG_STATE_HOME/nix-hcloud-builder` (`~/.local/state/…`)',
    meaning:
      'host key, `state.json` (workers, pending deletes), `ledger.json`, `instance` (the default instance), lock, control socket; mode 0700',
  },
  { key: 'authorizedKeys', default: '`[]`', meaning: "public key lines allowed to log in (the nix-daemon's key)" },
  { key: 'authorizedKeysFile', default: '–', meaning: 'a file of such lines, read at start' },
  {
    key: 'hcloud.endpoint',
    default: '`https://api.hetzner.cloud/v1`',
    meaning:
      'API base URL; https, or plain http only to a loopback address (a local fake or proxy): the API token must not cross the network in clear text. Answers larger than 8 MiB are refused',
  },
  { key: 'hcloud.tokenFile', default: '–', meaning: 'file holding the API token; env `HCLOUD_TOKEN` wins' },
  { key: 'hcloud.tokenCommand', default: '–', meaning: 'command printing the API token (instead of `tokenFile`); env `HCLOUD_TOKEN` wins' },
  {
    key: 'pools.<name>',
    default: '–',
    meaning: 'a pool; `<name>` is the ssh user name Nix logs in with (lowercase letters, digits, `-`, `_`)',
  },
  {
    key: 'pools.<name>.serverTypes',
    default: 'required',
    meaning:
      "server types in order of preference; checked at start against `GET /server_types`: each must exist and match the pool's architecture (`cax…` types are arm, for `aarch64-linux`)",
  },
  {
    key: 'pools.<name>.locations',
    default: '`["fsn1","nbg1","hel1"]`',
    meaning: 'locations in order of preference; the next is tried when one is out of capacity, then the next server type',
  },
  {
    key: 'pools.<name>.image',
    default: '`"ubuntu-24.04"`',
    meaning: 'an image name, an image id, or `{"labelSelector": "k=v"}` for the newest matching snapshot',
  },
  {
    key: 'pools.<name>.systems',
    default: '`["x86_64-linux"]`',
    meaning: 'systems the pool builds (machines line; decides the architecture)',
  },
  { key: 'pools.<name>.maxWorkers', default: '`1`', meaning: 'servers the pool may run at once' },
  {
    key: 'pools.<name>.jobsPerWorker',
    default: '`8`',
    meaning: "sessions per server; the machines line's max-jobs is `maxWorkers × jobsPerWorker`",
  },
  { key: 'pools.<name>.idleTimeout', default: '`10m`', meaning: 'delete a server this long after its last session ended' },
  { key: 'pools.<name>.bootTimeout', default: '`10m`', meaning: 'give up on a boot (and delete the server) after this long' },
  { key: 'pools.<name>.readyCommand', default: `\`${DEFAULT_READY_COMMAND}\``, meaning: 'run on the worker until it exits 0' },
  { key: 'pools.<name>.sshPort', default: '`22`', meaning: "the worker's sshd port" },
  { key: 'pools.<name>.ipv4', default: '`true`', meaning: 'give servers a public IPv4 (about €0.50/month extra; IPv6 is free)' },
  { key: 'pools.<name>.speedFactor', default: '`1`', meaning: 'for the machines line' },
  {
    key: 'pools.<name>.supportedFeatures',
    default: '`["big-parallel","nixos-test","benchmark"]`',
    meaning:
      'for the machines line. No `kvm`: Hetzner Cloud servers have no nested virtualisation; add it only for servers that really have `/dev/kvm`',
  },
  { key: 'pools.<name>.mandatoryFeatures', default: '`[]`', meaning: 'for the machines line' },
  {
    key: 'pools.<name>.maxLifetime',
    default: '`12h`',
    meaning: 'past this a worker takes no new sessions and is deleted once idle; past twice this it is deleted even with sessions running',
  },
  {
    key: 'pools.<name>.idlePolicy',
    default: '`"timeout"`',
    meaning:
      '`"timeout"`: delete `idleTimeout` after the last session. `"billing-hour"`: Hetzner bills every started hour, so keep an idle worker until `billingMargin` before its next hour starts',
  },
  { key: 'pools.<name>.billingMargin', default: '`3m`', meaning: 'with `"billing-hour"`' },
  {
    key: 'pools.<name>.keepaliveInterval',
    default: '`10s`',
    meaning: 'ssh keepalive towards the worker; three missed ones end the connection, fail its sessions and delete the worker',
  },
  {
    key: 'pools.<name>.compression',
    default: '`"zstd"`',
    meaning:
      'compression of the leg to the worker, the one that crosses your uplink: `"zstd"` (each session through the worker\'s zstd relay, which the cloud-config and the NixOS worker image install; uncompressed, said on the build\'s stderr, on a worker without it, and said at start when the daemon\'s own zstd addon did not build), `"zlib"` (SSH\'s zlib@openssh.com; falls back to none if the worker\'s sshd does not offer it) or `"none"`. See "Which compression for which link"',
  },
  {
    key: 'pools.<name>.compressionLevel',
    default: '`"auto"`',
    meaning:
      'with `"zstd"`: `"auto"` adapts the level of each direction of each session between `compressionLevelMin` and `compressionLevelMax` (the worker\'s download never above the start): up while the link is what the bytes wait for, down (and to pass-through) while compressing is, pass-through for data that does not compress; it starts at 3 after the first 64 KiB (the upload of a later session over the same worker connection where the last one ended, never below 3). A number (-7 to 19, not 0) fixes the level of what the daemon sends up (the worker then sends at 3; from 9 on the daemon also finds repeats up to 128 MiB back, taking up to ≈ 150 MB per busy session). `status` and the log say what sessions settled on. See [Which compression for which link](compression.md)',
  },
  {
    key: 'pools.<name>.compressionLevelMin',
    default: '`-5`',
    meaning: 'with `"auto"`: the lowest level (-7 to 19, not 0); below it, data goes through as it is',
  },
  {
    key: 'pools.<name>.compressionLevelMax',
    default: '`12`',
    meaning:
      "with `\"auto\"`: the highest level (-7 to 19, not 0). Memory follows the level: the window is 128 KiB at the negative levels, 512 KiB at 3, 1 MiB at 6–9, and from 10 (only where the link is slow) 8 MiB with long-distance matching, about 25 MB per busy session (the daemon's upload: 16 MiB and a larger hash table, ≈ 34 MB, for at most 4 sessions at once; the others stay at 9); zstd's tables are capped at the window's size",
  },
  {
    key: 'pools.<name>.earlyHandshake',
    default: '`true`',
    meaning:
      "while no worker is ready, answer Nix's handshake at once with what this pool's worker (same image) answered last time, so Nix goes on with other work during the boot. Only while the pool is healthy: its last boot did not fail in the last 10 minutes, the API took the token at its last answer, and the budget allows a boot. Nix then will not fall back to another machine: a boot that fails after that fails the build with the reason as its error. With `ssh-ng://` the boot's progress lines reach Nix as log messages; with `ssh://` they reach the build's log. `false`: the session waits for the worker, and Nix may fall back when the boot fails. See [Early handshake](architecture.md#early-handshake)",
  },
  {
    key: 'pools.<name>.store.volumeGb',
    default: '– (no warm store)',
    meaning:
      "keep the Nix store of each worker slot (`maxWorkers` of them) on a Hetzner Volume of this many GB (10 to 10240), so the next worker finds what earlier builds uploaded. Each volume is billed per GB-month whether attached or not (200 GB ≈ €11/month); it lives in the pool's first location, see [Warm store](warm-store.md)",
  },
  {
    key: 'pools.<name>.store.gcAtPercent',
    default: '`80`',
    meaning: 'at boot, garbage-collect the store when its volume is fuller than this percentage (1 to 99)',
  },
  {
    key: 'pools.<name>.nix.version',
    default: `\`"${PINNED_NIX_RELEASE.version}"\``,
    meaning:
      "the Nix release a worker on a stock image (no Nix: Ubuntu, Debian) installs with the release's own installer (multi-user, nix-daemon); an image that has Nix keeps its own. See [Which Nix a stock worker gets](worker-images.md#which-nix-a-stock-worker-gets)",
  },
  {
    key: 'pools.<name>.nix.url',
    default: `\`"${NIX_RELEASE_URL}"\``,
    meaning:
      'where the worker downloads the release tarball (5 attempts); `{version}` and `{system}` (`x86_64-linux`, `aarch64-linux`) are filled in. A mirror must serve the same bytes: they are checked against `sha256`',
  },
  {
    key: 'pools.<name>.nix.sha256',
    default: `the pinned hashes of ${PINNED_NIX_RELEASE.version}`,
    meaning:
      '`{"x86_64-linux": "<hex>", "aarch64-linux": "<hex>"}`: the tarballs\' sha256 (releases.nixos.org has a `.sha256` file beside each). Required for another version, for every system of the pool; a tarball that does not match is not run, and the boot fails with that reason',
  },
  {
    key: 'budget.maxEurPerMonth',
    default: '– (no cap)',
    meaning: "refuse to create a server when this month's spend plus one hour of it would pass this",
  },
  {
    key: 'sweepInterval',
    default: '`5m`',
    meaning: 'how often labelled servers are checked against the state (unknown ones deleted) and lifetimes enforced',
  },
  { key: 'shutdownGrace', default: '`60s`', meaning: 'on SIGTERM, how long running sessions may go on before workers are deleted anyway' },
  {
    key: 'deleteRetry.firstWait',
    default: '`10s`',
    meaning:
      'a server delete that fails (423 locked, 429, 5xx, any error) is tried again after this, then after twice as long each time, until the API says the server is gone; across sweeps and restarts (the state file keeps the pending deletes). Still failing after an hour: an error in the log and in `status`',
  },
  { key: 'deleteRetry.maxWait', default: '`5m`', meaning: 'the waits between delete attempts stop growing here' },
  {
    key: 'limits.loginGrace',
    default: '`20s`',
    meaning:
      'a connection that has not logged in by then is dropped (one whose first line is not an SSH identification line is dropped at once)',
  },
  { key: 'limits.maxConnectionsPerSource', default: '`128`', meaning: 'open connections from one address; more are closed at once' },
  {
    key: 'limits.maxStartups',
    default: '`100`',
    meaning: "connections that have not logged in yet, from all addresses together (as sshd's `MaxStartups`); more are closed at once",
  },
  {
    key: 'limits.maxAuthTries',
    default: '`6`',
    meaning:
      "failed login attempts on one connection (as sshd's `MaxAuthTries`; each key a client offers that is not authorized counts); then it is closed",
  },
  { key: 'log.level', default: '`info`', meaning: '`fatal` … `trace`, `silent`' },
];

export function renderConfigReference(): string {
  const rows = CONFIG_REFERENCE.map((d) => `| \`${d.key}\` | ${d.default} | ${d.meaning.replace(/\|/g, '\\|')} |`);
  return ['| key | default | meaning |', '|---|---|---|', ...rows].join('\n');
}

export const README_MARKERS = { start: '<!-- config-reference:start (npm run docs) -->', end: '<!-- config-reference:end -->' };

/** The README with its config table replaced by the rendered reference. */
export function withConfigReference(readme: string): string {
  const start = readme.indexOf(README_MARKERS.start);
  const end = readme.indexOf(README_MARKERS.end);
  if (start < 0 || end < start) throw new Error('README has no config-reference markers');
  return `${readme.slice(0, start + README_MARKERS.start.length)}\n${renderConfigReference()}\n${readme.slice(end)}`;
}
