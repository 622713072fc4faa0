/** A boot's create step: placements tried in order, against stand-ins for the API, prices and the state file. */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeCloud } from '../fake-hcloud/fake-cloud.js';
import { parseConfig, type PoolConfig } from '../../src/core/config.js';
import { createLogger } from '../../src/core/log.js';
import { BootError } from '../../src/daemon/boot-error.js';
import { BudgetExceeded } from '../../src/daemon/ledger.js';
import type { WorkerRecord } from '../../src/daemon/state.js';
import type { StoreLease } from '../../src/daemon/store-volumes.js';
import { createWorkerServer, resolveImage, type WorkerCreateDeps } from '../../src/daemon/worker-create.js';
import { WorkerStoreSlot } from '../../src/daemon/worker-store.js';
import { HcloudClient } from '../../src/hcloud/client.js';
import { HcloudError } from '../../src/hcloud/errors.js';

const log = createLogger({ level: 'silent' });
const TOKEN = 'worker-create-test-token';

function pool(extra: Record<string, unknown> = {}): PoolConfig {
  const config = parseConfig(
    { instance: 'laptop', pools: { x86: { serverTypes: ['cx23', 'cx33'], locations: ['nbg1', 'fsn1'], ...extra } } },
    '/',
  );
  return config.pools.x86 as PoolConfig;
}

function record(): WorkerRecord {
  return {
    id: 0,
    name: 'nhb-laptop-x86-w1',
    pool: 'x86',
    serverType: '',
    location: '',
    phase: 'creating',
    sshPort: 22,
    hostPublicKey: 'ssh-ed25519 AAAA',
    loginPrivateKey: 'private',
    createdAt: new Date().toISOString(),
    activeSessions: 0,
  };
}

/**
 * Deps whose create fails with `errors[n]` on the n-th call (none: created) and whose price check
 * refuses the placements in `overBudget`; `saved` is what the record said at each save.
 */
function deps(rec: WorkerRecord, errors: (HcloudError | undefined)[], overBudget: string[] = []) {
  const calls: { server_type: string; location: string; volumes?: number[] }[] = [];
  const saved: string[] = [];
  const opened: unknown[] = [];
  const d = {
    instance: 'laptop',
    save: () => {
      saved.push(`${rec.serverType} in ${rec.location}`);
      return Promise.resolve();
    },
    money: {
      priceServer: (serverType: string, location: string) =>
        overBudget.includes(`${serverType} in ${location}`)
          ? Promise.reject(new BudgetExceeded('over the budget'))
          : Promise.resolve('0.0100'),
      ledger: { opened: (entry: unknown) => opened.push(entry) },
    },
    hcloud: {
      createServer: (body: { server_type: string; location: string; volumes?: number[] }) => {
        calls.push(body);
        const err = errors[calls.length - 1];
        if (err) return Promise.reject(err);
        return Promise.resolve({ server: { id: 42, created: '2026-01-01T00:00:00Z' }, action: { id: 1 }, next_actions: [] });
      },
    },
  };
  return { deps: d as unknown as WorkerCreateDeps, calls, saved, opened };
}

const unavailable = (): HcloudError => new HcloudError({ status: 412, code: 'resource_unavailable', message: 'no capacity' });
const cold = (): WorkerStoreSlot => new WorkerStoreSlot(undefined, log, () => undefined);

t.test('placements are tried in order past a spent budget and a full location; the record is saved before each create', async (t) => {
  const rec = record();
  const { deps: d, calls, saved, opened } = deps(rec, [unavailable()], ['cx23 in nbg1']);
  const worker = { pool: pool(), rec, image: 'debian-12', userData: () => 'user data', store: cold(), log };
  await createWorkerServer(worker, d, new AbortController().signal);
  t.same(
    calls.map((c) => `${c.server_type} in ${c.location}`),
    ['cx23 in fsn1', 'cx33 in nbg1'],
  );
  t.same(saved, ['cx23 in fsn1', 'cx33 in nbg1']);
  t.equal(rec.id, 42);
  t.equal(rec.hourlyPriceEur, '0.0100');
  t.equal(opened.length, 1, 'the ledger opened the server');
});

