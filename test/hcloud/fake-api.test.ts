// The Hetzner Cloud client against the fake API (test/fake-hcloud, API only: no real servers).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { FakeCloud } from '../fake-hcloud/fake-cloud.js';
import { HcloudClient, type HcloudClientOptions } from '../../src/hcloud/client.js';
import { isNotFound, isVolumeAttached } from '../../src/hcloud/errors.js';
import { abortableSleep } from '../../src/hcloud/retry.js';
import type { CreateServerRequest } from '../../src/hcloud/types.js';
import { rejection } from './rejection.js';

const TOKEN = 'fake-token-for-client-tests-0123456789';

async function startCloud(t: Test): Promise<FakeCloud> {
  const dataDir = mkdtempSync(join(tmpdir(), 'hcloud-client-'));
  const lines: string[] = [];
  const cloud = await FakeCloud.start({
    token: TOKEN,
    dataDir,
    realServers: false,
    bootDelayMs: 60,
    deleteDelayMs: 40,
    log: (l) => lines.push(l),
  });
  t.teardown(async () => {
    await cloud.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });
  return cloud;
}

function client(cloud: FakeCloud, slept: number[] = [], opts: Partial<HcloudClientOptions> = {}): HcloudClient {
  return new HcloudClient({
    endpoint: cloud.url,
    token: TOKEN,
    actionPollIntervalMs: 20,
    // Record the asked-for delay but wait at most 20 ms, so backoff costs no time.
    sleep: (ms, signal) => {
      slept.push(ms);
      return abortableSleep(Math.min(ms, 20), signal);
    },
    ...opts,
  });
}

function request(name: string, extra: Partial<CreateServerRequest> = {}): CreateServerRequest {
  return {
    name,
    server_type: 'cax11',
    image: 'ubuntu-24.04',
    location: 'fsn1',
    labels: { 'nix-hcloud-builder/pool': 'test', 'nix-hcloud-builder/id': name },
    start_after_create: true,
    public_net: { enable_ipv4: false, enable_ipv6: true },
    ...extra,
  };
}

t.test('create, wait, list by label, delete', async (t) => {
  const cloud = await startCloud(t);
  const api = client(cloud);

  const created = await api.createServer(request('builder-a'));
  t.equal(created.server.name, 'builder-a');
  t.equal(created.server.public_net.ipv4, null, 'IPv6 only');
  t.equal(created.action.command, 'create_server');
  t.same(
    created.next_actions.map((a) => a.command),
    ['start_server'],
  );

  const progress: string[] = [];
  const done = await api.waitForActions([created.action, ...created.next_actions], {
    timeoutMs: 10_000,
    onProgress: (a) => progress.push(a.status),
  });
  t.ok(done.every((a) => a.status === 'success'));
  t.ok(progress.includes('success'));
  t.equal((await api.getServer(created.server.id)).status, 'running');

  await api.createServer(request('other', { labels: { 'nix-hcloud-builder/pool': 'other' } }));
  const pool = await api.listServers({ labelSelector: 'nix-hcloud-builder/pool=test' });
  t.same(
    pool.map((s) => s.name),
    ['builder-a'],
  );
  t.equal((await api.listServers({ name: 'other' })).length, 1);
  t.equal((await api.listServers({ labelSelector: 'nix-hcloud-builder/pool' })).length, 2);

  const del = await api.deleteServer(created.server.id);
  t.equal(del.command, 'delete_server');
  await api.waitForActions([del], { timeoutMs: 10_000 });
  const gone = await rejection(api.getServer(created.server.id));
  t.ok(isNotFound(gone));
  t.equal(gone.code, 'not_found');
  t.same(
    (await api.listServers({ labelSelector: 'nix-hcloud-builder/pool=test' })).map((s) => s.name),
    [],
  );
  t.same(cloud.schemaErrors, []);
});

t.test('listing follows pagination past 50', async (t) => {
  const cloud = await startCloud(t);
  const api = client(cloud);
  for (let i = 0; i < 53; i++) await api.createServer(request(`b-${i}`, { start_after_create: false }));
  const all = await api.listServers({ labelSelector: 'nix-hcloud-builder/pool=test' });
  t.equal(all.length, 53);
  t.equal(new Set(all.map((s) => s.id)).size, 53);
  const listCalls = cloud.requests.filter((r) => r.method === 'GET' && r.path === '/servers');
  t.equal(listCalls.length, 2);
});

t.test('a create whose answer is lost is adopted, not repeated', async (t) => {
  const cloud = await startCloud(t);
  const api = client(cloud);
  cloud.inject({ method: 'POST', path: '/servers', status: 504, afterHandling: true });
  const res = await api.createServer(request('builder-lost'));
  t.equal(res.server.name, 'builder-lost');
  t.equal(res.action.command, 'create_server');
  t.same(
    res.next_actions.map((a) => a.command),
    ['start_server'],
  );
  t.equal(cloud.liveServers().length, 1, 'one server, not two');
  await api.waitForActions([res.action, ...res.next_actions], { timeoutMs: 10_000 });
  t.equal((await api.getServer(res.server.id)).status, 'running');

  cloud.inject({ method: 'POST', path: '/servers', networkError: true, afterHandling: true });
  const res2 = await api.createServer(request('builder-lost-2'));
  t.equal(res2.server.name, 'builder-lost-2');
  t.equal(cloud.liveServers().length, 2);
});

