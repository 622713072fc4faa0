// A fake Hetzner Cloud API for tests, with optional real servers: every
// created server can become an sshd in its own mount namespace on its own
// loopback address (127.0.0.N), with its own empty Nix store at /nix,
// configured from its cloud-config user data, or, for a server of a NixOS
// worker image, by that image's own boot scripts, which read the user data
// from the fake metadata service (`/metadata/<server id>/hetzner/v1/...`).
//
// The answers follow spec/hcloud/openapi.json and are checked against it.

import { createServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import ssh2, { type ParsedKey } from 'ssh2';
import { generateKeyPair } from '../../src/ssh/keys.js';
import type { components } from '../../src/hcloud/openapi.js';
import {
  LOCATIONS,
  DATA_CENTERS,
  SERVER_TYPES,
  systemImages,
  includedTraffic,
  pricing,
  type Image,
  type ServerType,
  type Location,
  type DataCenter,
} from './catalog.js';
import { labelProblems, parseSelector, matches, SelectorError, type Labels } from './labels.js';
import { checkRequestBody, checkResponse, checkSchema, withoutRemoved } from './openapi.js';
import { parseUserData } from './cloud-config.js';
import { ApiError, invalidInput, iso } from './api.js';
import { VolumeStore, type Volume, type VolumeRecord } from './volumes.js';
import { FakeServer } from './fake-server.js';
import { releaseAllDisksSync, type NixosBoot, type UnitState, NIXOS_UNITS } from './nixos-image.js';
import { LinkRelay, type LinkBytes, type LinkProfile } from '../rig/link.js';

type Schemas = components['schemas'];
type ApiServer = Schemas['server'];
type Action = Schemas['action'];
type ServerStatus = ApiServer['status'];
type Pagination = Schemas['pagination'];
type SshKey = Schemas['ssh_key'];

/** What a snapshot made by `create_image` remembers of the server's disk (`DIR/disk`, see FakeServer). */
export interface SnapshotDisk {
  sha256: string;
  bytes: number;
}

/** With the `link` option, each server's sshd listens this far above `sshPort` (the relay on `sshPort`). */
export const LINK_INNER_PORT_OFFSET = 10_000;

export interface FakeCloudOptions {
  /** The only accepted Bearer token; others get 401 unauthorized. */
  token: string;
  /** Per-server folders go in dataDir/servers/<id>/, per-volume folders in dataDir/volumes/<id>/. */
  dataDir: string;
  /** API listen host, default 127.0.0.1 (the port is random). */
  host?: string;
  /** Default true: each running server is a real sshd; false = API only. */
  realServers?: boolean;
  /** Port each server's sshd listens on, default 22. */
  sshPort?: number;
  /**
   * An emulated uplink in front of every server (cloud-init boots): its sshd listens on
   * `sshPort + LINK_INNER_PORT_OFFSET` and a relay with this profile on `sshPort`, so that
   * everything that reaches the server's ssh port (the daemon, direct OpenSSH) crosses the link.
   */
  link?: LinkProfile;
  /** Each server's sshd MaxSessions (channels per connection), default 64. */
  maxSessions?: number;
  /** Servers get 127.0.0.<firstAddress + k>, default 10 (wraps before 255, reuses freed ones). */
  firstAddress?: number;
  /** create -> "running" and create_server action success, default 1000. */
  bootDelayMs?: number;
  /** After sshd is up, wait this long, then run the cloud-config runcmd, default 500. */
  readyDelayMs?: number;
  /** delete_server action duration, default 200. */
  deleteDelayMs?: number;
  /** Default true: validate every JSON answer against openapi.json (mismatches go to schemaErrors and stderr). */
  validateResponses?: boolean;
  /**
   * The day whose API the fake answers as: a property that openapi.json marks deprecated with a
   * removal date ("will be removed after the 1 July 2026") is left out of every answer from the
   * day after. Default: now. An earlier day gives the API of before.
   */
  apiDate?: Date;
  /** Rate limit bucket: size (default 3600) and refill per second (default 1). */
  rateLimit?: { limit?: number; refillPerSecond?: number };
  /** Most live servers the project may have (403 resource_limit_exceeded past it); default: no limit. */
  serverLimit?: number;
  /** Write one line per request to the log. Default false. */
  logRequests?: boolean;
  /** Where log lines go (schema mismatches, server events, requests). Default: stderr. */
  log?: (line: string) => void;
  /**
   * The servers run Nix from this Debian root (test/rig/nix-roots.sh: another version than the
   * machine's) instead of the machine's own. Default: the machine's.
   */
  nixRoot?: string;
  /** How servers of a NixOS worker image (`addImage({ worker: 'nixos' })`) boot. */
  nixosWorker?: {
    /** NHB_FETCH_ATTEMPTS for fetch-keys.sh (one a second), default 10. */
    fetchAttempts?: number;
    /** NHB_SWAP_MIB for zpool-expand.sh, default 32. */
    swapMib?: number;
    /** The image's size as written to the disk, default 64 (MiB). */
    imageMib?: number;
    /** The server's disk (a sparse file), default 256 (MiB). */
    diskMib?: number;
  };
}

/** Which units of nixos/worker.nix ran and how (null for other servers). */
export type NixosUnits = Record<keyof typeof NIXOS_UNITS, UnitState>;

/**
 * "This answer from the metadata service for the next N matching requests": an HTTP status
 * and body instead of the real answer, or a dropped connection.
 */
export interface MetadataFault {
  /** Only requests of this server; any server when absent. */
  server?: number;
  /** Path below /hetzner/v1, e.g. "/userdata"; any when absent. */
  path?: string | RegExp;
  /** How many matching requests get the fault, default 1 (Infinity: all). */
  times?: number;
  /** Default 200. */
  status?: number;
  /** Default: empty. */
  body?: string;
  /** Destroy the socket instead of answering. */
  networkError?: boolean;
}

/** "A given error for the next N matching requests." */
export interface Fault {
  /** Request method; any when absent. */
  method?: string;
  /** Path relative to /v1 without the query, e.g. "/servers" or /^\/servers\/\d+$/. */
  path: string | RegExp;
  /** How many matching requests get the fault, default 1. */
  times?: number;
  status?: number;
  code?: string;
  message?: string;
  details?: unknown;
  headers?: Record<string, string>;
  /** Destroy the socket instead of answering. */
  networkError?: boolean;
  /** Answer late (with the real answer, unless status is given). */
  delayMs?: number;
  /** Carry the request out first, then replace its answer by the fault (an answer lost on the way back). */
  afterHandling?: boolean;
}

/** `ignores-shutdown`: the OS ignores ACPI; `shutdown` succeeds at once (request delivered) and the server keeps running. */
export type ServerBehaviour =
  'normal' | 'never-running' | 'no-sshd' | 'wrong-host-key' | 'never-ready' | 'action-error' | 'ignores-shutdown';

export interface FakeServerInfo {
  id: number;
  name: string;
  labels: Labels;
  status: ServerStatus;
  /** 127.0.0.N: where this server's sshd listens. */
  address: string;
  deleted: boolean;
  /** The folder bind-mounted at /nix inside the server. */
  storeDir: string;
  /** The server's folder (dataDir/servers/<id>). */
  dir: string;
  userData: string | null;
  serverType: string;
  location: string;
  image: string;
  createdAt: Date;
  behaviour: ServerBehaviour;
  /** sshd accepts connections. */
  sshdRunning: boolean;
  /** Bytes through the emulated link so far (up = towards the server), with the `link` option. */
  linkBytes: LinkBytes | null;
  /** The cloud-config runcmd has finished. */
  cloudInitDone: boolean;
  /** Rescue mode is enabled for the next boot (`enable_rescue`, not yet booted into). */
  rescueEnabled: boolean;
  /** The running sshd is the rescue system's. */
  inRescue: boolean;
  /** The regular file the rescue system has at /dev/sda: `DIR/disk`. */
  diskFile: string;
  /** The disk the server was created from, when its image is a snapshot made by `create_image`. */
  disk: SnapshotDisk | null;
  /** How the server boots: cloud-init reads its user data, or the NixOS worker image's units. */
  bootMode: BootMode;
  /** NixOS worker image: the state of each unit of the current (or last) boot; null otherwise. */
  units: NixosUnits | null;
  /** NixOS worker image: its disk (`DIR/worker-disk.img`); null otherwise. */
  workerDisk: string | null;
  /** NixOS worker image: the loop device holding the disk while the server runs. */
  loopDevice: string | null;
  /** This server's user data on the fake metadata service (`/metadata/<id>/hetzner/v1/userdata`). */
  metadataUrl: string;
}

export type BootMode = 'cloud-init' | 'nixos' | 'stock';

interface ServerRecord {
  id: number;
  name: string;
  labels: Labels;
  status: ServerStatus;
  createdAt: Date;
  type: ServerType;
  image: Image;
  location: Location;
  datacenter: DataCenter;
  address: string;
  ipv4Enabled: boolean;
  ipv6: Schemas['ipv6'] | null;
  userData: string | null;
  deleted: boolean;
  behaviour: ServerBehaviour;
  dir: string;
  worker: FakeServer | null;
  workerStopped: Promise<void> | null;
  timers: Set<NodeJS.Timeout>;
  actionIds: number[];
  deleteActionId: number | null;
  /** Public keys for the rescue system of the next boot; null: rescue mode off. */
  rescueKeys: string[] | null;
  inRescue: boolean;
  disk: SnapshotDisk | null;
  bootMode: BootMode;
  /** The units of the last NixOS boot (kept when its worker is gone). */
  lastUnits: NixosUnits | null;
  /** The emulated link in front of its sshd (with the `link` option). */
  link: LinkRelay | null;
}

interface RequestContext {
  method: string;
  path: string; // relative to /v1, no query
  query: URLSearchParams;
  body: string;
  template: string | null;
  params: Record<string, number>;
}

interface Answer {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** RFC 1123 host name: dot-separated labels of letters, digits and dashes. */
export function isHostname(name: string): boolean {
  if (name.length === 0 || name.length > 253) return false;
  return name.split('.').every((l) => /^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/.test(l));
}

const DEFAULT_ERROR_CODES: Record<number, string> = {
  400: 'invalid_input',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  409: 'conflict',
  412: 'resource_unavailable',
  422: 'invalid_input',
  423: 'locked',
  429: 'rate_limit_exceeded',
  500: 'server_error',
  502: 'server_error',
  503: 'unavailable',
  504: 'timeout',
};

/** Addresses (address:port) held by any fake cloud of this process. */
const addressesInUse = new Set<string>();
/** Lock files shared by every process on this machine, so that parallel test runs never share an address. */
const LOCK_DIR = join(tmpdir(), 'fake-hcloud-addresses');

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes address:port for this process; false when another live process holds it. */
function lockAddress(key: string): boolean {
  if (addressesInUse.has(key)) return false;
  mkdirSync(LOCK_DIR, { recursive: true, mode: 0o1777 });
  const file = join(LOCK_DIR, key.replace(':', '_'));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(file, String(process.pid), { flag: 'wx' });
      addressesInUse.add(key);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      let holder = NaN;
      try {
        holder = Number(readFileSync(file, 'utf8'));
      } catch {
        continue; // released meanwhile
      }
      if (Number.isInteger(holder) && holder > 0 && pidAlive(holder)) return false;
      rmSync(file, { force: true }); // left by a dead process
    }
  }
  return false;
}

