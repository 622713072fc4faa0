// The fake cloud's images: the catalogue's system images, and the snapshots tests add
// (`addImage`: a NixOS worker image, a stock image without Nix, …) or `create_image` makes of a
// server's disk; which of them boot how.

import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { components } from '../../src/hcloud/openapi.js';
import { actionJson } from './actions.js';
import { ApiError, iso } from './api.js';
import { systemImages, type Image } from './catalog.js';
import type { Router } from './http.js';
import type { Labels } from './labels.js';
import { checkLabels, byId, jsonBody, paginate, selector, sorter, type Answer, type RequestContext } from './request.js';
import type { Room } from './room.js';
import type { BootMode, SnapshotDisk } from './server-record.js';

type Schemas = components['schemas'];

/** An image `addImage` adds (see there). */
export interface NewImage {
  description: string;
  labels?: Labels;
  architecture?: 'x86' | 'arm';
  type?: 'snapshot' | 'backup' | 'app' | 'system';
  name?: string | null;
  diskSize?: number;
  imageSize?: number;
  worker?: 'nixos' | 'stock';
  storeUnit?: boolean;
}

export class Images {
  private readonly list: Image[] = systemImages();
  private readonly snapshotDisks = new Map<number, SnapshotDisk>();
  /** Ids of the images whose servers boot as NixOS workers. */
  private readonly nixosImages = new Set<number>();
  /** Stock images without Nix (`addImage({ worker: 'stock' })`): cloud-init boots, runcmd in cloud-final's environment. */
  private readonly stockImages = new Set<number>();
  /** NixOS worker images built before the store unit (`addImage({ storeUnit: false })`). */
  private readonly nixosImagesWithoutStore = new Set<number>();
  private nextId = 300_000_001;

  constructor(private readonly room: Room) {}

  /** The images as they are (for lookups; `all()` for copies). */
  get current(): readonly Image[] {
    return this.list;
  }

  /** The images (all types) as the API lists them. */
  all(): Image[] {
    return this.list.map((i) => ({ ...i, labels: { ...i.labels } }));
  }

  /** The disk a snapshot made by `create_image` remembers (undefined for other images). */
  snapshotDisk(imageId: number): SnapshotDisk | undefined {
    return this.snapshotDisks.get(imageId);
  }

  /** How a server of this image boots. */
  bootMode(imageId: number): BootMode {
    return this.nixosImages.has(imageId) ? 'nixos' : this.stockImages.has(imageId) ? 'stock' : 'cloud-init';
  }

  /** A NixOS worker image has the store unit unless it was built before it. */
  hasStoreUnit(imageId: number): boolean {
    return !this.nixosImagesWithoutStore.has(imageId);
  }

  /** Adds an image (a snapshot by default; `worker`: how its servers boot, see FakeCloud.addImage). */
  add(img: NewImage): Image {
    const image: Image = {
      id: this.nextId++,
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
    this.list.push(image);
    if (img.worker === 'nixos') this.nixosImages.add(image.id);
    if (img.worker === 'stock') this.stockImages.add(image.id);
    if (img.worker === 'nixos' && img.storeUnit === false) this.nixosImagesWithoutStore.add(image.id);
    return image;
  }

  routes(router: Router): void {
    router.add('GET', '/images', (c) => this.listRoute(c));
    router.add('GET', '/images/{id}', (c) => ({ status: 200, body: { image: byId(this.list, c, 'image') } }));
    router.add('DELETE', '/images/{id}', (c) => this.deleteRoute(c));
    router.add('PUT', '/images/{id}', (c) => this.updateRoute(c));
    router.add('POST', '/servers/{id}/actions/create_image', (c) => this.createFromServer(c));
  }

  private listRoute(c: RequestContext): Answer {
    const types = c.query.getAll('type');
    const statuses = c.query.getAll('status');
    const name = c.query.get('name');
    const arch = c.query.get('architecture');
    const sel = selector(c.query);
    const items = this.list
      .filter(
        (i) =>
          (types.length === 0 || types.includes(i.type)) &&
          (statuses.length === 0 || statuses.includes(i.status)) &&
          (name === null || i.name === name) &&
          (arch === null || i.architecture === arch) &&
          (sel === null || sel(i.labels)),
      )
      .sort(sorter(c.query, ['id', 'name', 'created']));
    const p = paginate(items, c.query);
    return { status: 200, body: { images: p.items, meta: p.meta } };
  }

  /**
   * A snapshot of the server's disk. The fake's disk is `DIR/disk`, the file the rescue system
   * has at /dev/sda; the snapshot remembers its sha256 and size (servers created from the
   * snapshot report them as `disk`). A server whose disk was never written keeps the disk of
   * the snapshot it was created from, if any.
   */
  private createFromServer(c: RequestContext): Answer {
    const s = this.room.servers.named(c);
    const req = jsonBody(c, this.room.opts.apiDate) as Schemas['create_image_from_server_request'];
    const labels = req.labels ?? {};
    checkLabels(labels);
    const diskFile = join(s.dir, 'disk');
    let disk = s.disk;
    if (existsSync(diskFile)) {
      const bytes = readFileSync(diskFile);
      disk = { sha256: createHash('sha256').update(bytes).digest('hex'), bytes: bytes.length };
    }
    const created = new Date();
    const image: Image = {
      id: this.nextId++,
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
    this.list.push(image);
    if (disk !== null) this.snapshotDisks.set(image.id, disk);
    // A snapshot of a NixOS worker is a NixOS worker image, unless the rescue system wrote its disk.
    if (s.bootMode === 'nixos' && !existsSync(diskFile)) this.nixosImages.add(image.id);
    const action = this.room.actions.start('create_image', s.id);
    action.resources.push({ id: image.id, type: 'image' });
    this.room.timers.later(null, Math.min(300, this.room.opts.bootDelayMs / 2), () => {
      image.status = 'available';
      image.image_size = disk === null ? 0 : Math.max(0.001, Math.round((disk.bytes / 1e9) * 1000) / 1000);
      this.room.actions.finish(action.id);
    });
    return {
      status: 201,
      body: { action: actionJson(action), image: { ...image, labels: { ...image.labels } } },
    };
  }

  /** `PUT /images/{id}`: description and labels (the labels given replace all of them). */
  private updateRoute(c: RequestContext): Answer {
    const image = byId(this.list, c, 'image');
    const req = jsonBody(c, this.room.opts.apiDate) as Schemas['replace_image_request'];
    if (req.labels !== undefined) {
      checkLabels(req.labels);
      image.labels = { ...req.labels };
    }
    if (req.description !== undefined) image.description = req.description;
    return { status: 200, body: { image: { ...image, labels: { ...image.labels } } } };
  }

  private deleteRoute(c: RequestContext): Answer {
    const image = byId(this.list, c, 'image');
    if (image.type !== 'snapshot' && image.type !== 'backup') {
      throw new ApiError(403, 'forbidden', `image ${image.id} is a ${image.type} image and cannot be deleted`);
    }
    this.list.splice(this.list.indexOf(image), 1);
    this.snapshotDisks.delete(image.id);
    this.nixosImages.delete(image.id);
    return { status: 204, body: null };
  }
}
