/**
 * The start against the cloud, for servers that are not adopted (adoption itself needs a worker's
 * sshd: test/e2e/restart.test.ts).
 */
import t from 'tap';
import { LABEL_POOL } from '../../src/core/labels.js';
import { createLogger } from '../../src/core/log.js';
import { reconcile, type ReconcileDeps } from '../../src/daemon/reconcile.js';
import type { WorkerRecord } from '../../src/daemon/state.js';
import type { WorkerDeps } from '../../src/daemon/worker.js';
import type { Server } from '../../src/hcloud/types.js';

const log = createLogger({ level: 'silent' });

function server(id: number, name: string): Server {
  return { id, name, labels: { [LABEL_POOL]: 'x86' }, status: 'running', created: new Date().toISOString() } as unknown as Server;
}

t.test('servers the state did not know as ready are deleted; pending deletes go on first and are left to the queue', async (t) => {
  const order: string[] = [];
  const deps: ReconcileDeps = {
    hcloud: {
      listServers: () => {
        order.push('list');
        return Promise.resolve([server(1, 'unknown'), server(2, 'booting'), server(3, 'being-deleted')]);
      },
    },
    instance: 'laptop',
    log,
    pools: new Map(),
    stores: new Map(),
    deletions: {
      resume: () => void order.push('resume'),
      has: (s) => s.name === 'being-deleted',
    },
    workerDeps: {} as WorkerDeps,
    adoptTimeoutMs: 1000,
    deleteOrphan: (s, reason) => order.push(`delete ${s.name}: ${reason}`),
  };
  const previous = [{ id: 2, name: 'booting', phase: 'booting' } as WorkerRecord];
  t.same(await reconcile(previous, deps), { found: 3, adopted: 0, deleted: 3 });
  t.same(order, ['list', 'resume', 'delete unknown: not adoptable at start', 'delete booting: not adoptable at start']);
});