function unlockAddress(key: string): void {
  if (!addressesInUse.delete(key)) return;
  const file = join(LOCK_DIR, key.replace(':', '_'));
  try {
    if (readFileSync(file, 'utf8') === String(process.pid)) rmSync(file, { force: true });
  } catch {
    // already gone
  }
}
/** Every running fake cloud, so that leftover sshds die with the process. */
const liveClouds = new Set<FakeCloud>();
let exitHooksInstalled = false;

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  process.on('exit', () => {
    for (const c of liveClouds) c.killAllSync();
    // Also the disks of workers being stopped (no longer a server's current worker).
    releaseAllDisksSync();
    for (const key of [...addressesInUse]) unlockAddress(key);
  });
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    const handler = () => {
      for (const c of liveClouds) c.killAllSync();
      releaseAllDisksSync();
      // Keep the default behaviour (die by the signal) unless someone else handles it.
      if (process.listenerCount(sig) === 1) {
        process.off(sig, handler);
        process.kill(process.pid, sig);
      }
    };
    process.on(sig, handler);
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Route {
  method: string;
  template: string;
  re: RegExp;
  names: string[];
  handler: (ctx: RequestContext) => Answer | Promise<Answer>;
}

export class FakeCloud {
  readonly url: string;
  readonly requests: { method: string; path: string; status: number }[] = [];
  /** Requests to the fake metadata service (path below /hetzner/v1; status 0: dropped). */
  readonly metadataRequests: { server: number; path: string; status: number }[] = [];
  readonly schemaErrors: string[] = [];

  private readonly opts: Required<Omit<FakeCloudOptions, 'rateLimit' | 'serverLimit' | 'log' | 'nixosWorker' | 'link' | 'nixRoot'>> & {
    serverLimit: number;
    nixRoot: string | undefined;
    link: LinkProfile | undefined;
    log: (line: string) => void;
    nixosWorker: Required<NonNullable<FakeCloudOptions['nixosWorker']>>;
  };
  private readonly http: HttpServer;
  private readonly serversById = new Map<number, ServerRecord>();
  private readonly actions = new Map<number, Action>();
  private readonly images: Image[] = systemImages();
  private readonly sshKeys = new Map<number, SshKey>();
  private readonly snapshotDisks = new Map<number, SnapshotDisk>();
  /** Ids of the images whose servers boot as NixOS workers. */
  private readonly nixosImages = new Set<number>();
  /** Stock images without Nix (`addImage({ worker: 'stock' })`): cloud-init boots, runcmd in cloud-final's environment. */
  private readonly stockImages = new Set<number>();
  /** NixOS worker images built before the store unit (`addImage({ storeUnit: false })`). */
  private readonly nixosImagesWithoutStore = new Set<number>();
  private readonly metadataFaults: (MetadataFault & { left: number })[] = [];
  private userDataEdit: ((userData: string) => string) | null = null;
  private nextSshKeyId = 9_000_001;
  private readonly faults: (Fault & { left: number })[] = [];
  /** Commands whose actions are held running (`holdActions`), with how each would have ended. */
  private readonly actionHolds = new Map<string, (() => void)[]>();
  private readonly behaviours: ServerBehaviour[] = [];
  private readonly routes: Route[] = [];
  private readonly globalTimers = new Set<NodeJS.Timeout>();
  private nextServerId = 70_000_001;
  private nextActionId = 5_000_000_001;
  private nextImageId = 300_000_001;
  private nextAddressOffset = 0;
  private stopping = false;
  private readonly bucket: { limit: number; refill: number; tokens: number; at: number };
  private readonly volumeStore: VolumeStore;

  private constructor(opts: FakeCloudOptions, http: HttpServer, url: string) {
    this.opts = {
      token: opts.token,
      dataDir: resolve(opts.dataDir),
      host: opts.host ?? '127.0.0.1',
      realServers: opts.realServers ?? true,
      sshPort: opts.sshPort ?? 22,
      maxSessions: opts.maxSessions ?? 64,
      firstAddress: opts.firstAddress ?? 10,
      bootDelayMs: opts.bootDelayMs ?? 1000,
      readyDelayMs: opts.readyDelayMs ?? 500,
      deleteDelayMs: opts.deleteDelayMs ?? 200,
      validateResponses: opts.validateResponses ?? true,
      apiDate: opts.apiDate ?? new Date(),
      serverLimit: opts.serverLimit ?? Number.POSITIVE_INFINITY,
      link: opts.link,
      nixRoot: opts.nixRoot,
      logRequests: opts.logRequests ?? false,
      log: opts.log ?? ((line: string) => process.stderr.write(`fake-hcloud: ${line}\n`)),
      nixosWorker: {
        fetchAttempts: opts.nixosWorker?.fetchAttempts ?? 10,
        swapMib: opts.nixosWorker?.swapMib ?? 32,
        imageMib: opts.nixosWorker?.imageMib ?? 64,
        diskMib: opts.nixosWorker?.diskMib ?? 256,
      },
    };
    const limit = opts.rateLimit?.limit ?? 3600;
    this.bucket = { limit, refill: opts.rateLimit?.refillPerSecond ?? 1, tokens: limit, at: Date.now() };
    this.http = http;
    this.url = url;
    this.volumeStore = new VolumeStore(join(this.opts.dataDir, 'volumes'));
    this.defineRoutes();
  }

  static async start(opts: FakeCloudOptions): Promise<FakeCloud> {
    const dataDir = resolve(opts.dataDir);
    for (const p of ['/nix', '/run', '/etc', '/mnt']) {
      if (dataDir === p || dataDir.startsWith(`${p}/`)) {
        throw new Error(`dataDir must not be under ${p}: the servers mount their own ${p}`);
      }
    }
    const first = opts.firstAddress ?? 10;
    if (!Number.isInteger(first) || first < 2 || first > 254) throw new Error('firstAddress must be in 2..254');
    mkdirSync(join(dataDir, 'servers'), { recursive: true });
    // Each server bind-mounts its own store at /nix, which needs the mount point. A fresh machine
    // with Debian's nix-bin has none until its first Nix command (which makes the same folder).
    mkdirSync('/nix', { recursive: true });
    // Each server has a private tmpfs at /mnt, for the volumes attached to it (server-namespace.ts).
    mkdirSync('/mnt', { recursive: true });
    let cloud: FakeCloud | null = null;
    const http = createServer((req, res) => {
      if (cloud) void cloud.handle(req, res);
      else res.destroy();
    });
    http.keepAliveTimeout = 5000;
    await new Promise<void>((resolveListen, reject) => {
      http.once('error', reject);
      http.listen(0, opts.host ?? '127.0.0.1', () => resolveListen());
    });
    const addr = http.address();
    if (addr === null || typeof addr === 'string') throw new Error('no address');
    const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    cloud = new FakeCloud(opts, http, `http://${host}:${addr.port}/v1`);
    liveClouds.add(cloud);
    installExitHooks();
    return cloud;
  }

  // ---------------------------------------------------------------- control

  inject(fault: Fault): void {
    this.faults.push({ ...fault, left: fault.times ?? 1 });
  }

  /** A fault on the metadata service (`/metadata/<id>/hetzner/v1/...`), e.g. a 404 or garbage user data. */
  injectMetadata(fault: MetadataFault): void {
    this.metadataFaults.push({ ...fault, left: fault.times ?? 1 });
  }

  /** Base URL of the fake metadata service for one server: append e.g. "/userdata". */
  metadataBase(serverId: number): string {
    return `${this.url.replace(/\/v1$/, '')}/metadata/${serverId}/hetzner/v1`;
  }

  /**
   * A file as the running server sees it, read inside its mount namespace (e.g. its private
   * /etc/ssh); null when the server does not run or the file cannot be read.
   */
  async readServerFile(id: number, path: string): Promise<string | null> {
    return (await this.serversById.get(id)?.worker?.readFile(path)) ?? null;
  }

  /** The next `count` (default 1) created servers behave so. */
  behaveNext(behaviour: ServerBehaviour, count = 1): void {
    for (let i = 0; i < count; i++) this.behaviours.push(behaviour);
  }

  /**
   * The user data of servers created from now on goes through `edit` (null: as sent), e.g. a
   * test takes out a line of the daemon's cloud-config to show what that line guards against.
   */
  editUserData(edit: ((userData: string) => string) | null): void {
    this.userDataEdit = edit;
  }

  /** The operations (method and path template of openapi.json) the fake answers. */
  servedOperations(): { method: string; template: string }[] {
    return this.routes.map(({ method, template }) => ({ method, template }));
  }

  servers(): FakeServerInfo[] {
    return [...this.serversById.values()].map((s) => this.info(s));
  }

  liveServers(): FakeServerInfo[] {
    return this.servers().filter((s) => !s.deleted);
  }

  /** The project's ssh keys, as the API lists them. */
  listSshKeys(): SshKey[] {
    return [...this.sshKeys.values()].map((k) => ({ ...k, labels: { ...k.labels } }));
  }

