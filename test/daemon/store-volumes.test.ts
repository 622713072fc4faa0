/** The warm store's slots and volumes against a small in-memory stand-in for the API's volume calls. */
import t from 'tap';
import { parseConfig, type PoolConfig, type StoreConfig } from '../../src/core/config.js';
import { volumeLabels } from '../../src/core/labels.js';
import { createLogger } from '../../src/core/log.js';
import { StoreVolumes, unusedVolumes, type StoreVolumesDeps } from '../../src/daemon/store-volumes.js';
import { BudgetExceeded } from '../../src/daemon/ledger.js';
import { HcloudError } from '../../src/hcloud/errors.js';
import type { Action, Volume } from '../../src/hcloud/types.js';

const INSTANCE = 'laptop';

function pool(extra: Record<string, unknown> = {}): PoolConfig & { store: StoreConfig } {
  const config = parseConfig(
    {
      instance: INSTANCE,
      pools: { x86_64: { serverTypes: ['cx23'], locations: ['nbg1', 'fsn1'], maxWorkers: 2, store: { volumeGb: 20 }, ...extra } },
    },
    '/',
  );
  return config.pools.x86_64 as PoolConfig & { store: StoreConfig };
}

function volume(id: number, name: string, labels: Record<string, string>, server: number | null = null): Volume {
  return {
    id,
    name,
    size: 20,
    labels,
    server,
    status: 'available',
    location: { name: 'nbg1' },
    created: new Date().toISOString(),
  } as unknown as Volume;
}

/** The API's volume calls over a list; `created` records each create. */
function api(volumes: Volume[]) {
  const created: { name: string; location: string; size: number; labels: Record<string, string> }[] = [];
  let nextId = 500;
  const action = { id: 1, command: 'create_volume', status: 'success' } as Action;
  const hcloud: StoreVolumesDeps['hcloud'] = {
    listVolumes: async (q = {}) =>
      volumes.filter(
        (v) =>
          (!q.name || v.name === q.name) &&
          (!q.labelSelector ||
            q.labelSelector.split(',').every((kv) => {
              const [k, val] = kv.split('=');
              return v.labels[k as string] === val;
            })),
      ),
    createVolume: async (o) => {
      if (volumes.some((v) => v.name === o.name))
        throw new HcloudError({ status: 409, code: 'uniqueness_error', message: 'name is already used' });
      created.push({ name: o.name, location: o.location, size: o.size, labels: o.labels ?? {} });
      const v = volume(nextId++, o.name, o.labels ?? {});
      volumes.push(v);
      return { volume: v, action, next_actions: [] };
    },
    getVolume: async (id) => {
      const v = volumes.find((x) => x.id === id);
      if (!v) throw new HcloudError({ status: 404, code: 'not_found', message: 'volume not found' });
      return v;
    },
    waitForActions: async (actions) => actions,
  };
  return { hcloud, created, volumes };
}

const log = createLogger({ level: 'silent' });
const never = new AbortController().signal;

t.test('slots: the lowest free one, its volume found by label or created in the first location', async (t) => {
  const { hcloud, created } = api([
    volume(10, 'old-1', volumeLabels(INSTANCE, 'x86_64', 1)),
    volume(11, 'dup-1', volumeLabels(INSTANCE, 'x86_64', 1)),
    volume(12, 'past-max', volumeLabels(INSTANCE, 'x86_64', 2)),
    volume(13, 'other-pool', volumeLabels(INSTANCE, 'arm', 0)),
  ]);
  const store = new StoreVolumes(pool(), { hcloud, instance: INSTANCE, log });
  const notes: string[] = [];
  const a = await store.acquire(never, (l) => notes.push(l));
  t.equal(a.slot, 0);
  t.same(
    created,
    [{ name: 'nhb-laptop-x86-64-store-0', location: 'nbg1', size: 20, labels: volumeLabels(INSTANCE, 'x86_64', 0) }],
    "slot 0 had none: made in the pool's first location",
  );
  t.match(notes, [/created store volume nhb-laptop-x86-64-store-0 \(id 500, 20 GB in nbg1\)/]);
  const b = await store.acquire(never, () => undefined);
  t.equal(b.slot, 1);
  t.equal(b.volume?.id, 10, 'slot 1: the older of two labelled volumes');
  t.same(
    store.volumes.map((v) => v.id),
    [500, 10],
    'slots past maxWorkers and other pools are not ours to use',
  );
  a.release();
  a.release();
  const c = await store.acquire(never, () => undefined);
  t.equal(c.slot, 0, 'a released slot is the next one taken');
  t.equal(c.volume?.id, 500);
  t.equal(created.length, 1, 'and its volume is not made again');
});

