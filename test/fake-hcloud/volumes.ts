// The fake cloud's Volumes: their records, Hetzner's rules for them (`VolumeStore`: what a request
// may do to a volume), and their routes and actions (`Volumes`), which plug them into servers.
//
// Each volume has a folder, `<root>/<id>/`, that stands for its block device's content: it
// outlives every server the volume is attached to, and a server with the volume attached sees it
// at /mnt/HC_Volume_<id> (see server-namespace.ts).
//
// Rules, as the API description says (spec/hcloud/openapi.json) and, where it says nothing, as
// the real API answers (quoted in test/fake-hcloud/README.md):
// - size 10..10240 GB; name: alphanumeric ends, dashes, underscores and dots, at most 64, unique
//   per project (409 uniqueness_error); format xfs or ext4; location or server required.
// - attach: only to a server in the volume's location (422 invalid_input); only one server at a
//   time (422 volume_already_attached, also for the server it is attached to already).
// - detach: only an attached volume (422 service_error).
// - delete: only a detached volume (422 service_error "... is still attached to a server").
// - while one of its actions runs, a volume takes no other (423 locked).

import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { components } from '../../src/hcloud/openapi.js';
import { actionJson, type Action } from './actions.js';
import { ApiError, invalidInput, iso } from './api.js';
import { LOCATIONS, type Location } from './catalog.js';
import type { Router } from './http.js';
import type { Labels } from './labels.js';
import { checkLabels, jsonBody, paginate, selector, sorter, type Answer, type RequestContext } from './request.js';
import type { Room } from './room.js';
import type { ServerRecord } from './server-record.js';
import type { VolumeMount } from './server-namespace.js';

type Schemas = components['schemas'];
export type Volume = Schemas['volume'];

export const MIN_VOLUME_GB = 10;
export const MAX_VOLUME_GB = 10_240;
const FORMATS = ['xfs', 'ext4'];
const NAME = /^[a-zA-Z0-9]([a-zA-Z0-9._-]{0,62}[a-zA-Z0-9])?$/;

export interface VolumeRecord {
  id: number;
  name: string;
  size: number;
  location: Location;
  labels: Labels;
  format: string | null;
  createdAt: Date;
  status: 'creating' | 'available';
  /** The server it is attached to; null when detached. */
  server: number | null;
  /** The running action that holds the volume (create, attach, detach); null when none. */
  lockedBy: number | null;
}

/** What a volume needs to know of a server. */
export interface ServerRef {
  id: number;
  location: Location;
}

export class VolumeStore {
  private readonly byId = new Map<number, VolumeRecord>();
  private nextId = 100_000_001;

  /** `root`: the folder holding each volume's folder. */
  constructor(private readonly root: string) {}

  /** The folder that stands for the volume's block device. */
  dir(id: number): string {
    return join(this.root, String(id));
  }

  all(): VolumeRecord[] {
    return [...this.byId.values()];
  }

  /** The volume, or 404 not_found. */
  get(id: number): VolumeRecord {
    const v = this.byId.get(id);
    if (!v) throw new ApiError(404, 'not_found', `volume with ID '${id}' not found`);
    return v;
  }

  /** Ids of the volumes attached to the server, ascending. */
  attachedTo(serverId: number): number[] {
    return this.all()
      .filter((v) => v.server === serverId)
      .map((v) => v.id)
      .sort((a, b) => a - b);
  }