  /** The images (all types) as the API lists them. */
  allImages(): Image[] {
    return this.images.map((i) => ({ ...i, labels: { ...i.labels } }));
  }

  /** The disk a snapshot made by `create_image` remembers (undefined for other images). */
  snapshotDisk(imageId: number): SnapshotDisk | undefined {
    return this.snapshotDisks.get(imageId);
  }

  /** The volumes as the API lists them. */
  volumes(): Volume[] {
    return this.volumeStore.all().map((v) => this.volumeStore.json(v));
  }

  /**
   * The folder that stands for a volume's block device (`dataDir/volumes/<id>/`): what a server
   * with the volume attached sees at /mnt/HC_Volume_<id>. It exists from the volume's creation to
   * its deletion, across every server it is attached to.
   */
  volumeDir(id: number): string {
    return this.volumeStore.dir(id);
  }

  /**
   * Adds an image (a snapshot by default), e.g. a prepared NixOS image; returns it. With
   * `worker: 'nixos'` it is the NixOS worker image of nixos/worker.nix: its servers boot by that
   * image's units (fetch-keys.sh, zpool-expand.sh, store-volume.sh, sshd, ready-marker.sh), not
   * by cloud-init. `storeUnit: false`: an image built before nixos/worker.nix had the store unit.
   * With `worker: 'stock'` it is a stock image without Nix (as Ubuntu's): cloud-init boots it,
   * runcmd runs in cloud-final's environment and must install Nix itself.
   */
  addImage(img: {
    description: string;
    labels?: Labels;
    architecture?: 'x86' | 'arm';
    type?: 'snapshot' | 'backup' | 'app' | 'system';
    name?: string | null;
    diskSize?: number;
    imageSize?: number;
    worker?: 'nixos' | 'stock';
    storeUnit?: boolean;
  }): Image {
    const image: Image = {
      id: this.nextImageId++,
      name: img.name ?? null,
      description: img.description,
      type: img.type ?? 'snapshot',
      status: 'available',
      architecture: img.architecture ?? 'x86',
      os_flavor: 'unknown',
      os_version: null,
      rapid_deploy: false,
      disk_size: img.diskSize ?? 20,
      image_size: img.imageSize ?? 1.5,
      bound_to: null,
      created: iso(new Date()),
      created_from: { id: 1, name: 'image-builder' },
      deleted: null,
      deprecated: null,
      labels: img.labels ?? {},
      protection: { delete: false },
    };
    this.images.push(image);
    if (img.worker === 'nixos') this.nixosImages.add(image.id);
    if (img.worker === 'stock') this.stockImages.add(image.id);
    if (img.worker === 'nixos' && img.storeUnit === false) this.nixosImagesWithoutStore.add(image.id);
    return image;
  }

  /** Simulates a hung server or a network partition: every process in it is stopped (SIGSTOP). */
  freeze(id: number): number {
    return this.serversById.get(id)?.worker?.freeze() ?? 0;
  }

