// A fake Hetzner Cloud API for tests, with optional real servers: every
// created server can become an sshd in its own mount namespace on its own
// loopback address (127.0.0.N), with its own empty Nix store at /nix,
// configured from its cloud-config user data, or, for a server of a NixOS
// worker image, by that image's own boot scripts, which read the user data
// from the fake metadata service (`/metadata/<server id>/hetzner/v1/...`).
//
// The answers follow spec/hcloud/openapi.json and are checked against it.
//
// FakeCloud puts the rooms together (servers.ts, volumes.ts, images.ts, ssh-keys.ts,
// actions.ts, metadata.ts, catalog-api.ts behind http.ts) and is the face tests use.

import { createServer, type Server as HttpServer } from 'node:http';
import { mkdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ActionLog } from './actions.js';
import { AddressPool, releaseAllAddressesSync } from './addresses.js';
import { catalogRoutes } from './catalog-api.js';
import type { Image } from './catalog.js';
import { Faults, type Fault, type MetadataFault, type ServerBehaviour } from './faults.js';
import { HttpApi, Router } from './http.js';
import { Images, type NewImage } from './images.js';
import { MetadataService, metadataBase } from './metadata.js';
import { releaseAllDisksSync } from './nixos-image.js';
import { resolveOptions, type FakeCloudOptions, type ResolvedOptions } from './options.js';
import { RateLimit } from './rate-limit.js';
import type { Room } from './room.js';
import { ServerBoot } from './server-boot.js';
import { ServerTable, type FakeServerInfo, type SnapshotDisk } from './server-record.js';
import { Servers } from './servers.js';
import { SshKeys, type SshKey } from './ssh-keys.js';
import { Timers } from './timers.js';
import { Volumes, type Volume } from './volumes.js';

export { LINK_INNER_PORT_OFFSET, type FakeCloudOptions } from './options.js';
export type { Fault, MetadataFault, ServerBehaviour } from './faults.js';
export type { BootMode, FakeServerInfo, NixosUnits, SnapshotDisk } from './server-record.js';
export { isHostname } from './servers.js';