  /**
   * Checks a create request and makes the volume (status `creating`, its folder empty). With
   * `server`, the volume is in the server's location and attached to it at once.
   */
  create(req: Schemas['create_volume_request'], server: ServerRef | null): VolumeRecord {
    if (!NAME.test(req.name)) {
      throw invalidInput(`invalid input in field 'name'`, [
        { name: 'name', messages: ['must be at most 64 alphanumeric characters, dashes, underscores or dots, with alphanumeric ends'] },
      ]);
    }
    if (!Number.isInteger(req.size) || req.size < MIN_VOLUME_GB || req.size > MAX_VOLUME_GB) {
      throw invalidInput(`invalid input in field 'size'`, [
        { name: 'size', messages: [`must be an integer from ${MIN_VOLUME_GB} to ${MAX_VOLUME_GB} (GB)`] },
      ]);
    }
    if (req.format !== undefined && !FORMATS.includes(req.format)) {
      throw invalidInput(`invalid input in field 'format'`, [{ name: 'format', messages: [`must be one of ${FORMATS.join(', ')}`] }]);
    }
    if (req.automount === true && req.server === undefined) {
      throw invalidInput(`invalid input in field 'automount'`, [{ name: 'automount', messages: ['needs server'] }]);
    }
    let location: Location | undefined = server?.location;
    if (req.location !== undefined) {
      const named = LOCATIONS.find((l) => l.name === req.location || String(l.id) === req.location);
      if (!named) throw invalidInput(`location '${req.location}' not found`, [{ name: 'location', messages: ['location not found'] }]);
      if (location !== undefined && location.id !== named.id) {
        throw invalidInput(`server ${server?.id} is not in location ${named.name}`, [
          { name: 'location', messages: ['must be the location of the server'] },
        ]);
      }
      location = named;
    }
    if (location === undefined)
      throw invalidInput('location or server is required', [{ name: 'location', messages: ['location or server is required'] }]);
    const labels = req.labels ?? {};
    checkLabels(labels);
    this.assertNameFree(req.name);

    const v: VolumeRecord = {
      id: this.nextId++,
      name: req.name,
      size: req.size,
      location,
      labels: { ...labels },
      format: req.format ?? null,
      createdAt: new Date(),
      status: 'creating',
      server: server?.id ?? null,
      lockedBy: null,
    };
    this.byId.set(v.id, v);
    mkdirSync(this.dir(v.id), { recursive: true, mode: 0o755 });
    return v;
  }

  /** `PUT /volumes/{id}`: name and labels (the labels given replace all of them). */
  update(v: VolumeRecord, req: Schemas['replace_volume_request']): void {
    if (req.name !== undefined && req.name !== v.name) {
      if (!NAME.test(req.name)) throw invalidInput(`invalid input in field 'name'`, [{ name: 'name', messages: ['invalid volume name'] }]);
      this.assertNameFree(req.name);
    }
    if (req.labels !== undefined) {
      checkLabels(req.labels);
      v.labels = { ...req.labels };
    }
    if (req.name !== undefined) v.name = req.name;
  }

  /** Refuses what Hetzner refuses when attaching `v` to `server`; changes nothing. */
  checkAttach(v: VolumeRecord, server: ServerRef): void {
    this.assertUnlocked(v);
    if (v.server !== null) {
      throw new ApiError(
        422,
        'volume_already_attached',
        `volume with ID '${v.id}' is already attached to server ${v.server}, detach it first`,
      );
    }
    if (v.location.id !== server.location.id) {
      throw invalidInput(
        `volume ${v.id} is in ${v.location.name}, server ${server.id} in ${server.location.name}: they must be in the same location`,
        [{ name: 'server', messages: ['must be in the location of the volume'] }],
      );
    }
  }

  /** Refuses a detach of a volume that is not attached (or busy); answers the server it leaves. */
  checkDetach(v: VolumeRecord): number {
    this.assertUnlocked(v);
    if (v.server === null) throw new ApiError(422, 'service_error', `volume with ID '${v.id}' is not attached to a server`);
    return v.server;
  }

  /** Deletes a detached volume and its folder: its data is gone, as on Hetzner. */
  delete(v: VolumeRecord): void {
    this.assertUnlocked(v);
    if (v.server !== null) throw new ApiError(422, 'service_error', `volume with ID '${v.id}' is still attached to a server`);
    this.byId.delete(v.id);
    rmSync(this.dir(v.id), { recursive: true, force: true });
  }

  /** Ends the lock of every volume held by this action (it finished, well or not). */
  unlock(actionId: number): void {
    for (const v of this.byId.values()) {
      if (v.lockedBy === actionId) v.lockedBy = null;
    }
  }