  /**
   * Simulates worker death: sshd and everything in the server are SIGKILLed
   * at once; the API still says "running". The promise resolves once every
   * process is gone (until then a connect may still be reset, not refused).
   */
  killSshd(id: number): Promise<void> {
    const s = this.serversById.get(id);
    if (!s?.worker) return Promise.resolve();
    return s.worker.stop();
  }

  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const t of this.globalTimers) clearTimeout(t);
    this.globalTimers.clear();
    await new Promise<void>((r) => {
      this.http.close(() => r());
      this.http.closeAllConnections();
    });
    const waits: Promise<void>[] = [];
    for (const s of this.serversById.values()) {
      for (const t of s.timers) clearTimeout(t);
      s.timers.clear();
      waits.push(this.stopLink(s));
      if (s.worker) waits.push(s.worker.stop());
      if (s.workerStopped) waits.push(s.workerStopped);
    }
    await Promise.all(waits);
    for (const s of this.serversById.values()) if (!s.deleted) unlockAddress(`${s.address}:${this.opts.sshPort}`);
    liveClouds.delete(this);
    rmSync(join(this.opts.dataDir, 'servers'), { recursive: true, force: true });
    this.volumeStore.removeAll();
  }

  /** Synchronous last-resort cleanup (process exit): kills every server, detaches their disks. */
  killAllSync(): void {
    for (const s of this.serversById.values()) s.worker?.killSync();
  }

  // ------------------------------------------------------------- internals

  private later(s: ServerRecord | null, ms: number, fn: () => void): void {
    const set = s ? s.timers : this.globalTimers;
    const t = setTimeout(() => {
      set.delete(t);
      if (!this.stopping) fn();
    }, ms);
    t.unref();
    set.add(t);
  }

  private info(s: ServerRecord): FakeServerInfo {
    return {
      id: s.id,
      name: s.name,
      labels: { ...s.labels },
      status: s.status,
      address: s.address,
      deleted: s.deleted,
      storeDir: join(s.dir, 'nix'),
      dir: s.dir,
      userData: s.userData,
      serverType: s.type.name,
      location: s.location.name,
      image: s.image.name ?? String(s.image.id),
      createdAt: s.createdAt,
      behaviour: s.behaviour,
      sshdRunning: s.worker?.listening ?? false,
      linkBytes: s.link ? { ...s.link.bytes } : null,
      cloudInitDone: s.worker?.cloudInitDone ?? false,
      rescueEnabled: s.rescueKeys !== null,
      inRescue: s.inRescue,
      diskFile: join(s.dir, 'disk'),
      disk: s.disk,
      bootMode: s.bootMode,
      units: s.worker?.units ? { ...s.worker.units } : s.lastUnits ? { ...s.lastUnits } : null,
      workerDisk: s.bootMode === 'nixos' ? join(s.dir, 'worker-disk.img') : null,
      loopDevice: s.worker?.loopDevice ?? null,
      metadataUrl: `${this.metadataBase(s.id)}/userdata`,
    };
  }

  private serverJson(s: ServerRecord): ApiServer {
    const lastOctet = s.address.split('.')[3] ?? '0';
    return {
      id: s.id,
      name: s.name,
      status: s.status,
      created: iso(s.createdAt),
      public_net: {
        ipv4: s.ipv4Enabled
          ? {
              id: 1_000_000 + (s.id % 1_000_000),
              ip: s.address,
              blocked: false,
              dns_ptr: `static.${lastOctet}.0.0.127.clients.your-server.de`,
            }
          : null,
        ipv6: s.ipv6,
        floating_ips: [],
        firewalls: [],
      },
      private_net: [],
      server_type: s.type,
      // eslint-disable-next-line @typescript-eslint/no-deprecated -- the fake serves the API of before too; send() leaves it out after its removal date
      datacenter: s.datacenter,
      location: s.location,
      image: s.image,
      iso: null,
      rescue_enabled: s.rescueKeys !== null || s.inRescue,
      locked: false,
      backup_window: null,
      outgoing_traffic: 0,
      ingoing_traffic: 0,
      included_traffic: includedTraffic(s.type, s.location.name),
      protection: { delete: false, rebuild: false },
      labels: { ...s.labels },
      volumes: this.volumeStore.attachedTo(s.id),
      load_balancers: [],
      primary_disk_size: s.type.disk,
      placement_group: null,
    };
  }

  private newAction(command: string, serverId: number): Action {
    return this.newResourceAction(command, [{ id: serverId, type: 'server' }]);
  }

  /** An action about these resources, listed among the actions of each server and volume of them. */
  private newResourceAction(command: string, resources: Action['resources']): Action {
    const action: Action = {
      id: this.nextActionId++,
      command,
      status: 'running',
      progress: 0,
      started: iso(new Date()),
      finished: null,
      resources: resources.map((r) => ({ ...r })),
      error: null,
    };
    this.actions.set(action.id, action);
    for (const r of resources) {
      if (r.type === 'server') this.serversById.get(r.id)?.actionIds.push(action.id);
      if (r.type === 'volume')
        this.volumeStore
          .all()
          .find((v) => v.id === r.id)
          ?.actionIds.push(action.id);
    }
    return action;
  }

  /**
   * Keeps every action of this command running until the returned function is called (then they
   * end as they would have): for tests of what holds while an action runs, without racing its timer.
   */
  holdActions(command: string): () => void {
    const held: (() => void)[] = [];
    this.actionHolds.set(command, held);
    return () => {
      if (this.actionHolds.get(command) === held) this.actionHolds.delete(command);
      for (const finish of held) finish();
    };
  }

  /** True when actions of `command` are held: then `later` runs at the release instead. */
  private held(command: string, later: () => void): boolean {
    const held = this.actionHolds.get(command);
    held?.push(later);
    return held !== undefined;
  }

  private finishAction(id: number, error: { code: string; message: string } | null = null): void {
    const a = this.actions.get(id);
    if (!a || a.status !== 'running') return;
    if (this.held(a.command, () => this.finishAction(id, error))) return;
    a.status = error ? 'error' : 'success';
    a.error = error;
    a.progress = 100;
    a.finished = iso(new Date());
    this.volumeStore.unlock(id);
  }

  private async allocateAddress(): Promise<string | null> {
    const first = this.opts.firstAddress;
    const span = 255 - first;
    const taken = new Set([...this.serversById.values()].filter((s) => !s.deleted).map((s) => s.address));
    for (let i = 0; i < span; i++) {
      const offset = (this.nextAddressOffset + i) % span;
      const address = `127.0.0.${first + offset}`;
      const key = `${address}:${this.opts.sshPort}`;
      if (taken.has(address)) continue;
      // Addresses of API-only servers are just numbers; real ones are locked machine-wide.
      if (!this.opts.realServers) {
        this.nextAddressOffset = (offset + 1) % span;
        return address;
      }
      if (!lockAddress(key)) continue;
      if (!(await this.portFree(address))) {
        unlockAddress(key);
        this.opts.log(`${key} is in use (another sshd listening on *:${this.opts.sshPort}?): address skipped`);
        continue;
      }
      this.nextAddressOffset = (offset + 1) % span;
      return address;
    }
    return null;
  }

  private portFree(address: string): Promise<boolean> {
    return new Promise((resolveFree) => {
      const probe = createTcpServer();
      probe.once('error', () => resolveFree(false));
      probe.listen({ host: address, port: this.opts.sshPort, exclusive: true }, () => {
        probe.close(() => resolveFree(true));
      });
    });
  }

  // ------------------------------------------------------------------ HTTP

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = Date.now();
    const url = new URL(req.url ?? '/', 'http://fake');
    const method = (req.method ?? 'GET').toUpperCase();
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString('utf8');
    const meta = /^\/metadata\/(\d+)\/hetzner\/v1(\/.*)$/.exec(url.pathname);
    if (meta) {
      if (this.stopping) res.destroy();
      else this.handleMetadata(req, res, Number(meta[1]), meta[2] as string);
      return;
    }
    const inApi = url.pathname === '/v1' || url.pathname.startsWith('/v1/');
    const path = inApi ? url.pathname.slice(3) || '/' : url.pathname;
    const ctx: RequestContext = { method, path, query: url.searchParams, body, template: null, params: {} };
    const route = inApi ? this.match(method, path, ctx) : null;

    const record = (status: number) => {
      this.requests.push({ method, path, status });
      if (this.opts.logRequests) {
        const q = url.search ? url.search : '';
        this.opts.log(`${method} /v1${path}${q} -> ${status === 0 ? 'network error' : status} (${Date.now() - started} ms)`);
      }
    };

    const fault = inApi ? this.takeFault(method, path) : null;
    if (fault?.delayMs) await sleep(fault.delayMs);
    if (this.stopping) {
      res.destroy();
      return;
    }
    if (fault && !fault.afterHandling && this.answerWithFault(fault, req, res, ctx, record)) return;

    let answer: Answer;
    try {
      if (!inApi) throw new ApiError(404, 'not_found', `${path} not found`);
      if (req.headers.authorization !== `Bearer ${this.opts.token}`) {
        throw new ApiError(401, 'unauthorized', 'unable to authenticate');
      }
      if (!this.takeToken()) throw new ApiError(429, 'rate_limit_exceeded', 'limit of requests per hour reached');
      if (!route) throw new ApiError(404, 'not_found', `${method} /v1${path} not found`);
      answer = await route.handler(ctx);
    } catch (e) {
      if (!(e instanceof ApiError)) {
        this.opts.log(`internal error on ${method} ${path}: ${(e as Error).stack ?? String(e)}`);
      }
      const err = e instanceof ApiError ? e : new ApiError(500, 'server_error', 'internal server error');
      answer = { status: err.status, body: { error: { code: err.code, message: err.message, details: err.details } } };
    }

    if (fault?.afterHandling && this.answerWithFault(fault, req, res, ctx, record)) return;
    this.send(res, ctx, answer, fault?.headers ?? {}, record);
  }

  private match(method: string, path: string, ctx: RequestContext): Route | null {
    for (const r of this.routes) {
      if (r.method !== method) continue;
      const m = r.re.exec(path);
      if (!m) continue;
      ctx.template = r.template;
      r.names.forEach((n, i) => (ctx.params[n] = Number(m[i + 1])));
      return r;
    }
    return null;
  }

  private takeFault(method: string, path: string): Fault | null {
    for (const f of this.faults) {
      if (f.left <= 0) continue;
      if (f.method && f.method.toUpperCase() !== method) continue;
      if (typeof f.path === 'string' ? f.path !== path : !f.path.test(path)) continue;
      f.left--;
      return f;
    }
    return null;
  }

  private refillBucket(): void {
    const now = Date.now();
    const b = this.bucket;
    b.tokens = Math.min(b.limit, b.tokens + ((now - b.at) / 1000) * b.refill);
    b.at = now;
  }

  private takeToken(): boolean {
    this.refillBucket();
    if (this.bucket.tokens < 1) return false;
    this.bucket.tokens -= 1;
    return true;
  }

  private rateHeaders(): Record<string, string> {
    this.refillBucket();
    const b = this.bucket;
    const resetIn = b.refill > 0 ? Math.ceil((b.limit - b.tokens) / b.refill) : 0;
    return {
      'RateLimit-Limit': String(b.limit),
      'RateLimit-Remaining': String(Math.floor(b.tokens)),
      'RateLimit-Reset': String(Math.floor(Date.now() / 1000) + resetIn),
    };
  }

  /** Answers with the fault (a dropped connection or an error) when it has one; false when it only delays. */
  private answerWithFault(
    fault: Fault,
    req: IncomingMessage,
    res: ServerResponse,
    ctx: RequestContext,
    record: (s: number) => void,
  ): boolean {
    if (fault.networkError) {
      record(0);
      req.socket.destroy();
      return true;
    }
    if (fault.status !== undefined) {
      this.sendFault(res, ctx, fault, record);
      return true;
    }
    return false;
  }

  private sendFault(res: ServerResponse, ctx: RequestContext, fault: Fault, record: (s: number) => void): void {
    const status = fault.status ?? 500;
    const body = {
      error: {
        code: fault.code ?? DEFAULT_ERROR_CODES[status] ?? (status >= 500 ? 'server_error' : 'invalid_input'),
        message: fault.message ?? `injected ${status}`,
        details: fault.details === undefined ? null : fault.details,
      },
    };
    this.send(res, ctx, { status, body }, fault.headers ?? {}, record);
  }

  private send(
    res: ServerResponse,
    ctx: RequestContext,
    answer: Answer,
    extraHeaders: Record<string, string>,
    record: (s: number) => void,
  ): void {
    // The API of the fake's day: what it no longer sends is left out.
    const body =
      ctx.template === null || answer.status === 204
        ? answer.body
        : withoutRemoved(ctx.method, ctx.template, answer.status, answer.body, this.opts.apiDate);
    if (this.opts.validateResponses) {
      const problem =
        ctx.template !== null
          ? checkResponse(ctx.method, ctx.template, answer.status, answer.status === 204 ? undefined : body, this.opts.apiDate)
          : checkSchema('error_response', body, this.opts.apiDate);
      if (problem !== null) {
        this.schemaErrors.push(problem);
        this.opts.log(`schema mismatch: ${problem}`);
      }
    }
    if (answer.status === 204) {
      record(204);
      res.writeHead(204, { ...this.rateHeaders(), ...(answer.headers ?? {}), ...extraHeaders });
      res.end();
      return;
    }
    const text = JSON.stringify(body);
    const headers: Record<string, string> = {
      'Content-Type': 'application/json',
      'Content-Length': String(Buffer.byteLength(text)),
      ...this.rateHeaders(),
      ...(answer.headers ?? {}),
      ...extraHeaders,
    };
    record(answer.status);
    res.writeHead(answer.status, headers);
    res.end(text);
  }

  // ---------------------------------------------------------------- routes

  private defineRoutes(): void {
    const add = (method: string, template: string, handler: Route['handler']) => {
      const names: string[] = [];
      const re = new RegExp(
        '^' +
          template.replace(/\{(\w+)\}/g, (_m, n: string) => {
            names.push(n);
            return '(\\d+)';
          }) +
          '$',
      );
      this.routes.push({ method, template, re, names, handler });
    };
    add('GET', '/server_types', (c) => this.listServerTypes(c));
    add('GET', '/server_types/{id}', (c) => ({ status: 200, body: { server_type: this.byId(SERVER_TYPES, c, 'server type') } }));
    add('GET', '/locations', (c) => this.listLocations(c));
    add('GET', '/locations/{id}', (c) => ({ status: 200, body: { location: this.byId(LOCATIONS, c, 'location') } }));
    add('GET', '/images', (c) => this.listImages(c));
    add('GET', '/images/{id}', (c) => ({ status: 200, body: { image: this.byId(this.images, c, 'image') } }));
    add('GET', '/servers', (c) => this.listServers(c));
    add('POST', '/servers', (c) => this.createServer(c));
    add('GET', '/servers/{id}', (c) => ({ status: 200, body: { server: this.serverJson(this.liveServer(c)) } }));
    add('DELETE', '/servers/{id}', (c) => this.deleteServer(c));
    add('GET', '/servers/{id}/actions', (c) => this.listServerActions(c));
    add('GET', '/servers/{id}/actions/{action_id}', (c) => this.getServerAction(c));
    add('GET', '/actions', (c) => this.getActions(c));
    add('DELETE', '/images/{id}', (c) => this.deleteImage(c));
    add('PUT', '/images/{id}', (c) => this.updateImage(c));
    add('GET', '/ssh_keys', (c) => this.listSshKeysRoute(c));
    add('POST', '/ssh_keys', (c) => this.createSshKey(c));
    add('GET', '/ssh_keys/{id}', (c) => ({ status: 200, body: { ssh_key: this.byId([...this.sshKeys.values()], c, 'SSH key') } }));
    add('PUT', '/ssh_keys/{id}', (c) => this.updateSshKey(c));
    add('DELETE', '/ssh_keys/{id}', (c) => {
      const key = this.byId([...this.sshKeys.values()], c, 'SSH key');
      this.sshKeys.delete(key.id);
      return { status: 204, body: null };
    });
    add('POST', '/servers/{id}/actions/enable_rescue', (c) => this.enableRescue(c));
    add('POST', '/servers/{id}/actions/poweron', (c) => this.powerOn(c));
    add('POST', '/servers/{id}/actions/shutdown', (c) => this.powerOff(c, 'shutdown_server'));
    add('POST', '/servers/{id}/actions/poweroff', (c) => this.powerOff(c, 'stop_server'));
    add('POST', '/servers/{id}/actions/create_image', (c) => this.createImage(c));
    add('GET', '/volumes', (c) => this.listVolumes(c));
    add('POST', '/volumes', (c) => this.createVolume(c));
    add('GET', '/volumes/{id}', (c) => ({
      status: 200,
      body: { volume: this.volumeStore.json(this.volumeStore.get(c.params['id'] ?? -1)) },
    }));
    add('PUT', '/volumes/{id}', (c) => this.updateVolume(c));
    add('DELETE', '/volumes/{id}', (c) => {
      this.volumeStore.delete(this.volumeStore.get(c.params['id'] ?? -1));
      return { status: 204, body: null };
    });
    add('GET', '/volumes/{id}/actions', (c) => {
      const v = this.volumeStore.get(c.params['id'] ?? -1);
      const p = this.paginate(
        v.actionIds.map((id) => this.actions.get(id)).filter((a): a is Action => a !== undefined),
        c.query,
      );
      return { status: 200, body: { actions: p.items, meta: p.meta } };
    });
    add('POST', '/volumes/{id}/actions/attach', (c) => this.attachVolume(c));
    add('POST', '/volumes/{id}/actions/detach', (c) => this.detachVolume(c));
    add('GET', '/pricing', () => ({ status: 200, body: { pricing: pricing() } }));
    add('GET', '/actions/{id}', (c) => {
      const a = this.actions.get(c.params['id'] ?? -1);
      if (!a) throw new ApiError(404, 'not_found', `action with ID '${c.params['id']}' not found`);
      return { status: 200, body: { action: a } };
    });
  }

  private byId<T extends { id: number }>(list: T[], c: RequestContext, what: string): T {
    const id = c.params['id'];
    const found = list.find((x) => x.id === id);
    if (!found) throw new ApiError(404, 'not_found', `${what} with ID '${id}' not found`);
    return found;
  }

  private liveServer(c: RequestContext): ServerRecord {
    const id = c.params['id'] ?? -1;
    const s = this.serversById.get(id);
    if (!s || s.deleted) throw new ApiError(404, 'not_found', `server with ID '${id}' not found`);
    return s;
  }

  private paginate<T>(items: T[], q: URLSearchParams): { items: T[]; meta: { pagination: Pagination } } {
    const num = (name: string, dflt: number): number => {
      const raw = q.get(name);
      if (raw === null || raw === '') return dflt;
      if (!/^\d+$/.test(raw) || Number(raw) < 1) {
        throw invalidInput(`invalid input in field '${name}'`, [{ name, messages: ['must be a positive integer'] }]);
      }
      return Number(raw);
    };
    const page = num('page', 1);
    const perPage = Math.min(50, num('per_page', 25));
    const total = items.length;
    const last = Math.max(1, Math.ceil(total / perPage));
    return {
      items: items.slice((page - 1) * perPage, page * perPage),
      meta: {
        pagination: {
          page,
          per_page: perPage,
          previous_page: page > 1 ? Math.min(page - 1, last) : null,
          next_page: page < last ? page + 1 : null,
          last_page: last,
          total_entries: total,
        },
      },
    };
  }

  private selector(q: URLSearchParams): ((labels: Labels) => boolean) | null {
    const raw = q.get('label_selector');
    if (raw === null) return null;
    try {
      const reqs = parseSelector(raw);
      return (labels) => matches(reqs, labels);
    } catch (e) {
      if (e instanceof SelectorError) {
        throw invalidInput(`label_selector: ${e.message}`, [{ name: 'label_selector', messages: [e.message] }]);
      }
      throw e;
    }
  }

  private sorter<T extends { id: number; name?: string | null; created?: string }>(
    q: URLSearchParams,
    allowed: string[],
  ): (a: T, b: T) => number {
    const keys = q.getAll('sort');
    for (const k of keys) {
      const [field, dir] = k.split(':');
      if (!field || !allowed.includes(field) || (dir !== undefined && dir !== 'asc' && dir !== 'desc')) {
        throw invalidInput(`invalid sort '${k}'`, [
          { name: 'sort', messages: [`must be one of ${allowed.join(', ')} with :asc or :desc`] },
        ]);
      }
    }
    const specs = [...keys, 'id:asc'].map((k) => {
      const [field = 'id', dir] = k.split(':');
      return { field, sign: dir === 'desc' ? -1 : 1 };
    });
    return (a, b) => {
      for (const { field, sign } of specs) {
        const va = field === 'id' ? a.id : field === 'name' ? (a.name ?? '') : (a.created ?? '');
        const vb = field === 'id' ? b.id : field === 'name' ? (b.name ?? '') : (b.created ?? '');
        if (va < vb) return -sign;
        if (va > vb) return sign;
      }
      return 0;
    };
  }

  private listServerTypes(c: RequestContext): Answer {
    const name = c.query.get('name');
    const items = SERVER_TYPES.filter((t) => name === null || t.name === name).sort((a, b) => a.id - b.id);
    const p = this.paginate(items, c.query);
    return { status: 200, body: { server_types: p.items, meta: p.meta } };
  }

  private listLocations(c: RequestContext): Answer {
    const name = c.query.get('name');
    const items = LOCATIONS.filter((l) => name === null || l.name === name).sort(this.sorter(c.query, ['id', 'name']));
    const p = this.paginate(items, c.query);
    return { status: 200, body: { locations: p.items, meta: p.meta } };
  }

  private listImages(c: RequestContext): Answer {
    const types = c.query.getAll('type');
    const statuses = c.query.getAll('status');
    const name = c.query.get('name');
    const arch = c.query.get('architecture');
    const sel = this.selector(c.query);
    const items = this.images
      .filter(
        (i) =>
          (types.length === 0 || types.includes(i.type)) &&
          (statuses.length === 0 || statuses.includes(i.status)) &&
          (name === null || i.name === name) &&
          (arch === null || i.architecture === arch) &&
          (sel === null || sel(i.labels)),
      )
      .sort(this.sorter(c.query, ['id', 'name', 'created']));
    const p = this.paginate(items, c.query);
    return { status: 200, body: { images: p.items, meta: p.meta } };
  }

  private listServers(c: RequestContext): Answer {
    const name = c.query.get('name');
    const statuses = c.query.getAll('status');
    const sel = this.selector(c.query);
    const items = [...this.serversById.values()]
      .filter(
        (s) =>
          !s.deleted &&
          (name === null || s.name === name) &&
          (statuses.length === 0 || statuses.includes(s.status)) &&
          (sel === null || sel(s.labels)),
      )
      .map((s) => this.serverJson(s))
      .sort(this.sorter(c.query, ['id', 'name', 'created']));
    const p = this.paginate(items, c.query);
    return { status: 200, body: { servers: p.items, meta: p.meta } };
  }

  private listServerActions(c: RequestContext): Answer {
    const s = this.liveServer(c);
    const statuses = c.query.getAll('status');
    const items = s.actionIds
      .map((id) => this.actions.get(id))
      .filter((a): a is Action => a !== undefined && (statuses.length === 0 || statuses.includes(a.status)));
    const p = this.paginate(items, c.query);
    return { status: 200, body: { actions: p.items, meta: p.meta } };
  }

  private getServerAction(c: RequestContext): Answer {
    const id = c.params['id'] ?? -1;
    const actionId = c.params['action_id'] ?? -1;
    const s = this.serversById.get(id);
    // The actions of a deleted server stay readable, so that a delete can be followed to its end.
    if (!s) throw new ApiError(404, 'not_found', `server with ID '${id}' not found`);
    const a = this.actions.get(actionId);
    if (!a || !s.actionIds.includes(actionId)) throw new ApiError(404, 'not_found', `action with ID '${actionId}' not found`);
    return { status: 200, body: { action: a } };
  }

  private getActions(c: RequestContext): Answer {
    const raw = c.query.getAll('id');
    if (raw.length === 0) {
      throw invalidInput('missing id: listing all actions is no longer supported', [{ name: 'id', messages: ['is required'] }]);
    }
    const ids = raw.map((r) => {
      if (!/^\d+$/.test(r)) throw invalidInput(`invalid id '${r}'`, [{ name: 'id', messages: ['must be an integer'] }]);
      return Number(r);
    });
    const found = ids.map((id) => this.actions.get(id)).filter((a): a is Action => a !== undefined);
    return { status: 200, body: { actions: found } };
  }

  // -------------------------------------------------------- create, delete

  private findByIdOrName<T extends { id: number; name?: string | null }>(list: T[], ref: unknown): T[] {
    if (typeof ref === 'number') return list.filter((x) => x.id === ref);
    if (typeof ref !== 'string') return [];
    if (/^\d+$/.test(ref)) {
      const byId = list.filter((x) => x.id === Number(ref));
      if (byId.length > 0) return byId;
    }
    return list.filter((x) => x.name === ref);
  }

  private async createServer(c: RequestContext): Promise<Answer> {
    const req = this.jsonBody(c) as Schemas['create_server_request'];

    if (!isHostname(req.name)) {
      throw invalidInput(`invalid input in field 'name'`, [{ name: 'name', messages: ['must be a valid hostname (RFC 1123)'] }]);
    }
    const type = this.findByIdOrName(SERVER_TYPES, req.server_type)[0];
    if (!type)
      throw invalidInput(`server type '${req.server_type}' not found`, [{ name: 'server_type', messages: ['server type not found'] }]);

    let location: Location | undefined;
    let datacenter: DataCenter | undefined;
    if (req.location !== undefined) {
      location = this.findByIdOrName(LOCATIONS, req.location)[0];
      if (!location) throw invalidInput(`location '${req.location}' not found`, [{ name: 'location', messages: ['location not found'] }]);
      /* eslint-disable @typescript-eslint/no-deprecated -- the fake accepts what the API accepts, deprecated or not */
    } else if (req.datacenter !== undefined) {
      datacenter = this.findByIdOrName(DATA_CENTERS, req.datacenter)[0];
      if (!datacenter)
        throw invalidInput(`datacenter '${req.datacenter}' not found`, [{ name: 'datacenter', messages: ['datacenter not found'] }]);
      location = datacenter.location;
      /* eslint-enable @typescript-eslint/no-deprecated */
    } else {
      const firstLoc = type.locations[0]?.name;
      location = LOCATIONS.find((l) => l.name === firstLoc);
    }
    if (!location) throw new ApiError(412, 'resource_unavailable', `server type ${type.name} is not available anywhere`);
    const loc = location;
    datacenter ??= DATA_CENTERS.find((d) => d.location.id === loc.id);
    if (!datacenter) throw new ApiError(500, 'server_error', 'no data center');

    const candidates = this.findByIdOrName(this.images, req.image).filter((i) => i.status === 'available');
    if (candidates.length === 0) throw invalidInput(`image '${req.image}' not found`, [{ name: 'image', messages: ['image not found'] }]);
    const image = candidates.find((i) => i.architecture === type.architecture);
    if (!image) {
      throw invalidInput(`image '${req.image}' does not match the architecture (${type.architecture}) of server type ${type.name}`, [
        { name: 'image', messages: ['image architecture does not match the server type'] },
      ]);
    }
    if (!type.locations.some((l) => l.name === loc.name)) {
      throw new ApiError(412, 'resource_unavailable', `server type ${type.name} is unavailable in location ${loc.name}`);
    }
    const labels = req.labels ?? {};
    const lp = labelProblems(labels);
    if (lp.length > 0) throw invalidInput(`invalid input in field 'labels'`, [{ name: 'labels', messages: lp }]);
    if (req.user_data !== undefined && Buffer.byteLength(req.user_data, 'utf8') > 32 * 1024) {
      throw invalidInput(`invalid input in field 'user_data'`, [{ name: 'user_data', messages: ['user_data must be at most 32 KiB'] }]);
    }
    // Volumes to attach at creation: each must exist, be free and be in the server's location.
    const volumes = (req.volumes ?? []).map((id) => {
      const v = this.volumeStore.all().find((x) => x.id === id);
      if (!v) throw invalidInput(`volume with ID '${id}' not found`, [{ name: 'volumes', messages: [`volume ${id} not found`] }]);
      return v;
    });
    if (new Set(volumes.map((v) => v.id)).size !== volumes.length) {
      throw invalidInput(`invalid input in field 'volumes'`, [{ name: 'volumes', messages: ['a volume is listed twice'] }]);
    }
    for (const v of volumes) this.volumeStore.checkAttach(v, { id: 0, location: loc });
    const live = [...this.serversById.values()].filter((s) => !s.deleted);
    if (live.some((s) => s.name === req.name)) {
      throw new ApiError(409, 'uniqueness_error', 'server name is already used', { fields: [{ name: 'name' }] });
    }
    if (live.length >= this.opts.serverLimit) {
      throw new ApiError(403, 'resource_limit_exceeded', 'server limit exceeded', { limits: [{ name: 'server_limit' }] });
    }
    const address = await this.allocateAddress();
    if (address === null) {
      throw new ApiError(403, 'resource_limit_exceeded', 'no loopback address left for another server', {
        limits: [{ name: 'server_limit' }],
      });
    }
    if (this.stopping) {
      unlockAddress(`${address}:${this.opts.sshPort}`);
      throw new ApiError(503, 'unavailable', 'shutting down');
    }

    const id = this.nextServerId++;
    const enableIpv4 = req.public_net?.enable_ipv4 ?? true;
    const enableIpv6 = req.public_net?.enable_ipv6 ?? true;
    const behaviour = this.behaviours.shift() ?? 'normal';
    const s: ServerRecord = {
      id,
      name: req.name,
      labels: { ...labels },
      status: 'initializing',
      createdAt: new Date(),
      type,
      image,
      location: loc,
      datacenter,
      address,
      ipv4Enabled: enableIpv4,
      ipv6: enableIpv6
        ? { id: 2_000_000 + (id % 1_000_000), ip: `2001:db8:${(id % 0xffff).toString(16)}::/64`, blocked: false, dns_ptr: [] }
        : null,
      userData: req.user_data === undefined ? null : (this.userDataEdit?.(req.user_data) ?? req.user_data),
      deleted: false,
      behaviour,
      dir: join(this.opts.dataDir, 'servers', String(id)),
      worker: null,
      workerStopped: null,
      timers: new Set(),
      actionIds: [],
      deleteActionId: null,
      rescueKeys: null,
      inRescue: false,
      disk: this.snapshotDisks.get(image.id) ?? null,
      bootMode: this.nixosImages.has(image.id) ? 'nixos' : this.stockImages.has(image.id) ? 'stock' : 'cloud-init',
      lastUnits: null,
      link: null,
    };
    this.serversById.set(id, s);
    if (this.opts.realServers) FakeServer.prepare(s.dir, s.userData);

    const create = this.newAction('create_server', id);
    const startAfterCreate = req.start_after_create ?? true;
    const next = startAfterCreate ? [this.newAction('start_server', id)] : [];
    // Attached at once, so that the server boots with them; each attach action ends with the create.
    const attaches = volumes.map((v) => {
      v.server = id;
      const a = this.newResourceAction('attach_volume', [
        { id, type: 'server' },
        { id: v.id, type: 'volume' },
      ]);
      v.lockedBy = a.id;
      return a;
    });
    next.push(...attaches);
    this.later(s, this.opts.bootDelayMs / 2, () => {
      for (const a of attaches) this.finishAction(a.id);
    });
    const rootPassword = (req.ssh_keys ?? []).length === 0 ? randomBytes(15).toString('base64url') : null;
    const response: Schemas['create_server_response'] = {
      server: this.serverJson(s),
      action: { ...create, resources: [...create.resources] },
      next_actions: next.map((a) => ({ ...a, resources: [...a.resources] })),
      root_password: rootPassword,
    };
    this.scheduleBoot(s, create.id, startAfterCreate ? (next[0]?.id ?? null) : null);
    return { status: 201, body: response };
  }

  private scheduleBoot(s: ServerRecord, createId: number, startId: number | null): void {
    const boot = this.opts.bootDelayMs;
    this.later(s, boot / 2, () => {
      if (startId !== null) s.status = 'starting';
      for (const id of [createId, startId]) {
        const a = id !== null ? this.actions.get(id) : undefined;
        if (a && a.status === 'running') a.progress = 50;
      }
    });
    if (s.behaviour === 'never-running' && startId !== null) return;
    this.later(s, boot, () => {
      if (s.behaviour === 'action-error') {
        s.status = 'off';
        this.finishAction(createId, { code: 'action_failed', message: 'server creation failed: no capacity on the host' });
        if (startId !== null) this.finishAction(startId, { code: 'action_failed', message: 'server could not be started' });
        return;
      }
      this.finishAction(createId);
      if (startId === null) {
        s.status = 'off';
        return;
      }
      s.status = 'running';
      this.finishAction(startId);
      if (this.opts.realServers) void this.bootWorker(s);
    });
  }

  private async bootWorker(s: ServerRecord): Promise<void> {
    if (s.rescueKeys !== null) return this.bootRescue(s);
    if (s.bootMode === 'nixos') return this.bootNixos(s);
    const config = parseUserData(s.userData);
    for (const p of config.problems) this.opts.log(`server ${s.id}: ${p}`);
    if (s.behaviour === 'no-sshd') return;
    if (config.hostKey === null && s.behaviour !== 'wrong-host-key') {
      this.opts.log(`server ${s.id}: no ssh_keys.ed25519_private in the user data: no sshd (host key unknowable)`);
      return;
    }
    const worker = new FakeServer({
      id: s.id,
      dir: s.dir,
      address: s.address,
      sshPort: this.opts.link ? this.opts.sshPort + LINK_INNER_PORT_OFFSET : this.opts.sshPort,
      config,
      wrongHostKey: s.behaviour === 'wrong-host-key',
      neverReady: s.behaviour === 'never-ready',
      readyDelayMs: this.opts.readyDelayMs,
      maxSessions: this.opts.maxSessions,
      log: this.opts.log,
      volumes: this.volumeMounts(s),
      stock: s.bootMode === 'stock',
      ...(this.opts.nixRoot === undefined ? {} : { nixRoot: this.opts.nixRoot }),
    });
    s.worker = worker;
    try {
      await worker.start();
      await this.startLink(s);
    } catch (e) {
      if (!s.deleted && s.status !== 'deleting' && !this.stopping) this.opts.log(`server ${s.id}: ${(e as Error).message}`);
    }
  }

  /**
   * With the `link` option: the relay on the server's ssh port, towards its sshd, once sshd
   * listens (before that, connections are refused as by a booting server).
   */
  private async startLink(s: ServerRecord): Promise<void> {
    const profile = this.opts.link;
    if (!profile || !s.worker?.listening || s.deleted || s.status === 'deleting' || this.stopping) return;
    s.link = await LinkRelay.start({
      listenHost: s.address,
      listenPort: this.opts.sshPort,
      targetHost: s.address,
      targetPort: this.opts.sshPort + LINK_INNER_PORT_OFFSET,
      profile,
    });
  }

  private stopLink(s: ServerRecord): Promise<void> {
    const link = s.link;
    s.link = null;
    return link ? link.stop() : Promise.resolve();
  }

  /**
   * Boots a server of the NixOS worker image: no cloud-init; the image's units run inside the
   * server's namespace (see NixosBoot in nixos-image.ts) and fetch-keys.sh reads the user data from
   * the fake metadata service.
   */
  private async bootNixos(s: ServerRecord): Promise<void> {
    if (s.behaviour === 'no-sshd') return;
    const n = this.opts.nixosWorker;
    const nixos: NixosBoot = {
      metadataUrl: `${this.metadataBase(s.id)}/userdata`,
      fetchAttempts: n.fetchAttempts,
      swapMib: n.swapMib,
      imageMib: n.imageMib,
      diskMib: n.diskMib,
      storeUnit: !this.nixosImagesWithoutStore.has(s.image.id),
    };
    const worker = new FakeServer({
      id: s.id,
      dir: s.dir,
      address: s.address,
      sshPort: this.opts.sshPort,
      config: parseUserData(null),
      wrongHostKey: s.behaviour === 'wrong-host-key',
      neverReady: s.behaviour === 'never-ready',
      readyDelayMs: this.opts.readyDelayMs,
      maxSessions: this.opts.maxSessions,
      log: this.opts.log,
      volumes: this.volumeMounts(s),
      nixos,
      ...(this.opts.nixRoot === undefined ? {} : { nixRoot: this.opts.nixRoot }),
    });
    s.worker = worker;
    s.lastUnits = worker.units;
    try {
      await worker.start();
    } catch (e) {
      if (!s.deleted && s.status !== 'deleting' && !this.stopping) this.opts.log(`server ${s.id}: ${(e as Error).message}`);
    }
  }

  // ------------------------------------------------------------ metadata

  /**
   * The fake metadata service. The real one (http://169.254.169.254/hetzner/v1/...) knows the
   * asking server by its address; here the server is in the path: /metadata/<id>/hetzner/v1/...
   * Plain text, no token, no rate limit; 404 for unknown or deleted servers and other paths.
   */
  private metadataAnswer(id: number, path: string): { status: number; body: string; type: string } {
    const s = this.serversById.get(id);
    const notFound = { status: 404, body: 'not found\n', type: 'text/plain' };
    if (!s || s.deleted) return notFound;
    const fields: Record<string, string> = {
      'availability-zone': s.datacenter.name,
      hostname: s.name,
      'instance-id': String(s.id),
      'public-ipv4': s.ipv4Enabled ? s.address : '',
      region: s.location.network_zone,
    };
    if (path === '/userdata') return { status: 200, body: s.userData ?? '', type: 'text/plain' };
    if (path === '/metadata') {
      const yaml = Object.entries(fields)
        .map(([k, v]) => `${k}: ${v === '' ? "''" : v}`)
        .join('\n');
      return { status: 200, body: `${yaml}\n`, type: 'text/yaml' };
    }
    const key = /^\/metadata\/([a-z0-9-]+)$/.exec(path)?.[1];
    if (key !== undefined && key in fields) return { status: 200, body: fields[key] ?? '', type: 'text/plain' };
    return notFound;
  }

  private handleMetadata(req: IncomingMessage, res: ServerResponse, id: number, path: string): void {
    const method = (req.method ?? 'GET').toUpperCase();
    const record = (status: number) => {
      this.metadataRequests.push({ server: id, path, status });
      if (this.opts.logRequests) this.opts.log(`metadata of server ${id}: ${method} ${path} -> ${status === 0 ? 'network error' : status}`);
    };
    const fault = this.metadataFaults.find(
      (f) =>
        f.left > 0 &&
        (f.server === undefined || f.server === id) &&
        (f.path === undefined || (typeof f.path === 'string' ? f.path === path : f.path.test(path))),
    );
    if (fault) fault.left--;
    if (fault?.networkError) {
      record(0);
      req.socket.destroy();
      return;
    }
    const answer = fault
      ? { status: fault.status ?? 200, body: fault.body ?? '', type: 'text/plain' }
      : method === 'GET' || method === 'HEAD'
        ? this.metadataAnswer(id, path)
        : { status: 405, body: 'method not allowed\n', type: 'text/plain' };
    record(answer.status);
    res.writeHead(answer.status, { 'Content-Type': answer.type, 'Content-Length': String(Buffer.byteLength(answer.body)) });
    res.end(method === 'HEAD' ? undefined : answer.body);
  }

  private deleteServer(c: RequestContext): Answer {
    const s = this.liveServer(c);
    if (s.deleteActionId !== null) {
      const existing = this.actions.get(s.deleteActionId);
      if (existing) return { status: 200, body: { action: existing } };
    }
    const action = this.newAction('delete_server', s.id);
    s.deleteActionId = action.id;
    s.status = 'deleting';
    for (const t of s.timers) clearTimeout(t);
    s.timers.clear();
    for (const id of s.actionIds) {
      const a = this.actions.get(id);
      if (a && a.id !== action.id && a.status === 'running') {
        this.finishAction(a.id, { code: 'action_failed', message: 'server was deleted' });
      }
    }
    s.workerStopped = Promise.all([this.stopLink(s), s.worker ? s.worker.stop() : (s.workerStopped ?? Promise.resolve())]).then(
      () => undefined,
    );
    const removed = (): void => {
      void (s.workerStopped ?? Promise.resolve()).then(() => {
        s.deleted = true;
        // As on Hetzner, deleting a server detaches its volumes; their data stays.
        for (const v of this.volumeStore.all()) if (v.server === s.id) v.server = null;
        this.finishAction(action.id);
        unlockAddress(`${s.address}:${this.opts.sshPort}`);
      });
    };
    // A held delete keeps the server in "deleting" until released.
    this.later(s, this.opts.deleteDelayMs, () => {
      if (!this.held('delete_server', removed)) removed();
    });
    return { status: 200, body: { action: { ...action, resources: [...action.resources] } } };
  }

  // -------------------------------------------- ssh keys, rescue, power, images

  /** Parses and schema-checks a JSON request body (an absent body counts as `{}`). */
  private jsonBody(c: RequestContext): Record<string, unknown> {
    let body: unknown = {};
    if (c.body.trim() !== '') {
      try {
        body = JSON.parse(c.body);
      } catch (e) {
        throw new ApiError(400, 'json_error', `invalid JSON: ${(e as Error).message}`);
      }
    }
    if (!isRecord(body)) throw new ApiError(400, 'json_error', 'the request body must be a JSON object');
    const problems = c.template === null ? [] : checkRequestBody(c.method, c.template, body, this.opts.apiDate);
    if (problems.length > 0) {
      const fields = new Map<string, string[]>();
      for (const p of problems) fields.set(p.name, [...(fields.get(p.name) ?? []), p.message]);
      throw invalidInput(
        `invalid input in fields '${[...fields.keys()].join("', '")}'`,
        [...fields].map(([name, messages]) => ({ name, messages })),
      );
    }
    return body;
  }

  private listSshKeysRoute(c: RequestContext): Answer {
    const name = c.query.get('name');
    const fingerprint = c.query.get('fingerprint');
    const sel = this.selector(c.query);
    const items = [...this.sshKeys.values()]
      .filter(
        (k) =>
          (name === null || k.name === name) && (fingerprint === null || k.fingerprint === fingerprint) && (sel === null || sel(k.labels)),
      )
      .sort(this.sorter(c.query, ['id', 'name']));
    const p = this.paginate(items, c.query);
    return { status: 200, body: { ssh_keys: p.items, meta: p.meta } };
  }

  /** `PUT /ssh_keys/{id}`: name and/or labels (labels replaced as a whole, as the API does). */
  private updateSshKey(c: RequestContext): Answer {
    const key = this.byId([...this.sshKeys.values()], c, 'SSH key');
    const req = this.jsonBody(c) as Schemas['replace_ssh_key_request'];
    if (req.labels !== undefined) {
      const lp = labelProblems(req.labels);
      if (lp.length > 0) throw invalidInput(`invalid input in field 'labels'`, [{ name: 'labels', messages: lp }]);
    }
    if (req.name !== undefined && req.name !== key.name && [...this.sshKeys.values()].some((k) => k.name === req.name)) {
      throw new ApiError(409, 'uniqueness_error', 'SSH key with the same name already exists', { fields: [{ name: 'name' }] });
    }
    if (req.name !== undefined) key.name = req.name;
    if (req.labels !== undefined) key.labels = { ...req.labels };
    return { status: 200, body: { ssh_key: key } };
  }

  private createSshKey(c: RequestContext): Answer {
    const req = this.jsonBody(c) as Schemas['create_ssh_key_request'];
    const parsed = ssh2.utils.parseKey(req.public_key);
    const key = Array.isArray(parsed) ? (parsed[0] as ParsedKey | undefined) : parsed;
    if (key === undefined || key instanceof Error || key.isPrivateKey()) {
      throw invalidInput(`invalid input in field 'public_key'`, [{ name: 'public_key', messages: ['is not a valid SSH public key'] }]);
    }
    const labels = req.labels ?? {};
    const lp = labelProblems(labels);
    if (lp.length > 0) throw invalidInput(`invalid input in field 'labels'`, [{ name: 'labels', messages: lp }]);
    const fingerprint = (createHash('md5').update(key.getPublicSSH()).digest('hex').match(/../g) ?? []).join(':');
    for (const k of this.sshKeys.values()) {
      if (k.name === req.name)
        throw new ApiError(409, 'uniqueness_error', 'SSH key with the same name already exists', { fields: [{ name: 'name' }] });
      if (k.fingerprint === fingerprint) {
        throw new ApiError(409, 'uniqueness_error', 'SSH key with the same fingerprint already exists', {
          fields: [{ name: 'public_key' }],
        });
      }
    }
    const sshKey: SshKey = {
      id: this.nextSshKeyId++,
      name: req.name,
      fingerprint,
      public_key: req.public_key.trim(),
      labels: { ...labels },
      created: iso(new Date()),
    };
    this.sshKeys.set(sshKey.id, sshKey);
    return { status: 201, body: { ssh_key: sshKey } };
  }

  /** Rescue mode for the next boot; the keys are read now, as the real API injects them from the ids given. */
  private enableRescue(c: RequestContext): Answer {
    const s = this.liveServer(c);
    const req = this.jsonBody(c) as Schemas['enable_rescue_mode_for_server_request'];
    const keys: string[] = [];
    for (const id of req.ssh_keys ?? []) {
      const k = this.sshKeys.get(id);
      if (!k) throw invalidInput(`SSH key with ID '${id}' not found`, [{ name: 'ssh_keys', messages: [`SSH key ${id} not found`] }]);
      keys.push(k.public_key);
    }
    const action = this.newAction('enable_rescue', s.id);
    s.rescueKeys = keys;
    this.later(s, Math.min(200, this.opts.bootDelayMs / 4), () => this.finishAction(action.id));
    return {
      status: 201,
      body: { action: { ...action, resources: [...action.resources] }, root_password: randomBytes(15).toString('base64url') },
    };
  }

  private powerOn(c: RequestContext): Answer {
    const s = this.liveServer(c);
    const action = this.newAction('start_server', s.id);
    if (s.status === 'running' || s.status === 'starting') {
      this.finishAction(action.id);
    } else if (s.status === 'off') {
      s.status = 'starting';
      this.later(s, this.opts.bootDelayMs, () => {
        s.status = 'running';
        this.finishAction(action.id);
        if (this.opts.realServers) void this.bootWorker(s);
        else if (s.rescueKeys !== null) {
          s.rescueKeys = null;
          s.inRescue = true;
        }
      });
    } else {
      this.finishAction(action.id, { code: 'action_failed', message: `server is ${s.status}` });
    }
    return { status: 201, body: { action: { ...action, resources: [...action.resources] } } };
  }

  /** `shutdown` (ACPI; every fake OS honours it) and `poweroff`: sshd and everything in the server die. */
  private powerOff(c: RequestContext, command: 'shutdown_server' | 'stop_server'): Answer {
    const s = this.liveServer(c);
    const action = this.newAction(command, s.id);
    if (s.status === 'off' || (command === 'shutdown_server' && s.behaviour === 'ignores-shutdown')) {
      this.finishAction(action.id);
    } else {
      s.status = 'stopping';
      const worker = s.worker;
      s.worker = null;
      const stopped = worker ? worker.stop() : Promise.resolve();
      s.workerStopped = stopped;
      this.later(s, Math.min(200, this.opts.deleteDelayMs), () => {
        void stopped.then(() => {
          if (s.deleted || s.status === 'deleting') return;
          s.status = 'off';
          s.inRescue = false;
          this.finishAction(action.id);
        });
      });
    }
    return { status: 201, body: { action: { ...action, resources: [...action.resources] } } };
  }

  /**
   * A snapshot of the server's disk. The fake's disk is `DIR/disk`, the file the rescue system
   * has at /dev/sda; the snapshot remembers its sha256 and size (servers created from the
   * snapshot report them as `disk`). A server whose disk was never written keeps the disk of
   * the snapshot it was created from, if any.
   */
  private createImage(c: RequestContext): Answer {
    const s = this.liveServer(c);
    const req = this.jsonBody(c) as Schemas['create_image_from_server_request'];
    const labels = req.labels ?? {};
    const lp = labelProblems(labels);
    if (lp.length > 0) throw invalidInput(`invalid input in field 'labels'`, [{ name: 'labels', messages: lp }]);
    const diskFile = join(s.dir, 'disk');
    let disk = s.disk;
    if (existsSync(diskFile)) {
      const bytes = readFileSync(diskFile);
      disk = { sha256: createHash('sha256').update(bytes).digest('hex'), bytes: bytes.length };
    }
    const created = new Date();
    const image: Image = {
      id: this.nextImageId++,
      name: null,
      description: req.description ?? `${s.name}-${iso(created)}`,
      type: req.type ?? 'snapshot',
      status: 'creating',
      architecture: s.type.architecture,
      os_flavor: s.image.os_flavor,
      os_version: s.image.os_version,
      rapid_deploy: false,
      disk_size: s.type.disk,
      image_size: null,
      bound_to: req.type === 'backup' ? s.id : null,
      created: iso(created),
      created_from: { id: s.id, name: s.name },
      deleted: null,
      deprecated: null,
      labels: { ...labels },
      protection: { delete: false },
    };
    this.images.push(image);
    if (disk !== null) this.snapshotDisks.set(image.id, disk);
    // A snapshot of a NixOS worker is a NixOS worker image, unless the rescue system wrote its disk.
    if (s.bootMode === 'nixos' && !existsSync(diskFile)) this.nixosImages.add(image.id);
    const action = this.newAction('create_image', s.id);
    action.resources.push({ id: image.id, type: 'image' });
    this.later(null, Math.min(300, this.opts.bootDelayMs / 2), () => {
      image.status = 'available';
      image.image_size = disk === null ? 0 : Math.max(0.001, Math.round((disk.bytes / 1e9) * 1000) / 1000);
      this.finishAction(action.id);
    });
    return {
      status: 201,
      body: { action: { ...action, resources: [...action.resources] }, image: { ...image, labels: { ...image.labels } } },
    };
  }

  /** `PUT /images/{id}`: description and labels (the labels given replace all of them). */
  private updateImage(c: RequestContext): Answer {
    const image = this.byId(this.images, c, 'image');
    const req = this.jsonBody(c) as Schemas['replace_image_request'];
    if (req.labels !== undefined) {
      const lp = labelProblems(req.labels);
      if (lp.length > 0) throw invalidInput(`invalid input in field 'labels'`, [{ name: 'labels', messages: lp }]);
      image.labels = { ...req.labels };
    }
    if (req.description !== undefined) image.description = req.description;
    return { status: 200, body: { image: { ...image, labels: { ...image.labels } } } };
  }

  private deleteImage(c: RequestContext): Answer {
    const image = this.byId(this.images, c, 'image');
    if (image.type !== 'snapshot' && image.type !== 'backup') {
      throw new ApiError(403, 'forbidden', `image ${image.id} is a ${image.type} image and cannot be deleted`);
    }
    this.images.splice(this.images.indexOf(image), 1);
    this.snapshotDisks.delete(image.id);
    this.nixosImages.delete(image.id);
    return { status: 204, body: null };
  }

  // ---------------------------------------------------------------- volumes

  private listVolumes(c: RequestContext): Answer {
    const name = c.query.get('name');
    const statuses = c.query.getAll('status');
    const sel = this.selector(c.query);
    const items = this.volumeStore
      .all()
      .filter(
        (v) =>
          (name === null || v.name === name) && (statuses.length === 0 || statuses.includes(v.status)) && (sel === null || sel(v.labels)),
      )
      .map((v) => this.volumeStore.json(v))
      .sort(this.sorter(c.query, ['id', 'name', 'created']));
    const p = this.paginate(items, c.query);
    return { status: 200, body: { volumes: p.items, meta: p.meta } };
  }

  /** How long a volume action (create, attach, detach) runs. */
  private get volumeActionMs(): number {
    return Math.min(200, this.opts.bootDelayMs / 4);
  }

  private createVolume(c: RequestContext): Answer {
    const req = this.jsonBody(c) as Schemas['create_volume_request'];
    let server: ServerRecord | null = null;
    if (req.server !== undefined) {
      server = this.serversById.get(req.server) ?? null;
      if (!server || server.deleted)
        throw invalidInput(`server with ID '${req.server}' not found`, [{ name: 'server', messages: ['server not found'] }]);
    }
    const v = this.volumeStore.create(req, server);
    const create = this.newResourceAction('create_volume', [{ id: v.id, type: 'volume' }]);
    v.lockedBy = create.id;
    const next = server
      ? [
          this.newResourceAction('attach_volume', [
            { id: server.id, type: 'server' },
            { id: v.id, type: 'volume' },
          ]),
        ]
      : [];
    this.later(null, this.volumeActionMs, () => {
      v.status = 'available';
      this.finishAction(create.id);
      const attach = next[0];
      if (attach && server) void this.mountVolume(server, v).then(() => this.finishAction(attach.id));
    });
    const body: Schemas['create_volume_response'] = {
      volume: this.volumeStore.json(v),
      action: { ...create, resources: [...create.resources] },
      next_actions: next.map((a) => ({ ...a, resources: [...a.resources] })),
    };
    return { status: 201, body };
  }

  private updateVolume(c: RequestContext): Answer {
    const v = this.volumeStore.get(c.params['id'] ?? -1);
    this.volumeStore.update(v, this.jsonBody(c));
    return { status: 200, body: { volume: this.volumeStore.json(v) } };
  }

  private attachVolume(c: RequestContext): Answer {
    const v = this.volumeStore.get(c.params['id'] ?? -1);
    const req = this.jsonBody(c) as Schemas['attach_volume_to_server_request'];
    const s = this.serversById.get(req.server);
    if (!s || s.deleted || s.status === 'deleting')
      throw invalidInput(`server with ID '${req.server}' not found`, [{ name: 'server', messages: ['server not found'] }]);
    this.volumeStore.checkAttach(v, s);
    v.server = s.id;
    const action = this.newResourceAction('attach_volume', [
      { id: s.id, type: 'server' },
      { id: v.id, type: 'volume' },
    ]);
    v.lockedBy = action.id;
    this.later(null, this.volumeActionMs, () => void this.mountVolume(s, v).then(() => this.finishAction(action.id)));
    return { status: 201, body: { action: { ...action, resources: [...action.resources] } } };
  }

  private detachVolume(c: RequestContext): Answer {
    const v = this.volumeStore.get(c.params['id'] ?? -1);
    const serverId = this.volumeStore.checkDetach(v);
    v.server = null;
    const action = this.newResourceAction('detach_volume', [
      { id: serverId, type: 'server' },
      { id: v.id, type: 'volume' },
    ]);
    v.lockedBy = action.id;
    const s = this.serversById.get(serverId);
    this.later(
      null,
      this.volumeActionMs,
      () => void (s?.worker?.unmountVolume(v.id) ?? Promise.resolve()).then(() => this.finishAction(action.id)),
    );
    return { status: 201, body: { action: { ...action, resources: [...action.resources] } } };
  }

  /** Hot-plugs the volume into the running server, if it runs and the volume is still its own. */
  private async mountVolume(s: ServerRecord, v: VolumeRecord): Promise<void> {
    if (s.worker && v.server === s.id) await s.worker.mountVolume(v.id, this.volumeStore.dir(v.id));
  }

  /** The volumes a booting server has, with their folders (see server-namespace.ts). */
  private volumeMounts(s: ServerRecord): { id: number; dir: string }[] {
    return this.volumeStore.attachedTo(s.id).map((id) => ({ id, dir: this.volumeStore.dir(id) }));
  }

  /**
   * Boots the rescue system: an sshd as for a normal server (same namespace mechanism), with a
   * fresh host key, root's authorized keys = the project keys given to `enable_rescue`, no
   * cloud-config, and `/dev/sda` = the regular file `DIR/disk` (see FakeServer). As on Hetzner,
   * rescue mode lasts one boot.
   */
  private async bootRescue(s: ServerRecord): Promise<void> {
    const keys = s.rescueKeys ?? [];
    s.rescueKeys = null;
    s.inRescue = true;
    if (s.behaviour === 'no-sshd') return;
    const host = generateKeyPair(`rescue-${s.id}`);
    const worker = new FakeServer({
      id: s.id,
      dir: s.dir,
      address: s.address,
      sshPort: this.opts.sshPort,
      config: {
        isCloudConfig: false,
        hostKey: { private: host.privateKey, public: host.publicKey },
        genKeyTypes: null,
        authorizedKeys: keys,
        writeFiles: [],
        runcmd: [],
        problems: [],
      },
      wrongHostKey: false,
      neverReady: true,
      readyDelayMs: 0,
      maxSessions: this.opts.maxSessions,
      log: this.opts.log,
      volumes: this.volumeMounts(s),
      rescueDisk: join(s.dir, 'disk'),
    });
    s.worker = worker;
    try {
      await worker.start();
    } catch (e) {
      if (!s.deleted && s.status !== 'deleting' && !this.stopping) this.opts.log(`server ${s.id} (rescue): ${(e as Error).message}`);
    }
  }
}