/** Every running fake cloud, so that leftover sshds die with the process. */
const liveClouds = new Set<FakeCloud>();
let exitHooksInstalled = false;

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  process.on('exit', () => {
    for (const c of liveClouds) c.killAllSync();
    // Also the disks of machines being stopped (no longer a server's current machine).
    releaseAllDisksSync();
    releaseAllAddressesSync();
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

export class FakeCloud {
  readonly url: string;
  readonly requests: { method: string; path: string; status: number }[];
  /** Requests to the fake metadata service (path below /hetzner/v1; status 0: dropped). */
  readonly metadataRequests: { server: number; path: string; status: number }[];
  readonly schemaErrors: string[];

  private readonly opts: ResolvedOptions;
  private readonly http: HttpServer;
  private readonly room: Room;
  private readonly router = new Router();
  private readonly api: HttpApi;
  private readonly faults = new Faults();
  private readonly metadata: MetadataService;
  private readonly images: Images;
  private readonly sshKeys: SshKeys;
  private readonly volumeRoom: Volumes;
  private readonly serverRoom: Servers;
  private readonly boot: ServerBoot;
  private readonly addresses: AddressPool;

  private constructor(opts: FakeCloudOptions, http: HttpServer, url: string) {
    this.opts = resolveOptions(opts);
    this.http = http;
    this.url = url;
    const room: Room = { opts: this.opts, timers: new Timers(), actions: new ActionLog(), servers: new ServerTable() };
    this.room = room;
    this.images = new Images(room);
    this.sshKeys = new SshKeys(this.opts.apiDate);
    this.volumeRoom = new Volumes(room, join(this.opts.dataDir, 'volumes'));
    this.addresses = new AddressPool(this.opts);
    const userDataUrl = (id: number) => `${this.metadataBase(id)}/userdata`;
    this.boot = new ServerBoot(room, this.images, this.volumeRoom, userDataUrl);
    this.serverRoom = new Servers(room, {
      images: this.images,
      volumes: this.volumeRoom,
      sshKeys: this.sshKeys,
      faults: this.faults,
      addresses: this.addresses,
      boot: this.boot,
      userDataUrl,
    });
    this.metadata = new MetadataService(this.opts, room.servers, this.faults);
    catalogRoutes(this.router);
    this.images.routes(this.router);
    this.serverRoom.routes(this.router);
    room.actions.routes(this.router);
    this.sshKeys.routes(this.router);
    this.volumeRoom.routes(this.router);
    const limit = opts.rateLimit?.limit ?? 3600;
    const rateLimit = new RateLimit(limit, opts.rateLimit?.refillPerSecond ?? 1);
    this.api = new HttpApi(this.opts, room.timers, this.router, this.faults, rateLimit, (req, res, id, path) =>
      this.metadata.handle(req, res, id, path),
    );
    this.requests = this.api.requests;
    this.schemaErrors = this.api.schemaErrors;
    this.metadataRequests = this.metadata.requests;
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
      if (cloud) void cloud.api.handle(req, res);
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

  /** Answers the next matching API requests with a fault; returns a function that withdraws what is left of it. */
  inject(fault: Fault): () => void {
    return this.faults.inject(fault);
  }

  /** A fault on the metadata service (`/metadata/<id>/hetzner/v1/...`), e.g. a 404 or garbage user data. */
  injectMetadata(fault: MetadataFault): void {
    this.faults.injectMetadata(fault);
  }

  /** Base URL of the fake metadata service for one server: append e.g. "/userdata". */
  metadataBase(serverId: number): string {
    return metadataBase(this.url, serverId);
  }

  /**
   * A file as the running server sees it, read inside its mount namespace (e.g. its private
   * /etc/ssh); null when the server does not run or the file cannot be read.
   */
  async readServerFile(id: number, path: string): Promise<string | null> {
    return (await this.room.servers.get(id)?.machine?.readFile(path)) ?? null;
  }

  /** The next `count` (default 1) created servers behave so. */
  behaveNext(behaviour: ServerBehaviour, count = 1): void {
    this.faults.behaveNext(behaviour, count);
  }

  /**
   * The user data of servers created from now on goes through `edit` (null: as sent), e.g. a
   * test takes out a line of the daemon's cloud-config to show what that line guards against.
   */
  editUserData(edit: ((userData: string) => string) | null): void {
    this.serverRoom.editUserData(edit);
  }

  /**
   * Keeps every action of this command running until the returned function is called (then they
   * end as they would have): for tests of what holds while an action runs, without racing its timer.
   */
  holdActions(command: string): () => void {
    return this.room.actions.hold(command);
  }

  /** The operations (method and path template of openapi.json) the fake answers. */
  servedOperations(): { method: string; template: string }[] {
    return this.router.operations();
  }

  servers(): FakeServerInfo[] {
    return this.room.servers.all().map((s) => this.serverRoom.info(s));
  }

  liveServers(): FakeServerInfo[] {
    return this.servers().filter((s) => !s.deleted);
  }

  /** The project's ssh keys, as the API lists them. */
  listSshKeys(): SshKey[] {
    return this.sshKeys.all();
  }

  /** The images (all types) as the API lists them. */
  allImages(): Image[] {
    return this.images.all();
  }

  /** The disk a snapshot made by `create_image` remembers (undefined for other images). */
  snapshotDisk(imageId: number): SnapshotDisk | undefined {
    return this.images.snapshotDisk(imageId);
  }

  /** The volumes as the API lists them. */
  volumes(): Volume[] {
    return this.volumeRoom.all();
  }

  /**
   * The folder that stands for a volume's block device (`dataDir/volumes/<id>/`): what a server
   * with the volume attached sees at /mnt/HC_Volume_<id>. It exists from the volume's creation to
   * its deletion, across every server it is attached to.
   */
  volumeDir(id: number): string {
    return this.volumeRoom.store.dir(id);
  }

  /**
   * Adds an image (a snapshot by default), e.g. a prepared NixOS image; returns it. With
   * `worker: 'nixos'` it is the NixOS worker image of nixos/worker.nix: its servers boot by that
   * image's units (fetch-keys.sh, zpool-expand.sh, store-volume.sh, sshd, ready-marker.sh), not
   * by cloud-init. `storeUnit: false`: an image built before nixos/worker.nix had the store unit.
   * With `worker: 'stock'` it is a stock image without Nix (as Ubuntu's): cloud-init boots it,
   * runcmd runs in cloud-final's environment and must install Nix itself.
   */
  addImage(img: NewImage): Image {
    return this.images.add(img);
  }

  /** Simulates a hung server or a network partition: every process in it is stopped (SIGSTOP). */
  freeze(id: number): number {
    return this.room.servers.get(id)?.machine?.freeze() ?? 0;
  }

  /**
   * Simulates worker death: sshd and everything in the server are SIGKILLed
   * at once; the API still says "running". The promise resolves once every
   * process is gone (until then a connect may still be reset, not refused).
   */
  killSshd(id: number): Promise<void> {
    const s = this.room.servers.get(id);
    if (!s?.machine) return Promise.resolve();
    return s.machine.stop();
  }

  async stop(): Promise<void> {
    if (this.room.timers.stopping) return;
    this.room.timers.stop();
    await new Promise<void>((r) => {
      this.http.close(() => r());
      this.http.closeAllConnections();
    });
    const waits: Promise<void>[] = [];
    for (const s of this.room.servers.all()) {
      for (const t of s.timers) clearTimeout(t);
      s.timers.clear();
      waits.push(this.boot.stopLink(s));
      if (s.machine) waits.push(s.machine.stop());
      if (s.machineStopped) waits.push(s.machineStopped);
    }
    await Promise.all(waits);
    for (const s of this.room.servers.live()) this.addresses.release(s.address);
    liveClouds.delete(this);
    rmSync(join(this.opts.dataDir, 'servers'), { recursive: true, force: true });
    this.volumeRoom.store.removeAll();
  }

  /** Synchronous last-resort cleanup (process exit): kills every server, detaches their disks. */
  killAllSync(): void {
    for (const s of this.room.servers.all()) s.machine?.killSync();
  }
}
