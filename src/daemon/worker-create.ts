/**
 * A boot's step 1: the image to boot, and the server's create, tried placement by placement
 * (placement.ts) until one is priced within the budget and the API takes it.
 */
import type { PoolConfig } from '../core/config.js';
import { serverLabels } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import type { HcloudClient } from '../hcloud/client.js';
import { HcloudError, isVolumeAttached } from '../hcloud/errors.js';
import type { CreateServerResponse } from '../hcloud/types.js';
import { BootError } from './boot-error.js';
import { BudgetExceeded } from './ledger.js';
import type { Money } from './money.js';
import { placements, TRY_ELSEWHERE } from './placement.js';
import type { WorkerRecord } from './state.js';
import type { UserDataFor } from './worker-plan.js';
import type { WorkerStoreSlot } from './worker-store.js';

/** What creating a worker's server needs of the daemon. */
export interface WorkerCreateDeps {
  hcloud: HcloudClient;
  /** Prices, the budget check and the ledger. */
  money: Money;
  instance: string;
  /** Persists the record after each change that matters on restart. */
  save: () => Promise<void>;
}

/** The pool's image as the create call takes it: a name, an id, or the newest snapshot of a label selector. */
export async function resolveImage(
  hcloud: Pick<HcloudClient, 'listImages'>,
  ref: PoolConfig['image'],
  signal: AbortSignal,
): Promise<string> {
  if ('name' in ref) return ref.name;
  if ('id' in ref) return String(ref.id);
  // `created` has whole seconds: of two snapshots made in the same second, the higher id is newer.
  const images = await hcloud.listImages({ type: 'snapshot', labelSelector: ref.labelSelector, sort: ['created:desc', 'id:desc'] }, signal);
  const newest = images.find((image) => image.status === 'available');
  if (!newest) throw new BootError(`no available snapshot matches the label selector "${ref.labelSelector}"`);
  return String(newest.id);
}

export interface WorkerToCreate {
  pool: PoolConfig;
  /** The worker's record: the placement, its price, the server's id and its volume are written into it. */
  rec: WorkerRecord;
  image: string;
  userData: UserDataFor;
  /** The warm store slot; with a volume, the server is created first in its location, with it. */
  store: WorkerStoreSlot;
  log: Logger;
}

/**
 * Creates the server: first location that has the first server type, and so on; with a warm
 * store, first in its volume's location, with the volume. Answers the actions to wait for.
 */
export async function createWorkerServer(
  worker: WorkerToCreate,
  deps: WorkerCreateDeps,
  signal: AbortSignal,
): Promise<Pick<CreateServerResponse, 'action' | 'next_actions'>> {
  const { pool, rec, store, log } = worker;
  const tried: string[] = [];
  for (const { serverType, location, volume } of placements(pool, store.volume)) {
    // The volume's location cannot take a server now: boot elsewhere with an empty store.
    if (!volume && store.volume) store.goCold(tried);
    signal.throwIfAborted();
    let price: string | undefined;
    try {
      price = await deps.money.priceServer(serverType, location);
    } catch (err) {
      if (!(err instanceof BudgetExceeded)) throw err;
      tried.push(`${serverType} in ${location} (${err.message})`);
      log.warn({ serverType, location }, err.message);
      continue;
    }
    rec.serverType = serverType;
    rec.location = location;
    if (price !== undefined) rec.hourlyPriceEur = price;
    // Saved before the call: if we die during it, the restart finds the server by its name.
    await deps.save();
    try {
      const answer = await deps.hcloud.createServer(
        {
          name: rec.name,
          server_type: serverType,
          image: worker.image,
          location,
          user_data: worker.userData(volume),
          labels: serverLabels(deps.instance, pool.name),
          start_after_create: true,
          ...(volume ? { volumes: [volume.volumeId], automount: false } : {}),
          public_net: { enable_ipv4: pool.ipv4, enable_ipv6: true },
        },
        signal,
      );
      rec.id = answer.server.id;
      if (volume) rec.volumeId = volume.volumeId;
      deps.money.ledger.opened({
        id: answer.server.id,
        name: rec.name,
        pool: pool.name,
        serverType,
        location,
        hourlyEur: Number(price ?? 0),
        createdAt: answer.server.created,
      });
      return { action: answer.action, next_actions: answer.next_actions };
    } catch (err) {
      // A volume still attached elsewhere (never two servers on one): go on as if out of capacity here.
      if (err instanceof HcloudError && (TRY_ELSEWHERE.has(err.code) || (volume !== undefined && isVolumeAttached(err)))) {
        tried.push(`${serverType} in ${location} (${err.code})`);
        log.warn({ serverType, location, code: err.code }, `cannot create here: ${err.message}`);
        continue;
      }
      throw err;
    }
  }
  throw new BootError(`no server could be created; tried ${tried.join(', ')}`);
}