t.test('when no placement takes the server the boot fails, saying what was tried', async (t) => {
  const rec = record();
  const { deps: d } = deps(rec, [unavailable(), unavailable(), unavailable()], ['cx33 in fsn1']);
  const worker = { pool: pool(), rec, image: 'debian-12', userData: () => '', store: cold(), log };
  const err = await createWorkerServer(worker, d, new AbortController().signal).catch((e: unknown) => e);
  t.type(err, BootError);
  t.equal(
    (err as Error).message,
    'no server could be created; tried cx23 in nbg1 (resource_unavailable), cx23 in fsn1 (resource_unavailable), cx33 in nbg1 (resource_unavailable), cx33 in fsn1 (over the budget)',
  );
});

t.test("a warm store boots in its volume's location with the volume, and goes cold elsewhere when that is full", async (t) => {
  const rec = record();
  const released: number[] = [];
  const lease: StoreLease = {
    slot: 0,
    volume: { id: 7, name: 'store-0', location: 'fsn1', slot: 0, sizeGb: 20 },
    release: () => released.push(0),
  };
  const store = new WorkerStoreSlot(undefined, log, () => undefined);
  store.hold(lease);
  const { deps: d, calls } = deps(rec, [unavailable(), unavailable()]);
  const worker = { pool: pool({ store: { volumeGb: 20 } }), rec, image: 'debian-12', userData: () => '', store, log };
  await createWorkerServer(worker, d, new AbortController().signal);
  t.same(
    calls.map((c) => `${c.server_type} in ${c.location}${c.volumes ? ` with ${c.volumes.join()}` : ''}`),
    ['cx23 in fsn1 with 7', 'cx33 in fsn1 with 7', 'cx23 in nbg1'],
  );
  t.same(released, [0], 'the slot went back');
  t.equal(rec.volumeId, undefined);
});

t.test('an image by label selector is the newest available snapshot (fake API)', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'worker-create-test-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const api = await FakeCloud.start({ token: TOKEN, dataDir: root, realServers: false, bootDelayMs: 20, deleteDelayMs: 10 });
  t.teardown(() => api.stop());
  const hc = new HcloudClient({ endpoint: api.url, token: TOKEN, actionPollIntervalMs: 10, logger: log });
  const base = await hc.createServer({
    name: 'base',
    server_type: 'cx23',
    location: 'fsn1',
    image: 'ubuntu-24.04',
    start_after_create: false,
  });
  await hc.waitForActions([base.action]);
  const snapshot = async (labels: Record<string, string>): Promise<number> => {
    const r = await hc.createImage(base.server.id, { type: 'snapshot', labels });
    await hc.waitForActions([r.action]);
    return r.image.id;
  };
  const older = await snapshot({ 'nix-hcloud-builder/image': 'worker' });
  const newer = await snapshot({ 'nix-hcloud-builder/image': 'worker' });
  await snapshot({ 'nix-hcloud-builder/image': 'other' });
  t.ok(newer > older);

  const { image } = pool({ image: { labelSelector: 'nix-hcloud-builder/image=worker' } });
  const resolve = (): Promise<string> => resolveImage(hc, image, new AbortController().signal);
  t.equal(await resolve(), String(newer), 'the newest matching snapshot, even within the same second');
  await hc.deleteImage(newer);
  t.equal(await resolve(), String(older), 'after deleting it, the next newest');
  await hc.deleteImage(older);
  await t.rejects(resolve(), /no available snapshot matches the label selector/);
  t.equal(await resolveImage(hc, { name: 'debian-12' }, new AbortController().signal), 'debian-12', 'a name is taken as it is');
  t.same(api.schemaErrors, []);
});