t.test('claim: an adopted server keeps the slot of the volume it has', async (t) => {
  const { hcloud } = api([volume(10, 'v0', volumeLabels(INSTANCE, 'x86_64', 0), 99)]);
  const store = new StoreVolumes(pool(), { hcloud, instance: INSTANCE, log });
  await store.load();
  const held = store.claim([7, 10]);
  t.equal(held?.slot, 0);
  t.equal(store.claim([10]), undefined, 'one holder per slot');
  t.equal(store.claim([8]), undefined, 'a server without a volume of ours holds no slot');
  const next = await store.acquire(never, () => undefined);
  t.equal(next.slot, 1, 'a new boot takes another slot');
});

t.test('trouble means a cold store, said; an abort gives the slot back and throws', async (t) => {
  const refused = new StoreVolumes(pool(), {
    hcloud: api([]).hcloud,
    instance: INSTANCE,
    log,
    checkBudget: async (gb, what) => {
      throw new BudgetExceeded(`budget: creating ${what} (${gb} GB) would exceed it`);
    },
  });
  const notes: string[] = [];
  const cold = await refused.acquire(never, (l) => notes.push(l));
  t.equal(cold.volume, undefined);
  t.match(notes, [
    /store volume of slot 0 unavailable \(budget: creating store volume nhb-laptop-x86-64-store-0 \(20 GB in nbg1\) \(20 GB\) would exceed it\); this worker starts with an empty store/,
  ]);

  const attached = api([volume(10, 'v0', volumeLabels(INSTANCE, 'x86_64', 0), 99)]);
  const busy = new StoreVolumes(pool(), { hcloud: attached.hcloud, instance: INSTANCE, log, detachWaitMs: 0 });
  const stuck = await busy.acquire(never, () => undefined);
  t.equal(stuck.volume, undefined, 'a volume that stays attached elsewhere is not used');

  const abort = new AbortController();
  const slow = new StoreVolumes(pool(), { hcloud: attached.hcloud, instance: INSTANCE, log, detachWaitMs: 60_000 });
  const pending = slow.acquire(abort.signal, () => undefined);
  setTimeout(() => abort.abort(new Error('boot cancelled')), 50);
  await t.rejects(pending, /boot cancelled|aborted/);
  (attached.volumes[0] as { server: number | null }).server = null;
  const again = await slow.acquire(never, () => undefined);
  t.equal(again?.slot, 0, 'the aborted boot gave its slot back');
});

t.test('a volume deleted behind our back is replaced; one whose create answer was lost is found by name', async (t) => {
  const state = api([volume(10, 'v0', volumeLabels(INSTANCE, 'x86_64', 0))]);
  const store = new StoreVolumes(pool(), { hcloud: state.hcloud, instance: INSTANCE, log });
  await store.load();
  state.volumes.splice(0, 1);
  const lease = await store.acquire(never, () => undefined);
  t.equal(lease.volume?.id, 500, 'a new volume for the slot');

  const lost = api([volume(20, 'nhb-laptop-x86-64-store-0', volumeLabels(INSTANCE, 'x86_64', 0))]);
  const fresh = new StoreVolumes(pool(), {
    hcloud: { ...lost.hcloud, listVolumes: async (q = {}) => (q.labelSelector ? [] : lost.hcloud.listVolumes(q)) },
    instance: INSTANCE,
    log,
  });
  const found = await fresh.acquire(never, () => undefined);
  t.equal(found.volume?.id, 20, "uniqueness_error: the volume of that name and our labels is the slot's");
  t.equal(lost.created.length, 0);
});

t.test('unusedVolumes: what no configured slot uses, and why', async (t) => {
  const config = parseConfig(
    {
      instance: INSTANCE,
      pools: { x86_64: { serverTypes: ['cx23'], maxWorkers: 1, store: { volumeGb: 20 } }, plain: { serverTypes: ['cx23'] } },
    },
    '/',
  );
  const unused = unusedVolumes(config.pools, [
    volume(1, 'a', volumeLabels(INSTANCE, 'x86_64', 0)),
    volume(2, 'b', volumeLabels(INSTANCE, 'x86_64', 0)),
    volume(3, 'c', volumeLabels(INSTANCE, 'x86_64', 1)),
    volume(4, 'd', volumeLabels(INSTANCE, 'plain', 0)),
    volume(5, 'e', volumeLabels(INSTANCE, 'gone', 0)),
    volume(6, 'f', { ...volumeLabels(INSTANCE, 'x86_64', 0), 'nix-hcloud-builder/slot': 'x' }),
  ]);
  t.same(
    unused.map((u) => [u.volume.id, u.reason]),
    [
      [2, 'an older volume serves slot 0'],
      [3, "its slot 1 is not one of the pool's 1"],
      [4, 'its pool "plain" has no store'],
      [5, 'its pool "gone" is not in the config'],
      [6, "its slot x is not one of the pool's 1"],
    ],
  );
});
