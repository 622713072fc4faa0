/**
 * The daemon's start against the cloud: a server of ours that the state file knew as ready and
 * that answers is adopted by its pool, with the store slot of the volume it has; every other one
 * is deleted. Deletes a former run left unfinished go on first.
 */
import { instanceSelector, LABEL_POOL } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import type { HcloudClient } from '../hcloud/client.js';
import type { Server } from '../hcloud/types.js';
import type { Deletions } from './deletions.js';
import type { Pool } from './pool.js';
import { isRecordOf, type WorkerRecord } from './state.js';
import type { StoreVolumes } from './store-volumes.js';
import { Worker, type WorkerDeps } from './worker.js';

export interface ReconcileDeps {
  hcloud: Pick<HcloudClient, 'listServers'>;
  instance: string;
  log: Logger;
  pools: Map<string, Pool>;
  stores: Map<string, StoreVolumes>;
  deletions: Pick<Deletions, 'resume' | 'has'>;
  workerDeps: WorkerDeps;
  /** How long an adoption attempt may take per server. */
  adoptTimeoutMs: number;
  /** Deletes a server of ours that no pool manages, in the background. */
  deleteOrphan: (server: Server, reason: string) => void;
}

/** Adopts or deletes each server of ours; answers the counts for the start's log line. */
export async function reconcile(
  previous: WorkerRecord[],
  deps: ReconcileDeps,
): Promise<{ found: number; adopted: number; deleted: number }> {
  const { log } = deps;
  const servers: Server[] = await deps.hcloud.listServers({ labelSelector: instanceSelector(deps.instance) });
  // The store volumes first: an adopted server keeps the slot of the volume it has.
  for (const store of deps.stores.values()) {
    await store.load().catch((err: unknown) => log.error({ err }, 'cannot list the store volumes; trying again at the next boot'));
  }
  // Deletes a former run left unfinished go on first; servers among them are not adopted.
  deps.deletions.resume();
  let adopted = 0;
  let deleting = 0;
  for (const server of servers) {
    const record = previous.find((r) => isRecordOf(r, server));
    const pool = deps.pools.get(server.labels[LABEL_POOL] ?? '');
    if (deps.deletions.has(server)) {
      deleting++;
      continue;
    }
    if (record && pool && record.phase === 'ready' && record.address && server.status === 'running') {
      const worker = new Worker(pool.config, { ...record, id: server.id }, deps.workerDeps);
      try {
        await worker.adopt(deps.adoptTimeoutMs);
        worker.holdStore(deps.stores.get(pool.config.name)?.claim(server.volumes ?? []));
        pool.adopt(worker);
        adopted++;
        continue;
      } catch (err) {
        worker.disconnect();
        log.warn({ server: server.name, err: (err as Error).message }, 'cannot adopt our server; deleting it');
      }
    } else {
      log.warn({ server: server.name, id: server.id, known: Boolean(record) }, 'our server is not adoptable; deleting it');
    }
    deps.deleteOrphan(server, 'not adoptable at start');
    deleting++;
  }
  return { found: servers.length, adopted, deleted: deleting };
}
