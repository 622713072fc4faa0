/**
 * The daemon's one JSON config file: loaded, checked key by key, with defaults filled in.
 * Every error names the key and what was expected, so a typo never becomes a silent default.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { ConfigError, Fields, isObject, type JsonObject } from './config-fields.js';
import { insecureEndpointReason } from './loopback.js';
import {
  NIX_RELEASE_SYSTEMS,
  NIX_URL_PATTERN,
  NIX_VERSION_PATTERN,
  PINNED_NIX_RELEASE,
  SHA256_HEX,
  type NixRelease,
  type NixReleaseSystem,
} from './nix-release.js';
import { defaultInstance, LABEL_VALUE, type InstanceOrigin } from './instance.js';

export { ConfigError } from './config-fields.js';

/**
 * Compression of the SSH connection to the worker (the leg that crosses the user's uplink).
 * "zlib" is SSH's own zlib@openssh.com, which every OpenSSH sshd offers by default; "zstd" runs
 * each session through a relay on the worker (worker/zstd-relay.py) with one zstd stream each way.
 */
export const WORKER_COMPRESSIONS = ['none', 'zlib', 'zstd'] as const;
export type WorkerCompression = (typeof WORKER_COMPRESSIONS)[number];
export const DEFAULT_WORKER_COMPRESSION: WorkerCompression = 'zstd';
/** zstd's level where "auto" starts (after its warm-up), and a fixed level's worker answers at. */
export const DEFAULT_ZSTD_LEVEL = 3;
/** The bounds of "auto": zstd's fast negative levels (then pass-through) up to where it still keeps up with a slow uplink. */
export const DEFAULT_ZSTD_LEVEL_MIN = -5;
export const DEFAULT_ZSTD_LEVEL_MAX = 12;
/** zstd's levels this tool accepts: its fast ones from -7, up to 19 (20 to 22 need far more memory). */
const ZSTD_LEVELS = { min: -7, max: 19 };

export type ImageRef = { name: string } | { id: number } | { labelSelector: string };

export interface PoolConfig {
  name: string;
  systems: string[];
  serverTypes: string[];
  locations: string[];
  image: ImageRef;
  maxWorkers: number;
  jobsPerWorker: number;
  idleTimeoutMs: number;
  bootTimeoutMs: number;
  readyCommand: string;
  sshPort: number;
  ipv4: boolean;
  speedFactor: number;
  supportedFeatures: string[];
  mandatoryFeatures: string[];
  /** After this, a worker takes no new sessions and is deleted once its sessions end. */
  maxLifetimeMs: number;
  /** "timeout": delete idleTimeout after the last session; "billing-hour": keep an idle worker until just before its next paid hour. */
  idlePolicy: 'timeout' | 'billing-hour';
  /** With "billing-hour": how long before the next hour starts the server is deleted. */
  billingMarginMs: number;
  /** ssh keepalive towards the worker; 3 missed ones end the connection (a silent worker is noticed within 3 × this). */
  keepaliveIntervalMs: number;
  /** Compression of the ssh connection to the worker. */
  compression: WorkerCompression;
  /**
   * With compression "zstd": "auto" (each direction of each session adapts its level between the
   * bounds, see ssh/zstd-adapt.ts) or a fixed level for what the daemon sends up.
   */
  compressionLevel: number | 'auto';
  /** With "auto": the lowest level (below it, pass-through) and the highest. */
  compressionLevelMin: number;
  compressionLevelMax: number;
  /** Answer Nix's handshake from the recorded one while a worker boots (see ssh/early-session.ts). */
  earlyHandshake: boolean;
  /** The warm store: each worker slot's Nix store on a Hetzner Volume; absent = every worker starts empty. */
  store?: StoreConfig;
  /** The Nix release a worker on a stock image installs (an image with Nix keeps its own). */
  nix: NixRelease;
}

// ---- warm store (pools.<name>.store): kept in one block ----
/** `pools.<name>.store`: a Hetzner Volume per worker slot that carries the Nix store from one worker to the next. */
export interface StoreConfig {
  /** Size of each volume in GB (Hetzner: 10..10240), billed per GB-month whether attached or not. */
  volumeGb: number;
  /** Garbage-collect the store at boot when its file system is fuller than this percentage. */
  gcAtPercent: number;
}

export const DEFAULT_GC_AT_PERCENT = 80;

function parseStore(f: Fields): StoreConfig | undefined {
  const s = f.object('store');
  if (!s) return undefined;
  const store = {
    volumeGb: s.integer('volumeGb', Number.NaN, 10, 10240),
    gcAtPercent: s.integer('gcAtPercent', DEFAULT_GC_AT_PERCENT, 1, 99),
  };
  if (Number.isNaN(store.volumeGb)) s.fail('volumeGb', 'an integer from 10 to 10240 (GB of the volume that holds the store)', undefined);
  s.done();
  return store;
}
// ---- end of warm store ----