  json(v: VolumeRecord): Volume {
    return {
      id: v.id,
      name: v.name,
      size: v.size,
      location: v.location,
      labels: { ...v.labels },
      format: v.format,
      created: iso(v.createdAt),
      status: v.status,
      server: v.server,
      linux_device: `/dev/disk/by-id/scsi-0HC_Volume_${v.id}`,
      protection: { delete: false },
    };
  }

  /** Removes every volume folder (the cloud stops). */
  removeAll(): void {
    this.byId.clear();
    rmSync(this.root, { recursive: true, force: true });
  }

  private assertNameFree(name: string): void {
    if (this.all().some((x) => x.name === name)) {
      throw new ApiError(409, 'uniqueness_error', 'volume name is already used', { fields: [{ name: 'name' }] });
    }
  }

  private assertUnlocked(v: VolumeRecord): void {
    if (v.lockedBy !== null) throw new ApiError(423, 'locked', `volume with ID '${v.id}' is locked: action ${v.lockedBy} is running`);
  }
}

/** The volumes' routes and actions; a volume's folder is plugged into the servers it is attached to. */
export class Volumes {
  readonly store: VolumeStore;

  constructor(
    private readonly room: Room,
    root: string,
  ) {
    this.store = new VolumeStore(root);
    room.actions.onFinish((id) => this.store.unlock(id));
  }

  /** The volumes as the API lists them. */
  all(): Volume[] {
    return this.store.all().map((v) => this.store.json(v));
  }

  /**
   * The volumes `POST /servers` names to attach at creation: each must exist, be free and be in
   * the server's location.
   */
  checkAttachAtCreation(ids: number[], location: Location): VolumeRecord[] {
    const volumes = ids.map((id) => {
      const v = this.store.all().find((x) => x.id === id);
      if (!v) throw invalidInput(`volume with ID '${id}' not found`, [{ name: 'volumes', messages: [`volume ${id} not found`] }]);
      return v;
    });
    if (new Set(volumes.map((v) => v.id)).size !== volumes.length) {
      throw invalidInput(`invalid input in field 'volumes'`, [{ name: 'volumes', messages: ['a volume is listed twice'] }]);
    }
    for (const v of volumes) this.store.checkAttach(v, { id: 0, location });
    return volumes;
  }

  /** Attaches them at once, so that the server boots with them; the caller ends each attach action. */
  attachAtCreation(volumes: VolumeRecord[], serverId: number): Action[] {
    return volumes.map((v) => {
      v.server = serverId;
      const a = this.startAttachAction('attach_volume', serverId, v.id);
      v.lockedBy = a.id;
      return a;
    });
  }

  /** As on Hetzner, deleting a server detaches its volumes; their data stays. */
  detachAll(serverId: number): void {
    for (const v of this.store.all()) if (v.server === serverId) v.server = null;
  }

  routes(router: Router): void {
    router.add('GET', '/volumes', (c) => this.listRoute(c));
    router.add('POST', '/volumes', (c) => this.createRoute(c));
    router.add('GET', '/volumes/{id}', (c) => ({
      status: 200,
      body: { volume: this.store.json(this.store.get(c.params['id'] ?? -1)) },
    }));
    router.add('PUT', '/volumes/{id}', (c) => this.updateRoute(c));
    router.add('DELETE', '/volumes/{id}', (c) => {
      this.store.delete(this.store.get(c.params['id'] ?? -1));
      return { status: 204, body: null };
    });
    router.add('GET', '/volumes/{id}/actions', (c) => {
      const v = this.store.get(c.params['id'] ?? -1);
      const p = paginate(this.room.actions.of('volume', v.id), c.query);
      return { status: 200, body: { actions: p.items, meta: p.meta } };
    });
    router.add('POST', '/volumes/{id}/actions/attach', (c) => this.attachRoute(c));
    router.add('POST', '/volumes/{id}/actions/detach', (c) => this.detachRoute(c));
  }

  /** An attach or detach action, about the server and the volume. */
  private startAttachAction(command: 'attach_volume' | 'detach_volume', serverId: number, volumeId: number): Action {
    return this.room.actions.startFor(command, [
      { id: serverId, type: 'server' },
      { id: volumeId, type: 'volume' },
    ]);
  }

