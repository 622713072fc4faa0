// The fake cloud's servers: create (name, type, location, image, volumes, user data), list,
// read, delete, their actions, and power: rescue mode, power on, shutdown and power off. A server
// of real servers boots a machine (`ServerBoot`) once it runs.

import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { components } from '../../src/hcloud/openapi.js';
import { actionJson } from './actions.js';
import type { AddressPool } from './addresses.js';
import { ApiError, invalidInput, iso } from './api.js';
import { DATA_CENTERS, includedTraffic, LOCATIONS, SERVER_TYPES, type DataCenter, type Location } from './catalog.js';
import { FakeServer } from './fake-server.js';
import type { Faults } from './faults.js';
import type { Router } from './http.js';
import type { Images } from './images.js';
import { checkLabels, findByIdOrName, jsonBody, paginate, selector, sorter, type Answer, type RequestContext } from './request.js';
import type { Room } from './room.js';
import type { ServerBoot } from './server-boot.js';
import type { FakeServerInfo, ServerRecord } from './server-record.js';
import type { SshKeys } from './ssh-keys.js';
import type { Volumes } from './volumes.js';

type Schemas = components['schemas'];
type ApiServer = Schemas['server'];

/** RFC 1123 host name: dot-separated labels of letters, digits and dashes. */
export function isHostname(name: string): boolean {
  if (name.length === 0 || name.length > 253) return false;
  return name.split('.').every((l) => /^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/.test(l));
}

export class Servers {
  private nextServerId = 70_000_001;
  private userDataEdit: ((userData: string) => string) | null = null;

  constructor(
    private readonly room: Room,
    private readonly deps: {
      images: Images;
      volumes: Volumes;
      sshKeys: SshKeys;
      faults: Faults;
      addresses: AddressPool;
      boot: ServerBoot;
      /** The user data of a server on the fake metadata service. */
      userDataUrl: (serverId: number) => string;
    },
  ) {}

  /**
   * The user data of servers created from now on goes through `edit` (null: as sent), e.g. a
   * test takes out a line of the daemon's cloud-config to show what that line guards against.
   */
  editUserData(edit: ((userData: string) => string) | null): void {
    this.userDataEdit = edit;
  }

  routes(router: Router): void {
    router.add('GET', '/servers', (c) => this.listServers(c));
    router.add('POST', '/servers', (c) => this.createServer(c));
    router.add('GET', '/servers/{id}', (c) => ({ status: 200, body: { server: this.serverJson(this.room.servers.named(c)) } }));
    router.add('DELETE', '/servers/{id}', (c) => this.deleteServer(c));
    router.add('GET', '/servers/{id}/actions', (c) => this.listServerActions(c));
    router.add('GET', '/servers/{id}/actions/{action_id}', (c) => this.getServerAction(c));
    router.add('POST', '/servers/{id}/actions/enable_rescue', (c) => this.enableRescue(c));
    router.add('POST', '/servers/{id}/actions/poweron', (c) => this.powerOn(c));
    router.add('POST', '/servers/{id}/actions/shutdown', (c) => this.powerOff(c, 'shutdown_server'));
    router.add('POST', '/servers/{id}/actions/poweroff', (c) => this.powerOff(c, 'stop_server'));
  }