/**
 * `pools.<name>.nix`: the release tarball a stock image installs. Another version than the pinned
 * one needs its hashes: the worker runs nothing it has not checked.
 */
function parseNixRelease(f: Fields, systems: string[]): NixRelease {
  const n = f.object('nix');
  if (!n) return PINNED_NIX_RELEASE;
  const version = n.string('version', PINNED_NIX_RELEASE.version);
  if (!NIX_VERSION_PATTERN.test(version)) n.fail('version', 'a Nix release version such as "2.31.2"', version);
  const url = n.string('url', PINNED_NIX_RELEASE.url);
  if (!NIX_URL_PATTERN.test(url))
    n.fail('url', 'an http(s) URL without quotes, spaces, "$" or "\\" ({version} and {system} are filled in)', url);
  const given = n.object('sha256');
  let sha256: NixRelease['sha256'] = {};
  if (given) {
    for (const system of NIX_RELEASE_SYSTEMS) {
      const hash = given.optionalString(system);
      if (hash === undefined) continue;
      if (!SHA256_HEX.test(hash)) given.fail(system, "the tarball's sha256 as 64 lowercase hex digits", hash);
      sha256[system] = hash;
    }
    given.done();
  } else if (version === PINNED_NIX_RELEASE.version) {
    sha256 = PINNED_NIX_RELEASE.sha256;
  }
  n.done();
  for (const system of systems) {
    if ((NIX_RELEASE_SYSTEMS as readonly string[]).includes(system) && sha256[system as NixReleaseSystem] === undefined) {
      n.fail(
        'sha256',
        `the sha256 of Nix ${version}'s ${system} tarball (the pool builds ${system}), e.g. {"${system}": "<64 hex digits>"}`,
        given ? Object.keys(sha256) : undefined,
      );
    }
  }
  return { version, url, sha256 };
}

export interface Config {
  /** Marks the servers this daemon owns (label value); two daemons on one project need different ones. */
  instance: string;
  /** "config" when set there; else the default's: kept in the state folder, or made now (the daemon keeps it at start). */
  instanceOrigin: InstanceOrigin;
  listen: { host: string; port: number };
  stateDir: string;
  authorizedKeys: string[];
  authorizedKeysFile?: string;
  hcloud: { endpoint: string; tokenFile?: string; tokenCommand?: string };
  pools: Record<string, PoolConfig>;
  log: { level: string };
  /** How often servers labelled as ours are checked against the state (and lifetimes enforced). */
  sweepIntervalMs: number;
  /** On SIGTERM: how long running sessions may go on before workers are deleted anyway. */
  shutdownGraceMs: number;
  /** Waits between attempts to delete a server: doubling from the first, capped at the max. */
  deleteRetry: { firstWaitMs: number; maxWaitMs: number };
  budget?: { maxEurPerMonth: number };
  limits: {
    /** A connection that has not authenticated within this time is dropped. */
    loginGraceMs: number;
    /** Open connections allowed from one source address. */
    maxConnectionsPerSource: number;
    /** Connections not yet logged in, from all addresses together (sshd's MaxStartups). */
    maxStartups: number;
    /** Failed login attempts allowed per connection (sshd's MaxAuthTries). */
    maxAuthTries: number;
  };
}

export const READY_MARKER = '/run/nix-hcloud-builder/ready';
/** Written by the cloud-config when a setup step the worker cannot do without fails: the reason. */
export const SETUP_FAILED_MARKER = '/run/nix-hcloud-builder/failed';
export const DEFAULT_READY_COMMAND = `test -e ${READY_MARKER} && nix-store --version`;

const POOL_NAME = /^[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?$/;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_STATE_HOME || join(homedir(), '.local', 'state');
  return join(base, 'nix-hcloud-builder');
}

function parseImage(f: Fields, k: string): ImageRef {
  const v = f.raw(k);
  if (v === undefined) return { name: 'ubuntu-24.04' };
  if (typeof v === 'string' && v.length > 0) return /^\d+$/.test(v) ? { id: Number(v) } : { name: v };
  if (typeof v === 'number' && Number.isInteger(v) && v > 0) return { id: v };
  if (isObject(v) && typeof v.labelSelector === 'string' && Object.keys(v).length === 1 && v.labelSelector.length > 0) {
    return { labelSelector: v.labelSelector };
  }
  return f.fail(k, 'an image name, an image id, or {"labelSelector": "k=v"} for the newest matching snapshot', v);
}

