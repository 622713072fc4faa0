/** The daemon's periodic sweep against stand-ins for the API, the pools and the deletion queue. */
import t from 'tap';
import { parseConfig } from '../../src/core/config.js';
import { LABEL_POOL } from '../../src/core/labels.js';
import { createLogger } from '../../src/core/log.js';
import { Sweep, type SweepDeps } from '../../src/daemon/sweep.js';
import type { Server } from '../../src/hcloud/types.js';

const log = createLogger({ level: 'silent' });
const config = parseConfig({ instance: 'laptop', pools: { x86: { serverTypes: ['cx23'] } } }, '/');

function server(id: number, name: string): Server {
  return { id, name, labels: { [LABEL_POOL]: 'x86' }, created: new Date().toISOString(), status: 'running' } as unknown as Server;
}

/**
 * A sweep whose listing answers `list()`; of the servers, the pool knows `known` and the deletion
 * queue holds `deleting`.
 */
function sweep(list: () => Promise<Server[]>, known: string[], deleting: string[] = [], lost?: string) {
  const deleted: string[] = [];
  const counts = { lifetimes: 0, listed: 0 };
  const deps: SweepDeps = {
    hcloud: {
      listServers: () => {
        counts.listed++;
        return list();
      },
    },
    instance: 'laptop',
    log,
    pools: new Map([['x86', { enforceLifetime: () => void counts.lifetimes++, knows: (s: { name: string }) => known.includes(s.name) }]]),
    poolConfigs: config.pools,
    deletions: { has: (s: { name: string }) => deleting.includes(s.name), pending: [] },
    instanceLost: () => lost,
    deleteOrphan: (s) => deleted.push(s.name),
  };
  return { sweep: new Sweep(deps), deleted, counts };
}

const listing = (servers: Server[]) => () => Promise.resolve(servers);

t.test('a server of ours that no pool knows is deleted; known ones and pending deletes are not', async (t) => {
  const s = sweep(listing([server(1, 'worker'), server(2, 'stray'), server(3, 'going')]), ['worker'], ['going']);
  await s.sweep.run();
  t.same(s.deleted, ['stray']);
  t.same(s.counts, { lifetimes: 1, listed: 1 }, 'the pools enforced their lifetime caps');
});

t.test('with the instance lost to another daemon nothing unknown is deleted', async (t) => {
  const s = sweep(listing([server(2, 'stray')]), [], [], 'lease taken by another holder');
  await s.sweep.run();
  t.same(s.deleted, []);
});

t.test('never two sweeps at once: a second run joins the one in progress', async (t) => {
  let answer: (servers: Server[]) => void = () => undefined;
  let hold = true;
  const s = sweep(() => (hold ? new Promise<Server[]>((resolve) => (answer = resolve)) : Promise.resolve([])), []);
  const first = s.sweep.run();
  const second = s.sweep.run();
  t.equal(first, second);
  let idle = false;
  const waited = s.sweep.idle.then(() => (idle = true));
  await Promise.resolve();
  t.equal(idle, false, 'idle waits for the sweep in progress');
  answer([server(2, 'stray')]);
  await first;
  await waited;
  t.same(s.counts, { lifetimes: 1, listed: 1 });
  t.same(s.deleted, ['stray']);
  hold = false;
  await s.sweep.run();
  t.same(s.counts, { lifetimes: 2, listed: 2 }, 'the next run sweeps again');
});

t.test('a failed listing is logged and the next run sweeps again', async (t) => {
  let calls = 0;
  const s = sweep(() => (++calls === 1 ? Promise.reject(new Error('503')) : Promise.resolve([server(2, 'stray')])), []);
  await s.sweep.run();
  t.same(s.deleted, []);
  await s.sweep.run();
  t.same(s.deleted, ['stray']);
});