  info(s: ServerRecord): FakeServerInfo {
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
      sshdRunning: s.machine?.listening ?? false,
      linkBytes: s.link ? { ...s.link.bytes } : null,
      cloudInitDone: s.machine?.cloudInitDone ?? false,
      rescueEnabled: s.rescueKeys !== null,
      inRescue: s.inRescue,
      diskFile: join(s.dir, 'disk'),
      disk: s.disk,
      bootMode: s.bootMode,
      units: s.machine?.units ? { ...s.machine.units } : s.lastUnits ? { ...s.lastUnits } : null,
      workerDisk: s.bootMode === 'nixos' ? join(s.dir, 'worker-disk.img') : null,
      loopDevice: s.machine?.loopDevice ?? null,
      metadataUrl: this.deps.userDataUrl(s.id),
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
      volumes: this.deps.volumes.store.attachedTo(s.id),
      load_balancers: [],
      primary_disk_size: s.type.disk,
      placement_group: null,
    };
  }

  private listServers(c: RequestContext): Answer {
    const name = c.query.get('name');
    const statuses = c.query.getAll('status');
    const sel = selector(c.query);
    const items = this.room.servers
      .all()
      .filter(
        (s) =>
          !s.deleted &&
          (name === null || s.name === name) &&
          (statuses.length === 0 || statuses.includes(s.status)) &&
          (sel === null || sel(s.labels)),
      )
      .map((s) => this.serverJson(s))
      .sort(sorter(c.query, ['id', 'name', 'created']));
    const p = paginate(items, c.query);
    return { status: 200, body: { servers: p.items, meta: p.meta } };
  }

  private listServerActions(c: RequestContext): Answer {
    const s = this.room.servers.named(c);
    const statuses = c.query.getAll('status');
    const items = this.room.actions.of('server', s.id).filter((a) => statuses.length === 0 || statuses.includes(a.status));
    const p = paginate(items, c.query);
    return { status: 200, body: { actions: p.items, meta: p.meta } };
  }

  private getServerAction(c: RequestContext): Answer {
    const id = c.params['id'] ?? -1;
    const actionId = c.params['action_id'] ?? -1;
    const s = this.room.servers.get(id);
    // The actions of a deleted server stay readable, so that a delete can be followed to its end.
    if (!s) throw new ApiError(404, 'not_found', `server with ID '${id}' not found`);
    const a = this.room.actions.get(actionId);
    if (!a || !this.room.actions.of('server', s.id).includes(a))
      throw new ApiError(404, 'not_found', `action with ID '${actionId}' not found`);
    return { status: 200, body: { action: a } };
  }

  private async createServer(c: RequestContext): Promise<Answer> {
    const req = jsonBody(c, this.room.opts.apiDate) as Schemas['create_server_request'];

    if (!isHostname(req.name)) {
      throw invalidInput(`invalid input in field 'name'`, [{ name: 'name', messages: ['must be a valid hostname (RFC 1123)'] }]);
    }
    const type = findByIdOrName(SERVER_TYPES, req.server_type)[0];
    if (!type)
      throw invalidInput(`server type '${req.server_type}' not found`, [{ name: 'server_type', messages: ['server type not found'] }]);

    let location: Location | undefined;
    let datacenter: DataCenter | undefined;
    if (req.location !== undefined) {
      location = findByIdOrName(LOCATIONS, req.location)[0];
      if (!location) throw invalidInput(`location '${req.location}' not found`, [{ name: 'location', messages: ['location not found'] }]);
      /* eslint-disable @typescript-eslint/no-deprecated -- the fake accepts what the API accepts, deprecated or not */
    } else if (req.datacenter !== undefined) {
      datacenter = findByIdOrName(DATA_CENTERS, req.datacenter)[0];
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

    const candidates = findByIdOrName(this.deps.images.current, req.image).filter((i) => i.status === 'available');
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
    checkLabels(labels);
    if (req.user_data !== undefined && Buffer.byteLength(req.user_data, 'utf8') > 32 * 1024) {
      throw invalidInput(`invalid input in field 'user_data'`, [{ name: 'user_data', messages: ['user_data must be at most 32 KiB'] }]);
    }
    const volumes = this.deps.volumes.checkAttachAtCreation(req.volumes ?? [], loc);
    const live = this.room.servers.live();
    if (live.some((s) => s.name === req.name)) {
      throw new ApiError(409, 'uniqueness_error', 'server name is already used', { fields: [{ name: 'name' }] });
    }
    if (live.length >= this.room.opts.serverLimit) {
      throw new ApiError(403, 'resource_limit_exceeded', 'server limit exceeded', { limits: [{ name: 'server_limit' }] });
    }
    const address = await this.deps.addresses.allocate(new Set(live.map((s) => s.address)));
    if (address === null) {
      throw new ApiError(403, 'resource_limit_exceeded', 'no loopback address left for another server', {
        limits: [{ name: 'server_limit' }],
      });
    }
    if (this.room.timers.stopping) {
      this.deps.addresses.release(address);
      throw new ApiError(503, 'unavailable', 'shutting down');
    }

    const id = this.nextServerId++;
    const enableIpv4 = req.public_net?.enable_ipv4 ?? true;
    const enableIpv6 = req.public_net?.enable_ipv6 ?? true;
    const behaviour = this.deps.faults.nextBehaviour();
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
      dir: join(this.room.opts.dataDir, 'servers', String(id)),
      machine: null,
      machineStopped: null,
      timers: new Set(),
      deleteActionId: null,
      rescueKeys: null,
      inRescue: false,
      disk: this.deps.images.snapshotDisk(image.id) ?? null,
      bootMode: this.deps.images.bootMode(image.id),
      lastUnits: null,
      link: null,
    };
    this.room.servers.add(s);
    if (this.room.opts.realServers) FakeServer.prepare(s.dir, s.userData);

    const create = this.room.actions.start('create_server', id);
    const startAfterCreate = req.start_after_create ?? true;
    const next = startAfterCreate ? [this.room.actions.start('start_server', id)] : [];
    // Attached at once, so that the server boots with them; each attach action ends with the create.
    const attaches = this.deps.volumes.attachAtCreation(volumes, id);
    next.push(...attaches);
    this.room.timers.later(s, this.room.opts.bootDelayMs / 2, () => {
      for (const a of attaches) this.room.actions.finish(a.id);
    });
    const rootPassword = (req.ssh_keys ?? []).length === 0 ? randomBytes(15).toString('base64url') : null;
    const response: Schemas['create_server_response'] = {
      server: this.serverJson(s),
      action: actionJson(create),
      next_actions: next.map(actionJson),
      root_password: rootPassword,
    };
    this.scheduleBoot(s, create.id, startAfterCreate ? (next[0]?.id ?? null) : null);
    return { status: 201, body: response };
  }

  private scheduleBoot(s: ServerRecord, createId: number, startId: number | null): void {
    const boot = this.room.opts.bootDelayMs;
    this.room.timers.later(s, boot / 2, () => {
      if (startId !== null) s.status = 'starting';
      for (const id of [createId, startId]) {
        const a = id !== null ? this.room.actions.get(id) : undefined;
        if (a && a.status === 'running') a.progress = 50;
      }
    });
    if (s.behaviour === 'never-running' && startId !== null) return;
    this.room.timers.later(s, boot, () => {
      if (s.behaviour === 'action-error') {
        s.status = 'off';
        this.room.actions.finish(createId, { code: 'action_failed', message: 'server creation failed: no capacity on the host' });
        if (startId !== null) this.room.actions.finish(startId, { code: 'action_failed', message: 'server could not be started' });
        return;
      }
      this.room.actions.finish(createId);
      if (startId === null) {
        s.status = 'off';
        return;
      }
      s.status = 'running';
      this.room.actions.finish(startId);
      if (this.room.opts.realServers) void this.deps.boot.boot(s);
    });
  }

  private deleteServer(c: RequestContext): Answer {
    const s = this.room.servers.named(c);
    if (s.deleteActionId !== null) {
      const existing = this.room.actions.get(s.deleteActionId);
      if (existing) return { status: 200, body: { action: existing } };
    }
    const action = this.room.actions.start('delete_server', s.id);
    s.deleteActionId = action.id;
    s.status = 'deleting';
    for (const t of s.timers) clearTimeout(t);
    s.timers.clear();
    for (const a of this.room.actions.of('server', s.id)) {
      if (a.id !== action.id && a.status === 'running') {
        this.room.actions.finish(a.id, { code: 'action_failed', message: 'server was deleted' });
      }
    }
    s.machineStopped = Promise.all([
      this.deps.boot.stopLink(s),
      s.machine ? s.machine.stop() : (s.machineStopped ?? Promise.resolve()),
    ]).then(() => undefined);
    const removed = (): void => {
      void (s.machineStopped ?? Promise.resolve()).then(() => {
        s.deleted = true;
        this.deps.volumes.detachAll(s.id);
        this.room.actions.finish(action.id);
        this.deps.addresses.release(s.address);
      });
    };
    // A held delete keeps the server in "deleting" until released.
    this.room.timers.later(s, this.room.opts.deleteDelayMs, () => {
      if (!this.room.actions.held('delete_server', removed)) removed();
    });
    return { status: 200, body: { action: actionJson(action) } };
  }

  /** Rescue mode for the next boot; the keys are read now, as the real API injects them from the ids given. */
  private enableRescue(c: RequestContext): Answer {
    const s = this.room.servers.named(c);
    const req = jsonBody(c, this.room.opts.apiDate) as Schemas['enable_rescue_mode_for_server_request'];
    const keys: string[] = [];
    for (const id of req.ssh_keys ?? []) {
      const k = this.deps.sshKeys.get(id);
      if (!k) throw invalidInput(`SSH key with ID '${id}' not found`, [{ name: 'ssh_keys', messages: [`SSH key ${id} not found`] }]);
      keys.push(k.public_key);
    }
    const action = this.room.actions.start('enable_rescue', s.id);
    s.rescueKeys = keys;
    this.room.timers.later(s, Math.min(200, this.room.opts.bootDelayMs / 4), () => this.room.actions.finish(action.id));
    return {
      status: 201,
      body: { action: actionJson(action), root_password: randomBytes(15).toString('base64url') },
    };
  }

  private powerOn(c: RequestContext): Answer {
    const s = this.room.servers.named(c);
    const action = this.room.actions.start('start_server', s.id);
    if (s.status === 'running' || s.status === 'starting') {
      this.room.actions.finish(action.id);
    } else if (s.status === 'off') {
      s.status = 'starting';
      this.room.timers.later(s, this.room.opts.bootDelayMs, () => {
        s.status = 'running';
        this.room.actions.finish(action.id);
        if (this.room.opts.realServers) void this.deps.boot.boot(s);
        else if (s.rescueKeys !== null) {
          s.rescueKeys = null;
          s.inRescue = true;
        }
      });
    } else {
      this.room.actions.finish(action.id, { code: 'action_failed', message: `server is ${s.status}` });
    }
    return { status: 201, body: { action: actionJson(action) } };
  }

  /** `shutdown` (ACPI; every fake OS honours it) and `poweroff`: sshd and everything in the server die. */
  private powerOff(c: RequestContext, command: 'shutdown_server' | 'stop_server'): Answer {
    const s = this.room.servers.named(c);
    const action = this.room.actions.start(command, s.id);
    if (s.status === 'off' || (command === 'shutdown_server' && s.behaviour === 'ignores-shutdown')) {
      this.room.actions.finish(action.id);
    } else {
      s.status = 'stopping';
      const machine = s.machine;
      s.machine = null;
      const stopped = machine ? machine.stop() : Promise.resolve();
      s.machineStopped = stopped;
      this.room.timers.later(s, Math.min(200, this.room.opts.deleteDelayMs), () => {
        void stopped.then(() => {
          if (s.deleted || s.status === 'deleting') return;
          s.status = 'off';
          s.inRescue = false;
          this.room.actions.finish(action.id);
        });
      });
    }
    return { status: 201, body: { action: actionJson(action) } };
  }
}
