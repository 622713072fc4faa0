/**
 * A pool's warm store: one Hetzner Volume per worker slot (maxWorkers slots), each used by at most
 * one server at a time. A boot takes a free slot at once (so two concurrent boots never share a
 * volume), then finds the slot's volume (by label, at start) or creates it in the pool's first
 * location, and waits until no server holds it. The slot is given back when the worker's server
 * is deleted (Hetzner detaches the volume then), or at once when the boot goes cold elsewhere.
 * Servers are deleted, never volumes: only `down --volumes` and `gc --volumes` delete them.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { PoolConfig, StoreConfig } from '../core/config.js';
import { LABEL_POOL, LABEL_SLOT, poolSelector, volumeLabels, volumeName } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import type { HcloudClient } from '../hcloud/client.js';
import type { Volume } from '../hcloud/types.js';
import { HcloudError, isNotFound } from '../hcloud/errors.js';
import { DEFAULT_DELETE_POLICY, deleteRetryDelayMs, type DeletePolicy } from './deletions.js';

export interface StoreVolume {
  id: number;
  name: string;
  location: string;
  slot: number;
  sizeGb: number;
}

/** A slot held by one worker; `release` is safe to call more than once. */
export interface StoreLease {
  readonly slot: number;
  /** The slot's volume; undefined when it could not be had (the worker boots cold). */
  readonly volume: StoreVolume | undefined;
  release(): void;
}

export interface StoreVolumesDeps {
  hcloud: Pick<HcloudClient, 'listVolumes' | 'createVolume' | 'getVolume' | 'waitForActions'>;
  instance: string;
  log: Logger;
  /** How long a boot waits for its volume to be detached from a server being deleted; default 60 s. */
  detachWaitMs?: number;
  /** Throws (BudgetExceeded) when a volume of `sizeGb` may not be created: the boot then goes cold. */
  checkBudget?: (sizeGb: number, what: string) => Promise<void>;
}

/** The slot a volume of ours stands for, or undefined when its label is not a slot number. */
export function slotOf(volume: Pick<Volume, 'labels'>): number | undefined {
  const raw = volume.labels[LABEL_SLOT];
  return raw !== undefined && /^\d{1,4}$/.test(raw) ? Number(raw) : undefined;
}

export function storeVolumeOf(volume: Volume, slot: number): StoreVolume {
  return { id: volume.id, name: volume.name, location: volume.location.name, slot, sizeGb: volume.size };
}

export class StoreVolumes {
  private readonly bySlot = new Map<number, StoreVolume>();
  private readonly held = new Set<number>();
  private loaded: Promise<void> | undefined;
  private readonly log: Logger;

  constructor(
    private readonly pool: PoolConfig & { store: StoreConfig },
    private readonly deps: StoreVolumesDeps,
  ) {
    this.log = deps.log.child({ pool: pool.name, component: 'store' });
  }

  /** The slots' volumes known so far (status, tests). */
  get volumes(): StoreVolume[] {
    return [...this.bySlot.values()].sort((a, b) => a.slot - b.slot);
  }

  /**
   * Finds this pool's volumes by label: at start, before servers are adopted. Of two volumes
   * labelled with one slot (a crash between create and label?), the older one serves it.
   */
  load(signal?: AbortSignal): Promise<void> {
    this.loaded ??= this.deps.hcloud
      .listVolumes({ labelSelector: poolSelector(this.deps.instance, this.pool.name), sort: ['id:asc'] }, signal)
      .then(
        (found) => {
          for (const volume of found) {
            const slot = slotOf(volume);
            if (slot === undefined || slot >= this.pool.maxWorkers || this.bySlot.has(slot) || volume.labels[LABEL_POOL] !== this.pool.name)
              continue;
            this.bySlot.set(slot, storeVolumeOf(volume, slot));
          }
          this.log.info({ volumes: this.volumes.map((v) => `${v.name} (${v.id}, ${v.location})`) }, 'store volumes found');
        },
        (err: unknown) => {
          this.loaded = undefined;
          throw err;
        },
      );
    return this.loaded;
  }

  /** An adopted server's slot (after a restart): the slot of the volume it has attached, if any. */
  claim(volumeIds: number[]): StoreLease | undefined {
    const volume = this.volumes.find((v) => volumeIds.includes(v.id));
    if (!volume || this.held.has(volume.slot)) return undefined;
    this.held.add(volume.slot);
    return { slot: volume.slot, volume, release: this.releaser(volume.slot) };
  }

  /**
   * Takes the lowest free slot now, then gets its volume ready for a new server: found or created
   * in the pool's first location, and detached. Throws only when the boot is aborted; any other
   * trouble gives a lease without a volume (a cold store), logged and said in `note`.
   */
  async acquire(signal: AbortSignal, note: (line: string) => void): Promise<StoreLease> {
    let slot = 0;
    while (this.held.has(slot)) slot++;
    this.held.add(slot);
    const release = this.releaser(slot);
    try {
      await this.load(signal);
      let volume = this.bySlot.get(slot) ?? (await this.create(slot, signal, note));
      if (!(await this.waitDetached(volume, signal))) {
        // Deleted behind our back (down --volumes while we run): the slot gets a new, empty one.
        this.log.warn({ volume: volume.name, id: volume.id }, "the slot's store volume is gone; creating another");
        this.bySlot.delete(slot);
        volume = await this.create(slot, signal, note);
        await this.waitDetached(volume, signal);
      }
      return { slot, volume, release };
    } catch (err) {
      if (signal.aborted) {
        release();
        throw err;
      }
      this.log.warn({ slot, err: (err as Error).message }, 'store volume unavailable; this worker starts with an empty store');
      note(`store volume of slot ${slot} unavailable (${(err as Error).message}); this worker starts with an empty store`);
      return { slot, volume: undefined, release };
    }
  }