function parsePool(name: string, f: Fields): PoolConfig {
  const pool: PoolConfig = {
    name,
    systems: f.strings('systems', ['x86_64-linux']),
    serverTypes: f.strings('serverTypes'),
    locations: f.strings('locations', ['fsn1', 'nbg1', 'hel1']),
    image: parseImage(f, 'image'),
    maxWorkers: f.integer('maxWorkers', 1, 1, 100),
    jobsPerWorker: f.integer('jobsPerWorker', 8, 1, 1024),
    idleTimeoutMs: f.duration('idleTimeout', '10m'),
    bootTimeoutMs: f.duration('bootTimeout', '10m'),
    readyCommand: f.string('readyCommand', DEFAULT_READY_COMMAND),
    sshPort: f.integer('sshPort', 22, 1, 65535),
    ipv4: f.boolean('ipv4', true),
    speedFactor: f.number('speedFactor', 1),
    supportedFeatures: f.strings('supportedFeatures', ['big-parallel', 'nixos-test', 'benchmark']),
    mandatoryFeatures: f.strings('mandatoryFeatures', []),
    maxLifetimeMs: f.duration('maxLifetime', '12h'),
    idlePolicy: f.oneOf('idlePolicy', ['timeout', 'billing-hour'] as const, 'timeout'),
    billingMarginMs: f.duration('billingMargin', '3m'),
    keepaliveIntervalMs: f.duration('keepaliveInterval', '10s'),
    compression: f.oneOf('compression', WORKER_COMPRESSIONS, DEFAULT_WORKER_COMPRESSION),
    compressionLevel: parseCompressionLevel(f),
    compressionLevelMin: f.integer('compressionLevelMin', DEFAULT_ZSTD_LEVEL_MIN, ZSTD_LEVELS.min, ZSTD_LEVELS.max),
    compressionLevelMax: f.integer('compressionLevelMax', DEFAULT_ZSTD_LEVEL_MAX, ZSTD_LEVELS.min, ZSTD_LEVELS.max),
    earlyHandshake: f.boolean('earlyHandshake', true),
    nix: PINNED_NIX_RELEASE,
  };
  const store = parseStore(f);
  if (store) pool.store = store;
  pool.nix = parseNixRelease(f, pool.systems);
  if (pool.compressionLevelMin > pool.compressionLevelMax)
    f.fail('compressionLevelMin', `at most compressionLevelMax (${pool.compressionLevelMax})`, pool.compressionLevelMin);
  if (pool.keepaliveIntervalMs < 1000) f.fail('keepaliveInterval', 'at least 1s', pool.keepaliveIntervalMs / 1000);
  if (pool.serverTypes.length === 0) f.fail('serverTypes', 'at least one server type', []);
  if (pool.locations.length === 0) f.fail('locations', 'at least one location', []);
  f.done();
  return pool;
}

function parseCompressionLevel(f: Fields): number | 'auto' {
  const v = f.raw('compressionLevel');
  if (v === undefined || v === 'auto') return 'auto';
  if (typeof v !== 'number' || !Number.isInteger(v) || v < ZSTD_LEVELS.min || v > ZSTD_LEVELS.max || v === 0)
    f.fail('compressionLevel', `"auto" or an integer from ${ZSTD_LEVELS.min} to ${ZSTD_LEVELS.max} but 0`, v);
  return v;
}

