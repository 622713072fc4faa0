// A server of the fake cloud: its record (what the API knows of it, and its real machine while
// it runs), the view tests get of it (`cloud.servers()`), and the table of all of them.

import type { components } from '../../src/hcloud/openapi.js';
import { ApiError } from './api.js';
import type { DataCenter, Image, Location, ServerType } from './catalog.js';
import type { FakeServer } from './fake-server.js';
import type { ServerBehaviour } from './faults.js';
import type { Labels } from './labels.js';
import type { LinkBytes, LinkRelay } from '../rig/link.js';
import type { NIXOS_UNITS, UnitState } from './nixos-image.js';
import type { RequestContext } from './request.js';

type Schemas = components['schemas'];
type ServerStatus = Schemas['server']['status'];

/** What a snapshot made by `create_image` remembers of the server's disk (`DIR/disk`, see FakeServer). */
export interface SnapshotDisk {
  sha256: string;
  bytes: number;
}

/** Which units of nixos/worker.nix ran and how (null for other servers). */
export type NixosUnits = Record<keyof typeof NIXOS_UNITS, UnitState>;

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

export interface ServerRecord {
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
  /** The real machine while it runs (with real servers). */
  machine: FakeServer | null;
  /** The stop of its last machine (power off or delete), which a delete waits for. */
  machineStopped: Promise<void> | null;
  timers: Set<NodeJS.Timeout>;
  deleteActionId: number | null;
  /** Public keys for the rescue system of the next boot; null: rescue mode off. */
  rescueKeys: string[] | null;
  inRescue: boolean;
  disk: SnapshotDisk | null;
  bootMode: BootMode;
  /** The units of the last NixOS boot (kept when its machine is gone). */
  lastUnits: NixosUnits | null;
  /** The emulated link in front of its sshd (with the `link` option). */
  link: LinkRelay | null;
}

/** Every server the cloud made, deleted ones too (their actions stay readable). */
export class ServerTable {
  private readonly byId = new Map<number, ServerRecord>();

  add(s: ServerRecord): void {
    this.byId.set(s.id, s);
  }

  get(id: number): ServerRecord | undefined {
    return this.byId.get(id);
  }

  all(): ServerRecord[] {
    return [...this.byId.values()];
  }

  /** The servers not deleted. */
  live(): ServerRecord[] {
    return this.all().filter((s) => !s.deleted);
  }

  /** The server the request names (`{id}`), or 404 not_found when there is none or it is deleted. */
  named(c: RequestContext): ServerRecord {
    const id = c.params['id'] ?? -1;
    const s = this.byId.get(id);
    if (!s || s.deleted) throw new ApiError(404, 'not_found', `server with ID '${id}' not found`);
    return s;
  }
}