  private async create(slot: number, signal: AbortSignal, note: (line: string) => void): Promise<StoreVolume> {
    const location = this.pool.locations[0] as string;
    const name = volumeName(this.deps.instance, this.pool.name, slot);
    await this.deps.checkBudget?.(this.pool.store.volumeGb, `store volume ${name} (${this.pool.store.volumeGb} GB in ${location})`);
    const labels = volumeLabels(this.deps.instance, this.pool.name, slot);
    let volume: StoreVolume;
    try {
      const answer = await this.deps.hcloud.createVolume(
        { name, size: this.pool.store.volumeGb, location, format: 'ext4', labels },
        signal,
      );
      await this.deps.hcloud.waitForActions([answer.action, ...answer.next_actions], { signal });
      volume = storeVolumeOf(answer.volume, slot);
    } catch (err) {
      // Ours already, by name and labels: made by a boot aborted after its create was sent.
      if (!(err instanceof HcloudError && err.code === 'uniqueness_error')) throw err;
      const found = (await this.deps.hcloud.listVolumes({ name }, signal)).find(
        (v) => v.name === name && Object.entries(labels).every(([key, value]) => v.labels[key] === value),
      );
      if (!found) throw err;
      volume = storeVolumeOf(found, slot);
      this.bySlot.set(slot, volume);
      this.log.info({ volume: name, id: volume.id }, "found the slot's store volume by its name");
      return volume;
    }
    this.bySlot.set(slot, volume);
    this.log.info({ volume: name, id: volume.id, location, sizeGb: volume.sizeGb }, 'created a store volume');
    note(`created store volume ${name} (id ${volume.id}, ${volume.sizeGb} GB in ${location})`);
    return volume;
  }

  /**
   * Waits until the volume is available and attached nowhere: a server being deleted (after a
   * restart, say) holds it until its delete ends. False when the volume is gone.
   */
  private async waitDetached(volume: StoreVolume, signal: AbortSignal): Promise<boolean> {
    const deadline = Date.now() + (this.deps.detachWaitMs ?? 60_000);
    for (;;) {
      const live = await this.deps.hcloud.getVolume(volume.id, signal).catch((err: unknown) => {
        if (isNotFound(err)) return undefined;
        throw err;
      });
      if (!live) return false;
      const attached = live.server !== null && live.server !== undefined;
      if (!attached && live.status === 'available') return true;
      if (Date.now() >= deadline)
        throw new Error(
          attached ? `volume ${volume.name} is still attached to server ${live.server}` : `volume ${volume.name} is still ${live.status}`,
        );
      await sleep(1000, undefined, { signal });
    }
  }

  private releaser(slot: number): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.held.delete(slot);
    };
  }
}

/** A volume labelled as this instance's that no configured pool slot uses, and why. */
export interface UnusedVolume {
  volume: Volume;
  reason: string;
}

/**
 * This instance's volumes that no slot of the config uses: their pool is gone or keeps no store,
 * their slot is past maxWorkers, or another volume (the older one) serves their slot.
 */
export function unusedVolumes(pools: Record<string, PoolConfig>, volumes: Volume[]): UnusedVolume[] {
  const unused: UnusedVolume[] = [];
  const served = new Set<string>();
  for (const volume of [...volumes].sort((a, b) => a.id - b.id)) {
    const poolName = volume.labels[LABEL_POOL] ?? '';
    const pool = pools[poolName];
    const slot = slotOf(volume);
    if (!pool) unused.push({ volume, reason: `its pool "${poolName}" is not in the config` });
    else if (!pool.store) unused.push({ volume, reason: `its pool "${poolName}" has no store` });
    else if (slot === undefined || slot >= pool.maxWorkers)
      unused.push({ volume, reason: `its slot ${volume.labels[LABEL_SLOT] ?? '(none)'} is not one of the pool's ${pool.maxWorkers}` });
    else if (served.has(`${poolName}/${slot}`)) unused.push({ volume, reason: `an older volume serves slot ${slot}` });
    else served.add(`${poolName}/${slot}`);
  }
  return unused;
}

/**
 * Deletes a volume for good: detached first when a server has it (Hetzner refuses to delete an
 * attached volume). Failures (423 locked while an action runs on it, 429, 5xx, any error) are
 * retried with the deletion queue's backoff (deletions.ts) until the volume is gone or `waitMs`
 * would be passed; then the last error is thrown. A volume already gone counts as deleted.
 */
export async function removeVolume(
  hcloud: Pick<HcloudClient, 'getVolume' | 'detachVolume' | 'deleteVolume' | 'waitForActions'>,
  id: number,
  options: { waitMs: number; policy?: Pick<DeletePolicy, 'firstRetryMs' | 'maxRetryMs'> },
): Promise<void> {
  const policy = { ...DEFAULT_DELETE_POLICY, ...options.policy };
  const deadline = Date.now() + options.waitMs;
  for (let failures = 1; ; failures++) {
    try {
      const live = await hcloud.getVolume(id);
      if (live.server !== null && live.server !== undefined)
        await hcloud.waitForActions([await hcloud.detachVolume(id)], { timeoutMs: 120_000 });
      await hcloud.deleteVolume(id);
      return;
    } catch (err) {
      if (isNotFound(err)) return;
      const delayMs = deleteRetryDelayMs(policy, failures);
      if (Date.now() + delayMs > deadline) throw err;
      await sleep(delayMs);
    }
  }
}