/** Checks a parsed config object; `baseDir` resolves relative paths (the config file's folder). */
export function parseConfig(input: unknown, baseDir: string, env: NodeJS.ProcessEnv = process.env): Config {
  if (!isObject(input)) throw new ConfigError(`config: expected a JSON object at the top, got ${JSON.stringify(input)}`);
  const top = new Fields(input, '');
  const path = (p: string): string => resolve(baseDir, p.replace(/^~(?=\/|$)/, homedir()));

  const explicitInstance = top.optionalString('instance');
  if (explicitInstance !== undefined && !LABEL_VALUE.test(explicitInstance))
    top.fail('instance', 'at most 63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit', explicitInstance);

  const listenFields = top.object('listen');
  const listen = {
    host: listenFields?.string('host', '127.0.0.1') ?? '127.0.0.1',
    port: listenFields?.integer('port', 2222, 0, 65535) ?? 2222,
  };
  listenFields?.done();

  const stateDir = path(top.string('stateDir', defaultStateDir(env)));
  const { instance, origin: instanceOrigin } =
    explicitInstance === undefined ? defaultInstance(stateDir) : { instance: explicitInstance, origin: 'config' as const };
  const authorizedKeys = top.strings('authorizedKeys', []);
  const keysFile = top.optionalString('authorizedKeysFile');

  const h = top.object('hcloud');
  const endpoint = h?.string('endpoint', 'https://api.hetzner.cloud/v1') ?? 'https://api.hetzner.cloud/v1';
  if (!/^https?:\/\/[^\s]+$/.test(endpoint)) h?.fail('endpoint', 'an http(s) URL', endpoint);
  let url: URL | undefined;
  try {
    url = new URL(endpoint);
  } catch {
    h?.fail('endpoint', 'an http(s) URL', endpoint);
  }
  const insecure = url && insecureEndpointReason(url);
  if (insecure) h?.fail('endpoint', `an https URL (${insecure})`, endpoint);
  const tokenFile = h?.optionalString('tokenFile');
  const tokenCommand = h?.optionalString('tokenCommand');
  h?.done();
  if (tokenFile && tokenCommand)
    throw new ConfigError('config keys "hcloud.tokenFile" and "hcloud.tokenCommand": set one of them, not both');

  const poolsFields = top.object('pools');
  if (!poolsFields)
    throw new ConfigError('config key "pools": expected an object with at least one pool, e.g. {"x86_64": {"serverTypes": ["ccx33"]}}');
  const pools: Record<string, PoolConfig> = {};
  for (const name of Object.keys(input.pools as JsonObject)) {
    if (!POOL_NAME.test(name)) {
      throw new ConfigError(
        `config key "pools.${name}": a pool name is the ssh user name Nix logs in with: 1 to 32 lowercase letters, digits, "-" or "_"`,
      );
    }
    const poolFields = poolsFields.object(name) as Fields;
    pools[name] = parsePool(name, poolFields);
  }
  poolsFields.done();
  if (Object.keys(pools).length === 0) throw new ConfigError('config key "pools": expected at least one pool');

  const sweepIntervalMs = top.duration('sweepInterval', '5m');
  const shutdownGraceMs = top.duration('shutdownGrace', '60s');
  const deleteRetryFields = top.object('deleteRetry');
  const deleteRetry = {
    firstWaitMs: deleteRetryFields?.duration('firstWait', '10s') ?? 10_000,
    maxWaitMs: deleteRetryFields?.duration('maxWait', '5m') ?? 300_000,
  };
  if (!(deleteRetry.firstWaitMs > 0)) deleteRetryFields?.fail('firstWait', 'a duration above 0', deleteRetry.firstWaitMs / 1000);
  if (deleteRetry.maxWaitMs < deleteRetry.firstWaitMs)
    deleteRetryFields?.fail('maxWait', 'a duration no shorter than deleteRetry.firstWait', deleteRetry.maxWaitMs / 1000);
  deleteRetryFields?.done();
  const budgetFields = top.object('budget');
  const budget = budgetFields ? { maxEurPerMonth: budgetFields.number('maxEurPerMonth', Number.NaN) } : undefined;
  if (budget && Number.isNaN(budget.maxEurPerMonth)) budgetFields?.fail('maxEurPerMonth', 'a positive number of euros', undefined);
  budgetFields?.done();
  const limitsFields = top.object('limits');
  const limits = {
    loginGraceMs: limitsFields?.duration('loginGrace', '20s') ?? 20_000,
    maxConnectionsPerSource: limitsFields?.integer('maxConnectionsPerSource', 128, 1, 100_000) ?? 128,
    maxStartups: limitsFields?.integer('maxStartups', 100, 1, 100_000) ?? 100,
    maxAuthTries: limitsFields?.integer('maxAuthTries', 6, 1, 100) ?? 6,
  };
  limitsFields?.done();

  const logFields = top.object('log');
  const level = logFields?.string('level', 'info') ?? 'info';
  if (!LOG_LEVELS.includes(level)) logFields?.fail('level', `one of ${LOG_LEVELS.join(', ')}`, level);
  logFields?.done();
  top.done();

  const config: Config = {
    instance,
    instanceOrigin,
    listen,
    stateDir,
    authorizedKeys,
    hcloud: { endpoint: endpoint.replace(/\/+$/, '') },
    pools,
    log: { level },
    sweepIntervalMs,
    shutdownGraceMs,
    deleteRetry,
    limits,
  };
  if (budget) config.budget = budget;
  if (keysFile) config.authorizedKeysFile = path(keysFile);
  if (tokenFile) config.hcloud.tokenFile = path(tokenFile);
  if (tokenCommand) config.hcloud.tokenCommand = tokenCommand;
  return config;
}

export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`config file ${file} is not valid JSON: ${(err as Error).message}`);
  }
  return parseConfig(parsed, dirname(resolve(file)), env);
}