t.test('retries injected 429 and 503, not 422', async (t) => {
  const cloud = await startCloud(t);
  const slept: number[] = [];
  const api = client(cloud, slept, { retry: { jitter: false } });
  cloud.inject({
    method: 'GET',
    path: '/server_types',
    status: 429,
    headers: { 'RateLimit-Reset': String(Math.floor(Date.now() / 1000) + 3) },
  });
  cloud.inject({ method: 'GET', path: '/server_types', status: 503 });
  const types = await api.listServerTypes();
  t.ok(types.some((st) => st.name === 'cax11'));
  t.equal(slept.length, 2);
  t.ok((slept[0] ?? 0) > 1000 && (slept[0] ?? 0) <= 3000, `429 waited for the reset (${slept[0]} ms)`);
  t.equal(slept[1], 2000, 'then backoff');

  const bad = await rejection(api.createServer(request('Not_A_Hostname')));
  t.equal(bad.status, 422);
  t.equal(bad.code, 'invalid_input');
  t.equal(cloud.requests.filter((r) => r.method === 'POST').length, 1);
});

t.test('wrong token, catalogue', async (t) => {
  const cloud = await startCloud(t);
  const wrong = new HcloudClient({ endpoint: cloud.url, token: 'not-the-token' });
  const err = await rejection(wrong.listLocations());
  t.equal(err.status, 401);
  t.match(err.message, /token/);
  t.notOk(err.message.includes('not-the-token'));

  const api = client(cloud);
  const locations = await api.listLocations();
  t.ok(locations.some((l) => l.name === 'fsn1'));
  const arm = await api.listImages({ type: 'system', architecture: 'arm' });
  t.ok(arm.length > 0 && arm.every((i) => i.architecture === 'arm' && i.type === 'system'));
  const snap = cloud.addImage({ description: 'nixos builder', labels: { 'nix-hcloud-builder/image': 'nixos' }, architecture: 'arm' });
  const found = await api.listImages({ type: 'snapshot', labelSelector: 'nix-hcloud-builder/image=nixos', sort: 'created:desc' });
  t.same(
    found.map((i) => i.id),
    [snap.id],
  );
  t.same(cloud.schemaErrors, []);
});

t.test('volumes: create, attach at server create, refused delete, detach, delete; pricing', async (t) => {
  const cloud = await startCloud(t);
  const api = client(cloud);
  const labels = { 'nix-hcloud-builder/pool': 'test', 'nix-hcloud-builder/slot': '0' };
  const created = await api.createVolume({ name: 'nhb-test-0', size: 10, location: 'fsn1', labels });
  t.match(created.volume, { name: 'nhb-test-0', size: 10, server: null, labels, location: { name: 'fsn1' } });
  await api.waitForActions([created.action], { timeoutMs: 10_000 });
  t.equal((await api.getVolume(created.volume.id)).status, 'available');
  t.same(
    (await api.listVolumes({ labelSelector: 'nix-hcloud-builder/pool=test' })).map((v) => v.id),
    [created.volume.id],
  );

  // The CreateServerRequest type takes `volumes`.
  const server = await api.createServer(request('builder-v', { volumes: [created.volume.id] }));
  t.same(server.server.volumes, [created.volume.id]);
  await api.waitForActions([server.action, ...server.next_actions], { timeoutMs: 10_000 });
  t.equal((await api.getVolume(created.volume.id)).server, server.server.id);

  const refused = await rejection(api.deleteVolume(created.volume.id));
  t.ok(isVolumeAttached(refused), `${refused.code}: ${refused.message}`);
  t.equal(cloud.requests.filter((r) => r.method === 'DELETE').length, 1, 'not retried');

  await api.waitForActions([await api.detachVolume(created.volume.id)], { timeoutMs: 10_000 });
  const other = await api.createServer(request('builder-w'));
  await api.waitForActions([other.action, ...other.next_actions], { timeoutMs: 10_000 });
  await api.waitForActions([await api.attachVolume(created.volume.id, other.server.id)], { timeoutMs: 10_000 });
  t.same((await api.getServer(other.server.id)).volumes, [created.volume.id]);
  await api.waitForActions([await api.detachVolume(created.volume.id)], { timeoutMs: 10_000 });
  t.same((await api.updateVolume(created.volume.id, { labels: { ...labels, used: 'yes' } })).labels, { ...labels, used: 'yes' });
  await api.deleteVolume(created.volume.id);
  t.ok(isNotFound(await rejection(api.getVolume(created.volume.id))));

  const pricing = await api.getPricing();
  t.match(pricing.volume.price_per_gb_month, { net: /^\d+\.\d+$/, gross: /^\d+\.\d+$/ });
  t.same(cloud.schemaErrors, []);
});

t.test('a volume create whose answer is lost is adopted, not repeated', async (t) => {
  const cloud = await startCloud(t);
  const api = client(cloud);
  cloud.inject({ method: 'POST', path: '/volumes', status: 504, afterHandling: true });
  const res = await api.createVolume({ name: 'nhb-lost', size: 20, location: 'fsn1', labels: { 'nix-hcloud-builder/pool': 'test' } });
  t.equal(res.volume.name, 'nhb-lost');
  t.equal(res.action.command, 'create_volume');
  t.equal(cloud.volumes().length, 1, 'one volume, not two');
  t.equal(cloud.requests.filter((r) => r.method === 'POST' && r.path === '/volumes').length, 2);
  // Another size is not the volume asked for: the uniqueness error stands.
  cloud.inject({ method: 'POST', path: '/volumes', status: 504 });
  const clash = await rejection(api.createVolume({ name: 'nhb-lost', size: 30, location: 'fsn1' }));
  t.equal(clash.code, 'uniqueness_error');
});