  private listRoute(c: RequestContext): Answer {
    const name = c.query.get('name');
    const statuses = c.query.getAll('status');
    const sel = selector(c.query);
    const items = this.store
      .all()
      .filter(
        (v) =>
          (name === null || v.name === name) && (statuses.length === 0 || statuses.includes(v.status)) && (sel === null || sel(v.labels)),
      )
      .map((v) => this.store.json(v))
      .sort(sorter(c.query, ['id', 'name', 'created']));
    const p = paginate(items, c.query);
    return { status: 200, body: { volumes: p.items, meta: p.meta } };
  }

  /** How long a volume action (create, attach, detach) runs. */
  private get volumeActionMs(): number {
    return Math.min(200, this.room.opts.bootDelayMs / 4);
  }

  private createRoute(c: RequestContext): Answer {
    const req = jsonBody(c, this.room.opts.apiDate) as Schemas['create_volume_request'];
    let server: ServerRecord | null = null;
    if (req.server !== undefined) {
      server = this.room.servers.get(req.server) ?? null;
      if (!server || server.deleted)
        throw invalidInput(`server with ID '${req.server}' not found`, [{ name: 'server', messages: ['server not found'] }]);
    }
    const v = this.store.create(req, server);
    const create = this.room.actions.startFor('create_volume', [{ id: v.id, type: 'volume' }]);
    v.lockedBy = create.id;
    const next = server ? [this.startAttachAction('attach_volume', server.id, v.id)] : [];
    this.room.timers.later(null, this.volumeActionMs, () => {
      v.status = 'available';
      this.room.actions.finish(create.id);
      const attach = next[0];
      if (attach && server) void this.mountVolume(server, v).then(() => this.room.actions.finish(attach.id));
    });
    const body: Schemas['create_volume_response'] = {
      volume: this.store.json(v),
      action: actionJson(create),
      next_actions: next.map(actionJson),
    };
    return { status: 201, body };
  }

  private updateRoute(c: RequestContext): Answer {
    const v = this.store.get(c.params['id'] ?? -1);
    this.store.update(v, jsonBody(c, this.room.opts.apiDate));
    return { status: 200, body: { volume: this.store.json(v) } };
  }

  private attachRoute(c: RequestContext): Answer {
    const v = this.store.get(c.params['id'] ?? -1);
    const req = jsonBody(c, this.room.opts.apiDate) as Schemas['attach_volume_to_server_request'];
    const s = this.room.servers.get(req.server);
    if (!s || s.deleted || s.status === 'deleting')
      throw invalidInput(`server with ID '${req.server}' not found`, [{ name: 'server', messages: ['server not found'] }]);
    this.store.checkAttach(v, s);
    v.server = s.id;
    const action = this.startAttachAction('attach_volume', s.id, v.id);
    v.lockedBy = action.id;
    this.room.timers.later(null, this.volumeActionMs, () => void this.mountVolume(s, v).then(() => this.room.actions.finish(action.id)));
    return { status: 201, body: { action: actionJson(action) } };
  }

  private detachRoute(c: RequestContext): Answer {
    const v = this.store.get(c.params['id'] ?? -1);
    const serverId = this.store.checkDetach(v);
    v.server = null;
    const action = this.startAttachAction('detach_volume', serverId, v.id);
    v.lockedBy = action.id;
    const s = this.room.servers.get(serverId);
    this.room.timers.later(
      null,
      this.volumeActionMs,
      () => void (s?.machine?.unmountVolume(v.id) ?? Promise.resolve()).then(() => this.room.actions.finish(action.id)),
    );
    return { status: 201, body: { action: actionJson(action) } };
  }

  /** Hot-plugs the volume into the running server, if it runs and the volume is still its own. */
  private async mountVolume(s: ServerRecord, v: VolumeRecord): Promise<void> {
    if (s.machine && v.server === s.id) await s.machine.mountVolume(v.id, this.store.dir(v.id));
  }

  /** The volumes a booting server has, with their folders (see server-namespace.ts). */
  mounts(s: ServerRecord): VolumeMount[] {
    return this.store.attachedTo(s.id).map((id) => ({ id, dir: this.store.dir(id) }));
  }
}
