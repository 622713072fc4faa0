// Tests of the fake Hetzner Cloud API (test/fake-hcloud): its answers match
// spec/hcloud/openapi.json, its behaviour matches the real API where the
// daemon depends on it, and its servers are real sshd workers with their own
// Nix store.

import t, { type Test } from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { generateKeyPair } from '../../src/ssh/keys.js';
import ssh2 from 'ssh2';
import { FakeCloud, type FakeCloudOptions } from './fake-cloud.js';
import { checkSchema } from './openapi.js';
import { parseSelector, matches, labelProblems } from './labels.js';
import { parseUserData } from './cloud-config.js';
import { price } from './catalog.js';
import type { components } from '../../src/hcloud/openapi.js';

const { Client, utils } = ssh2;
/** ssh2's own generator breaks about one key in 256; src/keys.ts does not. */
function keyPair(comment: string): { private: string; public: string } {
  const pair = generateKeyPair(comment);
  return { private: pair.privateKey, public: pair.publicKey };
}
type Client = InstanceType<typeof Client>;

type Schemas = components['schemas'];

const TOKEN = 'fake-token-0123456789';
/** Not 22: the machine may run its own sshd there. */
const SSH_PORT = 2023;

interface Reply {
  status: number;
  headers: Headers;
  json: unknown;
}

function obj(v: unknown): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`not an object: ${JSON.stringify(v)}`);
  return v as Record<string, unknown>;
}

async function api(cloud: FakeCloud, method: string, path: string, body?: unknown, token: string | null = TOKEN): Promise<Reply> {
  const headers: Record<string, string> = {};
  if (token !== null) headers['Authorization'] = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(`${cloud.url}${path}`, {
    method,
    headers,
    body: body === undefined ? null : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  // A 204 (DELETE of a volume, an image, an ssh key) has no body.
  return { status: res.status, headers: res.headers, json: text === '' ? null : JSON.parse(text) };
}

function errorCode(r: Reply): string {
  return String(obj(obj(r.json)['error'])['code']);
}

async function until<T>(
  what: string,
  f: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function startCloud(t: Test, opts: Partial<FakeCloudOptions> = {}): Promise<{ cloud: FakeCloud; logs: string[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'fake-hcloud-test-'));
  const logs: string[] = [];
  const cloud = await FakeCloud.start({
    token: TOKEN,
    dataDir: dir,
    realServers: false,
    bootDelayMs: 60,
    deleteDelayMs: 40,
    readyDelayMs: 50,
    sshPort: SSH_PORT,
    // Real servers take addresses machine-wide: the rig's range keeps this test off other rigs'.
    ...(opts.realServers && process.env.NHB_RIG_FIRST_ADDRESS ? { firstAddress: Number(process.env.NHB_RIG_FIRST_ADDRESS) } : {}),
    log: (l) => {
      logs.push(l);
      if (process.env['FAKE_HCLOUD_VERBOSE']) process.stderr.write(`[fake-hcloud ${new Date().toISOString()}] ${l}\n`);
    },
    ...opts,
  });
  t.teardown(async () => {
    await cloud.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return { cloud, logs };
}

const baseServer = { server_type: 'cx23', image: 'ubuntu-24.04', location: 'fsn1' };

t.test('catalogue: server types, locations, images match the schema', async (t) => {
  const { cloud } = await startCloud(t);
  const types = await api(cloud, 'GET', '/server_types');
  t.equal(types.status, 200);
  const list = obj(types.json)['server_types'] as Schemas['server_type'][];
  const names = list.map((s) => s.name);
  for (const n of ['cx23', 'cx33', 'cx43', 'cx53', 'cpx12', 'cpx62', 'cax11', 'cax41', 'ccx13', 'ccx63'])
    t.ok(names.includes(n), `${n} listed`);
  const cax11 = list.find((s) => s.name === 'cax11');
  t.equal(cax11?.architecture, 'arm');
  const cx23 = list.find((s) => s.name === 'cx23');
  t.equal(cx23?.architecture, 'x86');
  t.ok(
    cx23?.locations.every((l) => l.deprecation === null),
    'cx23 deprecated nowhere',
  );
  const fsn = cx23?.prices.find((p) => p.location === 'fsn1');
  t.match(fsn?.price_hourly.net, /^\d+\.\d{10}$/, 'net price is a decimal string');
  t.equal(fsn?.price_monthly.gross, '3.5581000000000000', 'gross = net * 1.19');
  t.notOk(
    cx23?.prices.some((p) => p.location === 'ash'),
    'cx23 only in EU',
  );
  t.ok(
    list.some((s) => s.deprecated === true && s.locations.some((l) => l.deprecation !== null)),
    'a deprecated type is listed',
  );
  t.equal(price('1').gross, '1.1900000000000000');
  const meta = obj(obj(types.json)['meta'])['pagination'];
  t.match(meta, { page: 1, per_page: 25, total_entries: list.length });

  const one = await api(cloud, 'GET', `/server_types/${cx23?.id}`);
  t.equal(obj(obj(one.json)['server_type'])['name'], 'cx23');
  t.equal((await api(cloud, 'GET', '/server_types/999999')).status, 404);
  const byName = await api(cloud, 'GET', '/server_types?name=ccx13');
  t.equal((obj(byName.json)['server_types'] as unknown[]).length, 1);

  const locs = await api(cloud, 'GET', '/locations');
  const locNames = (obj(locs.json)['locations'] as Schemas['location'][]).map((l) => l.name);
  t.same(locNames.sort(), ['ash', 'fsn1', 'hel1', 'hil', 'nbg1', 'sin']);
  t.equal((await api(cloud, 'GET', '/locations/1')).status, 200);

  const arm = await api(cloud, 'GET', '/images?type=system&architecture=arm');
  const armImages = obj(arm.json)['images'] as Schemas['image'][];
  t.same(armImages.map((i) => i.name).sort(), ['debian-12', 'ubuntu-24.04']);
  t.ok(armImages.every((i) => i.architecture === 'arm'));
  const ubuntu = await api(cloud, 'GET', '/images?name=ubuntu-24.04');
  t.equal((obj(ubuntu.json)['images'] as unknown[]).length, 2, 'one per architecture');
  const snap = cloud.addImage({ description: 'nixos worker', labels: { role: 'nix-worker' } });
  const snaps = await api(cloud, 'GET', '/images?type=snapshot&label_selector=role%3Dnix-worker');
  t.same(
    (obj(snaps.json)['images'] as Schemas['image'][]).map((i) => i.id),
    [snap.id],
  );
  t.equal((await api(cloud, 'GET', `/images/${snap.id}`)).status, 200);
  t.same(cloud.schemaErrors, []);
});

t.test('server lifecycle: create, get, actions, delete', async (t) => {
  const { cloud } = await startCloud(t, { bootDelayMs: 150, deleteDelayMs: 100 });
  const created = await api(cloud, 'POST', '/servers', {
    ...baseServer,
    name: 'w1',
    labels: { pool: 'x86', 'nix-hcloud-builder/instance': 'i1' },
    user_data: '#cloud-config\n{}\n',
    public_net: { enable_ipv4: true, enable_ipv6: false },
  });
  t.equal(created.status, 201);
  const c = obj(created.json) as unknown as Schemas['create_server_response'];
  t.equal(c.server.status, 'initializing');
  t.equal(c.server.name, 'w1');
  t.equal(c.server.public_net.ipv4?.ip, '127.0.0.10');
  t.equal(c.server.public_net.ipv6, null);
  t.equal(c.server.server_type.name, 'cx23');
  t.equal(c.server.location.name, 'fsn1');
  t.equal(c.server.image?.name, 'ubuntu-24.04');
  t.match(c.action, { command: 'create_server', status: 'running', progress: 0, finished: null });
  t.equal(c.next_actions.length, 1);
  t.equal(c.next_actions[0]?.command, 'start_server');
  t.type(c.root_password, 'string', 'no ssh_keys: a root password, as the real API does');
  const id = c.server.id;

  const running = await until('running', async () => {
    const r = await api(cloud, 'GET', `/servers/${id}`);
    const s = obj(r.json)['server'] as Schemas['server'];
    return s.status === 'running' ? s : null;
  });
  t.equal(running.status, 'running');
  const action = await api(cloud, 'GET', `/actions/${c.action.id}`);
  t.match(obj(action.json)['action'], { status: 'success', progress: 100, command: 'create_server' });
  const both = await api(cloud, 'GET', `/actions?id=${c.action.id}&id=${c.next_actions[0]?.id}`);
  t.same(
    (obj(both.json)['actions'] as Schemas['action'][]).map((a) => a.status),
    ['success', 'success'],
  );
  const viaServer = await api(cloud, 'GET', `/servers/${id}/actions/${c.action.id}`);
  t.equal(viaServer.status, 200);
  t.equal((await api(cloud, 'GET', `/servers/${id}/actions/1`)).status, 404);
  const listed = await api(cloud, 'GET', `/servers/${id}/actions`);
  t.equal((obj(listed.json)['actions'] as unknown[]).length, 2);
  const noId = await api(cloud, 'GET', '/actions');
  t.equal(noId.status, 422, 'the full action listing is gone');
  t.equal(errorCode(noId), 'invalid_input');

  const releaseDeletes = cloud.holdActions('delete_server');
  const del = await api(cloud, 'DELETE', `/servers/${id}`);
  t.equal(del.status, 200);
  const delAction = obj(del.json)['action'] as Schemas['action'];
  t.match(delAction, { command: 'delete_server', status: 'running' });
  t.equal((obj((await api(cloud, 'GET', `/servers/${id}`)).json)['server'] as Schemas['server']).status, 'deleting');
  releaseDeletes();
  await until('deleted', async () => (await api(cloud, 'GET', `/servers/${id}`)).status === 404);
  const gone = await api(cloud, 'GET', `/servers/${id}`);
  t.equal(errorCode(gone), 'not_found');
  t.match(obj((await api(cloud, 'GET', `/actions/${delAction.id}`)).json)['action'], { status: 'success' });
  t.equal((await api(cloud, 'DELETE', `/servers/${id}`)).status, 404);
  t.equal(cloud.liveServers().length, 0);
  t.match(cloud.servers(), [
    { id, name: 'w1', deleted: true, address: '127.0.0.10', serverType: 'cx23', location: 'fsn1', image: 'ubuntu-24.04' },
  ]);

  // The freed name can be used again; addresses go on round-robin.
  const again = await api(cloud, 'POST', '/servers', { ...baseServer, name: 'w1', ssh_keys: ['k'], start_after_create: false });
  t.equal(again.status, 201);
  const a = obj(again.json) as unknown as Schemas['create_server_response'];
  t.equal(a.root_password, null);
  t.same(a.next_actions, []);
  t.equal(a.server.public_net.ipv4?.ip, '127.0.0.11');
  t.match(a.server.public_net.ipv6, { ip: /^2001:db8:/ });
  await until(
    'off',
    async () => (obj((await api(cloud, 'GET', `/servers/${a.server.id}`)).json)['server'] as Schemas['server']).status === 'off',
  );
  t.same(cloud.schemaErrors, []);
});

t.test('create: input errors', async (t) => {
  const { cloud } = await startCloud(t);
  const cases: [string, unknown, number, string, string?][] = [
    ['bad name', { ...baseServer, name: 'bad_name!' }, 422, 'invalid_input', 'name'],
    ['name too long', { ...baseServer, name: 'a'.repeat(64) }, 422, 'invalid_input', 'name'],
    ['unknown type', { ...baseServer, name: 'x', server_type: 'cx99' }, 422, 'invalid_input', 'server_type'],
    ['unknown location', { ...baseServer, name: 'x', location: 'mars1' }, 422, 'invalid_input', 'location'],
    ['unknown image', { ...baseServer, name: 'x', image: 'windows-95' }, 422, 'invalid_input', 'image'],
    ['missing name', { ...baseServer }, 422, 'invalid_input', 'name'],
    ['labels not strings', { ...baseServer, name: 'x', labels: { a: 1 } }, 422, 'invalid_input', 'labels'],
    ['reserved label prefix', { ...baseServer, name: 'x', labels: { 'hetzner.cloud/x': 'y' } }, 422, 'invalid_input', 'labels'],
    ['label value too long', { ...baseServer, name: 'x', labels: { a: 'v'.repeat(64) } }, 422, 'invalid_input', 'labels'],
    [
      'user data over 32 KiB',
      { ...baseServer, name: 'x', user_data: '#cloud-config\n' + '#'.repeat(32 * 1024) },
      422,
      'invalid_input',
      'user_data',
    ],
    ['type not in location', { ...baseServer, name: 'x', location: 'ash' }, 412, 'resource_unavailable'],
    ['not JSON', '{"name": ', 400, 'json_error'],
  ];
  for (const [what, body, status, code, field] of cases) {
    const r = await api(cloud, 'POST', '/servers', body);
    t.equal(r.status, status, `${what}: status`);
    t.equal(errorCode(r), code, `${what}: code`);
    if (field) {
      const fields = obj(obj(obj(r.json)['error'])['details'])['fields'] as { name: string }[];
      t.ok(
        fields.some((f) => f.name === field),
        `${what}: details.fields names ${field}`,
      );
    }
  }
  // Ids work as well as names; an arm type picks the arm build of the image.
  const ok = await api(cloud, 'POST', '/servers', { name: 'arm-1', server_type: '45', image: 'ubuntu-24.04', location: '2' });
  t.equal(ok.status, 201);
  const s = (obj(ok.json) as unknown as Schemas['create_server_response']).server;
  t.equal(s.server_type.name, 'cax11');
  t.equal(s.image?.architecture, 'arm');
  t.equal(s.location.name, 'nbg1');
  const dup = await api(cloud, 'POST', '/servers', { ...baseServer, name: 'arm-1' });
  t.equal(dup.status, 409);
  t.equal(errorCode(dup), 'uniqueness_error');
  t.equal(cloud.liveServers().length, 1, 'failed creates leave nothing behind');
  t.same(cloud.schemaErrors, []);
});

t.test('list servers: pagination, filters, sort', async (t) => {
  const { cloud } = await startCloud(t, { bootDelayMs: 60_000 });
  for (let i = 0; i < 7; i++) {
    const r = await api(cloud, 'POST', '/servers', {
      ...baseServer,
      name: `p${i}`,
      labels: { n: String(i), parity: i % 2 ? 'odd' : 'even' },
    });
    t.equal(r.status, 201);
  }
  const seen: number[] = [];
  for (let page = 1; page <= 3; page++) {
    const r = await api(cloud, 'GET', `/servers?per_page=3&page=${page}`);
    const body = obj(r.json) as unknown as Schemas['list_servers_response'];
    seen.push(...body.servers.map((s) => s.id));
    t.same(
      body.meta.pagination,
      {
        page,
        per_page: 3,
        previous_page: page > 1 ? page - 1 : null,
        next_page: page < 3 ? page + 1 : null,
        last_page: 3,
        total_entries: 7,
      },
      `page ${page} meta`,
    );
  }
  t.equal(new Set(seen).size, 7, 'every server once over the pages');
  t.same(
    seen,
    [...seen].sort((a, b) => a - b),
    'sorted by id',
  );
  const beyond = obj((await api(cloud, 'GET', '/servers?per_page=3&page=4')).json) as unknown as Schemas['list_servers_response'];
  t.same(beyond.servers, []);
  const capped = obj((await api(cloud, 'GET', '/servers?per_page=500')).json) as unknown as Schemas['list_servers_response'];
  t.equal(capped.meta.pagination.per_page, 50);
  const dflt = obj((await api(cloud, 'GET', '/servers')).json) as unknown as Schemas['list_servers_response'];
  t.equal(dflt.meta.pagination.per_page, 25);
  t.equal((await api(cloud, 'GET', '/servers?page=0')).status, 422);
  const byName = obj((await api(cloud, 'GET', '/servers?name=p3')).json) as unknown as Schemas['list_servers_response'];
  t.same(
    byName.servers.map((s) => s.name),
    ['p3'],
  );
  const desc = obj((await api(cloud, 'GET', '/servers?sort=name:desc&per_page=2')).json) as unknown as Schemas['list_servers_response'];
  t.same(
    desc.servers.map((s) => s.name),
    ['p6', 'p5'],
  );
  const initializing = obj(
    (await api(cloud, 'GET', '/servers?status=running&status=initializing')).json,
  ) as unknown as Schemas['list_servers_response'];
  t.equal(initializing.servers.length, 7, 'status filters are ORed');
  const off = obj((await api(cloud, 'GET', '/servers?status=off')).json) as unknown as Schemas['list_servers_response'];
  t.equal(off.servers.length, 0);
  t.equal((await api(cloud, 'GET', '/servers?sort=color')).status, 422);
  t.same(cloud.schemaErrors, []);
});

t.test('label selectors', async (t) => {
  const { cloud } = await startCloud(t);
  const labels: Record<string, Record<string, string>> = {
    a: { pool: 'x86', instance: 'i1', busy: '' },
    b: { pool: 'arm', instance: 'i1' },
    c: { pool: 'x86', instance: 'i2' },
    d: { other: 'yes' },
  };
  for (const [name, l] of Object.entries(labels)) {
    t.equal((await api(cloud, 'POST', '/servers', { ...baseServer, name, labels: l })).status, 201);
  }
  const select = async (sel: string) => {
    const r = await api(cloud, 'GET', `/servers?label_selector=${encodeURIComponent(sel)}`);
    t.equal(r.status, 200, sel);
    return (obj(r.json)['servers'] as Schemas['server'][]).map((s) => s.name).sort();
  };
  t.same(await select('pool=x86'), ['a', 'c']);
  t.same(await select('pool==x86'), ['a', 'c']);
  t.same(await select('pool!=x86'), ['b', 'd'], '!= also matches servers without the key');
  t.same(await select('pool'), ['a', 'b', 'c']);
  t.same(await select('!pool'), ['d']);
  t.same(await select('pool in (arm, x86)'), ['a', 'b', 'c']);
  t.same(await select('pool notin (arm)'), ['a', 'c', 'd']);
  t.same(await select('pool=x86,instance=i1'), ['a']);
  t.same(await select('instance in (i1,i2),pool notin (x86)'), ['b']);
  t.same(await select('busy'), ['a']);
  t.same(await select(''), ['a', 'b', 'c', 'd']);
  const bad = await api(cloud, 'GET', `/servers?label_selector=${encodeURIComponent('pool in (x86')}`);
  t.equal(bad.status, 422);
  t.equal(errorCode(bad), 'invalid_input');

  // The pieces directly.
  t.ok(matches(parseSelector('example.com/role=w'), { 'example.com/role': 'w' }));
  t.same(labelProblems({ 'example.com/role': 'w', k: '' }), []);
  t.equal(labelProblems({ '-bad': 'x' }).length, 1);
  t.equal(labelProblems({ 'Bad_Prefix/x': 'y' }).length, 1);
  t.same(cloud.schemaErrors, []);
});

t.test('fault injection', async (t) => {
  const { cloud } = await startCloud(t);
  cloud.inject({ method: 'POST', path: '/servers', times: 2, status: 503, code: 'unavailable', message: 'maintenance' });
  for (let i = 0; i < 2; i++) {
    const r = await api(cloud, 'POST', '/servers', { ...baseServer, name: 'f1' });
    t.equal(r.status, 503);
    t.equal(errorCode(r), 'unavailable');
    t.ok(r.headers.get('ratelimit-remaining'), 'rate limit headers on a fault');
  }
  t.equal((await api(cloud, 'GET', '/servers')).status, 200, 'other routes untouched');
  t.equal((await api(cloud, 'POST', '/servers', { ...baseServer, name: 'f1' })).status, 201, 'third try passes');

  cloud.inject({
    path: /^\/servers\/\d+$/,
    status: 429,
    code: 'rate_limit_exceeded',
    headers: { 'RateLimit-Remaining': '0', 'RateLimit-Reset': '1900000000' },
  });
  const id = cloud.liveServers()[0]?.id;
  const limited = await api(cloud, 'GET', `/servers/${id}`);
  t.equal(limited.status, 429);
  t.equal(errorCode(limited), 'rate_limit_exceeded');
  t.equal(limited.headers.get('ratelimit-remaining'), '0');
  t.equal(limited.headers.get('ratelimit-reset'), '1900000000');
  t.equal(limited.headers.get('ratelimit-limit'), '3600');
  t.equal((await api(cloud, 'GET', `/servers/${id}`)).status, 200);

  cloud.inject({ method: 'GET', path: '/servers', networkError: true });
  await t.rejects(api(cloud, 'GET', '/servers'), 'socket destroyed');
  t.equal((await api(cloud, 'GET', '/servers')).status, 200);

  cloud.inject({ path: '/locations', delayMs: 300 });
  const t0 = Date.now();
  const slow = await api(cloud, 'GET', '/locations');
  t.ok(Date.now() - t0 >= 280, 'answered late');
  t.equal(slow.status, 200, 'with the real answer');

  // A create whose answer is lost: the server exists although the client saw an error.
  cloud.inject({ method: 'POST', path: '/servers', networkError: true, afterHandling: true });
  await t.rejects(api(cloud, 'POST', '/servers', { ...baseServer, name: 'lost' }));
  t.ok(
    cloud.liveServers().some((s) => s.name === 'lost'),
    'server created anyway',
  );

  cloud.inject({ method: 'DELETE', path: /^\/servers\//, status: 423, code: 'locked', details: { reason: 'action running' } });
  const locked = await api(cloud, 'DELETE', `/servers/${id}`);
  t.equal(locked.status, 423);
  t.match(obj(locked.json)['error'], { code: 'locked', details: { reason: 'action running' } });
  t.same(cloud.schemaErrors, []);

  // A malformed injected answer is caught by the schema check.
  cloud.inject({ path: '/locations', status: 500, details: 'not an object' });
  t.equal((await api(cloud, 'GET', '/locations')).status, 500);
  t.equal(cloud.schemaErrors.length, 1);
  t.match(cloud.schemaErrors[0], /details/);
  t.match(cloud.requests.at(-1), { method: 'GET', path: '/locations', status: 500 });
  t.ok(
    cloud.requests.some((r) => r.status === 0),
    'network errors are recorded with status 0',
  );
});

t.test('authentication, unknown routes, rate limit', async (t) => {
  const { cloud } = await startCloud(t, { rateLimit: { limit: 3, refillPerSecond: 0 } });
  const none = await api(cloud, 'GET', '/servers', undefined, null);
  t.equal(none.status, 401);
  t.equal(errorCode(none), 'unauthorized');
  t.ok(none.headers.get('ratelimit-limit'));
  const wrong = await api(cloud, 'GET', '/servers', undefined, 'nope');
  t.equal(wrong.status, 401);
  const unknown = await api(cloud, 'GET', '/floating_ips_and_such');
  t.equal(unknown.status, 404);
  t.equal(errorCode(unknown), 'not_found');
  t.equal((await api(cloud, 'GET', '/servers')).status, 200);
  const last = await api(cloud, 'GET', '/servers');
  t.equal(last.status, 200);
  t.equal(last.headers.get('ratelimit-remaining'), '0');
  // Taken before the request: the second may tick over before the assertion.
  const askedAt = Math.floor(Date.now() / 1000);
  const limited = await api(cloud, 'GET', '/servers');
  t.equal(limited.status, 429);
  t.equal(errorCode(limited), 'rate_limit_exceeded');
  t.equal(limited.headers.get('ratelimit-limit'), '3');
  t.equal(limited.headers.get('ratelimit-remaining'), '0');
  t.ok(Number(limited.headers.get('ratelimit-reset')) >= askedAt, 'the reset is not before the request');
  t.same(cloud.schemaErrors, []);
});

t.test('addresses wrap before 255 and freed ones are reused', async (t) => {
  const { cloud } = await startCloud(t, { firstAddress: 252, deleteDelayMs: 10 });
  const ips: string[] = [];
  for (const name of ['a1', 'a2', 'a3']) {
    const r = await api(cloud, 'POST', '/servers', { ...baseServer, name });
    ips.push((obj(r.json) as unknown as Schemas['create_server_response']).server.public_net.ipv4?.ip ?? '');
  }
  t.same(ips, ['127.0.0.252', '127.0.0.253', '127.0.0.254']);
  const full = await api(cloud, 'POST', '/servers', { ...baseServer, name: 'a4' });
  t.equal(full.status, 403);
  t.equal(errorCode(full), 'resource_limit_exceeded');
  const middle = cloud.liveServers().find((s) => s.address === '127.0.0.253');
  await api(cloud, 'DELETE', `/servers/${middle?.id}`);
  await until('deleted', () => cloud.liveServers().length === 2);
  const again = await api(cloud, 'POST', '/servers', { ...baseServer, name: 'a4' });
  t.equal((obj(again.json) as unknown as Schemas['create_server_response']).server.public_net.ipv4?.ip, '127.0.0.253');
  t.same(cloud.schemaErrors, []);
});

t.test('server limit', async (t) => {
  const { cloud } = await startCloud(t, { serverLimit: 1 });
  t.equal((await api(cloud, 'POST', '/servers', { ...baseServer, name: 'one' })).status, 201);
  const two = await api(cloud, 'POST', '/servers', { ...baseServer, name: 'two' });
  t.equal(two.status, 403);
  t.match(obj(two.json)['error'], { code: 'resource_limit_exceeded', details: { limits: [{ name: 'server_limit' }] } });
});

t.test('behaviours without real servers', async (t) => {
  const { cloud } = await startCloud(t, { bootDelayMs: 80 });
  cloud.behaveNext('action-error');
  cloud.behaveNext('never-running');
  const failing = obj(
    (await api(cloud, 'POST', '/servers', { ...baseServer, name: 'bad' })).json,
  ) as unknown as Schemas['create_server_response'];
  const stuck = obj(
    (await api(cloud, 'POST', '/servers', { ...baseServer, name: 'stuck' })).json,
  ) as unknown as Schemas['create_server_response'];
  const normal = obj(
    (await api(cloud, 'POST', '/servers', { ...baseServer, name: 'fine' })).json,
  ) as unknown as Schemas['create_server_response'];
  const action = await until('create action to end', async () => {
    const a = obj((await api(cloud, 'GET', `/actions/${failing.action.id}`)).json)['action'] as Schemas['action'];
    return a.status !== 'running' ? a : null;
  });
  t.equal(action.status, 'error');
  t.equal(action.error?.code, 'action_failed');
  t.equal((obj((await api(cloud, 'GET', `/servers/${failing.server.id}`)).json)['server'] as Schemas['server']).status, 'off');
  await until(
    'normal server running',
    async () => (obj((await api(cloud, 'GET', `/servers/${normal.server.id}`)).json)['server'] as Schemas['server']).status === 'running',
  );
  await new Promise((r) => setTimeout(r, 100));
  t.equal((obj((await api(cloud, 'GET', `/servers/${stuck.server.id}`)).json)['server'] as Schemas['server']).status, 'starting');
  t.equal((obj((await api(cloud, 'GET', `/actions/${stuck.action.id}`)).json)['action'] as Schemas['action']).status, 'running');
  t.match(
    cloud.servers().map((s) => s.behaviour),
    ['action-error', 'never-running', 'normal'],
  );
  t.same(cloud.schemaErrors, []);
});

t.test('cloud-config reading', async (t) => {
  const json = parseUserData(
    '#cloud-config\n{"ssh_keys":{"ed25519_private":"PRIV","ed25519_public":"PUB"},"ssh_genkeytypes":[],"disable_root":false,"users":[{"name":"root","ssh_authorized_keys":["ssh-ed25519 AAA a"]}],"runcmd":["echo 1",["touch","/run/it\'s"]]}',
  );
  t.same(json.hostKey, { private: 'PRIV', public: 'PUB' });
  t.same(json.genKeyTypes, []);
  t.same(json.authorizedKeys, ['ssh-ed25519 AAA a']);
  t.same(json.runcmd, ['echo 1', `'touch' '/run/it'\\''s'`]);
  t.same(json.problems, []);
  const yaml = parseUserData(
    '#cloud-config\nssh_authorized_keys: [k1]\nwrite_files:\n  - path: /run/x\n    content: aGk=\n    encoding: b64\n    permissions: 0600\n  - path: /run/y\n    content: plain\n    permissions: "0755"\nbootcmd: [x]\n',
  );
  t.same(yaml.authorizedKeys, ['k1']);
  t.equal(yaml.writeFiles[0]?.content.toString(), 'hi');
  t.equal(yaml.writeFiles[0]?.permissions, 0o600, 'YAML 1.1 octal, as cloud-init reads it');
  t.equal(yaml.writeFiles[1]?.permissions, 0o755);
  t.equal(yaml.hostKey, null);
  t.match(yaml.problems, [/bootcmd/]);
  t.equal(parseUserData('#!/bin/sh\necho hi').isCloudConfig, false);
  t.equal(checkSchema('error_response', { error: { code: 'x', message: 'y', details: null } }), null);
});

// ---------------------------------------------------------------- real servers

interface ExecResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function sshConnect(host: string, loginKey: string, hostPublicKey: string): Promise<Client> {
  const expected = utils.parseKey(hostPublicKey);
  if (expected instanceof Error) throw expected;
  const pinned = expected.getPublicSSH();
  return new Promise((resolve, reject) => {
    const c = new Client();
    c.once('ready', () => resolve(c));
    c.on('error', reject);
    c.connect({
      host,
      port: SSH_PORT,
      username: 'root',
      privateKey: loginKey,
      hostVerifier: (key: Buffer) => key.equals(pinned),
      readyTimeout: 10_000,
    });
  });
}

function sshExec(c: Client, cmd: string): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    c.exec(cmd, (err, stream) => {
      if (err) return reject(err);
      let stdout = '';
      let stderr = '';
      let code: number | null = null;
      stream.on('data', (d: Buffer) => (stdout += d.toString()));
      stream.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      stream.on('exit', (c: number | null) => (code = c));
      stream.on('close', () => resolve({ code, stdout, stderr }));
    });
  });
}

function connectError(host: string): Promise<string> {
  return new Promise((resolve) => {
    const c = new Client();
    c.once('ready', () => {
      c.end();
      resolve('connected');
    });
    c.on('error', (e: Error & { code?: string }) => resolve(e.code ?? e.message));
    c.connect({ host, port: SSH_PORT, username: 'root', readyTimeout: 5000, hostVerifier: () => true });
  });
}

const canRunServers =
  process.getuid?.() === 0 &&
  existsSync('/usr/sbin/sshd') &&
  existsSync('/nix') &&
  spawnSync('unshare', ['-m', 'true']).status === 0 &&
  spawnSync('nsenter', ['--version']).status === 0;

t.test('real servers', { skip: canRunServers ? false : 'needs root, /usr/sbin/sshd, /nix, unshare and nsenter' }, async (t) => {
  const { cloud, logs } = await startCloud(t, { realServers: true, bootDelayMs: 200, readyDelayMs: 100, deleteDelayMs: 50 });
  const host = keyPair('test');
  const login = keyPair('daemon@test');
  const userData =
    '#cloud-config\n' +
    JSON.stringify({
      disable_root: false,
      ssh_genkeytypes: [],
      ssh_keys: { ed25519_private: host.private, ed25519_public: host.public },
      users: [{ name: 'root', ssh_authorized_keys: [login.public] }],
      write_files: [
        { path: '/run/fake-test/config', content: 'written by write_files\n', permissions: '0600' },
        { path: '/etc/motd-from-test', content: 'kept off the host\n' },
      ],
      // One script, as cloud-init runs runcmd: a failing line goes on to the next; `exit` ends the rest.
      runcmd: [
        'false',
        ['sh', '-c', 'mkdir -p /run/fake-test && echo ran > /run/fake-test/ready && echo proof > /nix/runcmd-proof'],
        'echo "in the script: $0"',
        'exit 0',
        'echo after > /run/fake-test/after-exit',
      ],
    });

  const created = await api(cloud, 'POST', '/servers', { ...baseServer, name: 'real-1', user_data: userData, labels: { role: 'worker' } });
  t.equal(created.status, 201);
  const server = (obj(created.json) as unknown as Schemas['create_server_response']).server;
  const ip = server.public_net.ipv4?.ip ?? '';
  t.match(ip, /^127\.0\.0\.\d+$/);
  await until(
    'running',
    async () => (obj((await api(cloud, 'GET', `/servers/${server.id}`)).json)['server'] as Schemas['server']).status === 'running',
  );
  await until('sshd up', () => cloud.liveServers().find((s) => s.id === server.id)?.sshdRunning);
  const info = cloud.liveServers()[0];
  t.ok(info && readFileSync(join(info.dir, 'ssh_host_ed25519_key'), 'utf8').includes('OPENSSH PRIVATE KEY'));

  const client = await sshConnect(ip, login.private, host.public);
  try {
    const store = await sshExec(client, `sh -c 'test -d /nix/store || echo no-store; cat /proc/self/mountinfo | grep " /nix "'`);
    t.match(store.stdout, /^no-store\n/, 'a fresh, empty store (the host has its own /nix)');
    t.match(store.stdout, new RegExp(`/servers/${server.id}/nix /nix `), '/nix is the server folder');
    const version = await sshExec(client, 'nix-store --version');
    t.equal(version.code, 0);
    t.match(version.stdout, /^nix-store \(Nix\) \d/);
    // Nix set up the store on first use, in the server's folder.
    t.ok(existsSync(join(info?.storeDir ?? '', 'store')), 'the store was created in the server folder');
    const written = await sshExec(client, 'cat /run/fake-test/config; stat -c %a /run/fake-test/config');
    t.equal(written.stdout, 'written by write_files\n600\n');
    await until('runcmd done', () => cloud.liveServers()[0]?.cloudInitDone);
    const ready = await sshExec(client, 'cat /run/fake-test/ready');
    t.equal(ready.stdout, 'ran\n', 'runcmd ran in the server namespace');
    t.equal(readFileSync(join(info?.storeDir ?? '', 'runcmd-proof'), 'utf8'), 'proof\n');
    t.notOk(existsSync('/run/fake-test'), "the host's /run is untouched");
    t.notOk(existsSync('/etc/motd-from-test'), "the host's /etc is untouched");
    t.equal(readFileSync(join(info?.dir ?? '', 'rootfs', 'etc', 'motd-from-test'), 'utf8'), 'kept off the host\n');
    const after = await sshExec(client, 'test -e /run/fake-test/after-exit && echo ran || echo "not run"');
    t.equal(after.stdout, 'not run\n', 'an `exit 0` entry ends the runcmd script: later entries never run (as on cloud-init)');
    const script = `#!/bin/sh\nfalse\n'sh' '-c' 'mkdir -p /run/fake-test && echo ran > /run/fake-test/ready && echo proof > /nix/runcmd-proof'\necho "in the script: $0"\nexit 0\necho after > /run/fake-test/after-exit\n`;
    t.equal(readFileSync(join(info?.dir ?? '', 'runcmd'), 'utf8'), script, 'string entries verbatim, list entries quoted, one line each');
    const log = readFileSync(join(info?.dir ?? '', 'cloud-init-output.log'), 'utf8');
    t.match(
      log,
      `runcmd start: 5 command(s) as one script, ${join(info?.dir ?? '', 'runcmd')}:\n${script}Cloud-init (fake) runcmd output:\nin the script: ${join(info?.dir ?? '', 'runcmd')}\nCloud-init (fake) finished\n`,
      'the script and its output are logged; all entries ran in one sh',
    );
    t.ok(existsSync(join(info?.dir ?? '', 'boot-finished')), 'boot-finished, however the script ended');
    // The store is usable: `nix-store --serve` answers the serve-protocol handshake.
    const hello = await new Promise<Buffer>((resolve, reject) => {
      client.exec('nix-store --serve --write', (err, stream) => {
        if (err) return reject(err);
        let got = Buffer.alloc(0);
        stream.on('data', (d: Buffer) => {
          got = Buffer.concat([got, d]);
          if (got.length >= 16) {
            stream.end();
            resolve(got.subarray(0, 16));
          }
        });
        stream.on('close', () => resolve(got));
        stream.write(Buffer.from('eb9d0c390000000007020000000000000', 'hex').subarray(0, 16));
      });
    });
    t.equal(hello.toString('hex').slice(0, 16), 'cbee525400000000', 'serve protocol magic from the server');
  } finally {
    client.end();
  }

  // Worker death, then deletion.
  await cloud.killSshd(server.id);
  t.equal(await connectError(ip), 'ECONNREFUSED', 'killed sshd refuses connections');
  const del = await api(cloud, 'DELETE', `/servers/${server.id}`);
  t.equal(del.status, 200);
  await until('deleted', async () => (await api(cloud, 'GET', `/servers/${server.id}`)).status === 404);
  t.equal(await connectError(ip), 'ECONNREFUSED', 'deleted server refuses connections');

  // A second server: alive until deleted, then gone.
  const second = await api(cloud, 'POST', '/servers', { ...baseServer, name: 'real-2', user_data: userData });
  const s2 = (obj(second.json) as unknown as Schemas['create_server_response']).server;
  const ip2 = s2.public_net.ipv4?.ip ?? '';
  t.not(ip2, ip, 'a new address');
  await until('sshd 2 up', () => cloud.liveServers().find((s) => s.id === s2.id)?.sshdRunning);
  const c2 = await sshConnect(ip2, login.private, host.public);
  const pid = await sshExec(c2, 'echo $$');
  t.equal(pid.code, 0);
  c2.end();
  await api(cloud, 'DELETE', `/servers/${s2.id}`);
  await until('deleted 2', async () => (await api(cloud, 'GET', `/servers/${s2.id}`)).status === 404);
  t.equal(await connectError(ip2), 'ECONNREFUSED');
  const sessionPid = Number(pid.stdout.trim());
  t.notOk(
    existsSync(`/proc/${sessionPid}/cmdline`) && readFileSync(`/proc/${sessionPid}/cmdline`, 'utf8').length > 0,
    'the ssh session process is gone',
  );
  t.same(cloud.schemaErrors, []);
  t.notOk(
    logs.some((l) => /sshd exited/.test(l)),
    'no unexpected sshd exit',
  );
});

t.test('real servers: behaviours', { skip: canRunServers ? false : 'needs root, /usr/sbin/sshd, /nix, unshare and nsenter' }, async (t) => {
  const { cloud } = await startCloud(t, { realServers: true, bootDelayMs: 100, readyDelayMs: 50 });
  const host = keyPair('test');
  const login = keyPair('test');
  const userData = `#cloud-config\nssh_genkeytypes: []\nssh_keys:\n  ed25519_private: |\n${host.private
    .split('\n')
    .map((l) => `    ${l}`)
    .join(
      '\n',
    )}\n  ed25519_public: ${host.public}\nusers:\n  - name: root\n    ssh_authorized_keys: ["${login.public}"]\nruncmd:\n  - mkdir -p /run/x && touch /run/x/ready\n`;

  cloud.behaveNext('wrong-host-key');
  cloud.behaveNext('no-sshd');
  cloud.behaveNext('never-ready');
  const ids: number[] = [];
  for (const name of ['wrong-key', 'no-sshd', 'never-ready']) {
    const r = await api(cloud, 'POST', '/servers', { ...baseServer, name, user_data: userData });
    t.equal(r.status, 201);
    ids.push((obj(r.json) as unknown as Schemas['create_server_response']).server.id);
  }
  const addr = (id: number | undefined) => cloud.servers().find((s) => s.id === id)?.address ?? '';
  await until('wrong-key sshd', () => cloud.servers().find((s) => s.id === ids[0])?.sshdRunning);
  await t.rejects(sshConnect(addr(ids[0]), login.private, host.public), /host/i, 'host key verification fails');

  await until('no-sshd running', () => cloud.servers().find((s) => s.id === ids[1])?.status === 'running');
  await new Promise((r) => setTimeout(r, 200));
  t.equal(await connectError(addr(ids[1])), 'ECONNREFUSED', 'running, but nothing listens');

  await until('never-ready sshd', () => cloud.servers().find((s) => s.id === ids[2])?.sshdRunning);
  const c = await sshConnect(addr(ids[2]), login.private, host.public);
  await new Promise((r) => setTimeout(r, 300));
  const r = await sshExec(c, 'test -e /run/x/ready && echo ready || echo not-ready');
  t.equal(r.stdout, 'not-ready\n', 'runcmd never runs');
  c.end();
  t.notOk(cloud.servers().find((s) => s.id === ids[2])?.cloudInitDone);

  // No host key in the user data: the server runs, but no sshd.
  const nokey = await api(cloud, 'POST', '/servers', { ...baseServer, name: 'no-key', user_data: '#cloud-config\nruncmd: ["true"]\n' });
  const nk = (obj(nokey.json) as unknown as Schemas['create_server_response']).server;
  await until('no-key running', () => cloud.servers().find((s) => s.id === nk.id)?.status === 'running');
  await new Promise((r) => setTimeout(r, 200));
  t.equal(await connectError(nk.public_net.ipv4?.ip ?? ''), 'ECONNREFUSED');
  t.same(cloud.schemaErrors, []);
});

const canRunNixosWorkers =
  canRunServers &&
  ['losetup', 'sgdisk', 'partx', 'blkid', 'mkswap', 'curl', 'jq', 'bash'].every(
    (c) => spawnSync('sh', ['-c', `command -v ${c}`]).status === 0,
  ) &&
  spawnSync('losetup', ['--find']).status === 0;

/** Loop devices whose backing file is under dir (also once the file is deleted). */
function loopsUnder(dir: string): string[] {
  const r = spawnSync('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE'], { encoding: 'utf8' });
  return r.stdout.split('\n').filter((l) => l.includes(dir));
}

t.test(
  'real servers: a NixOS worker image boots by its own scripts, with the user data from the metadata service',
  { skip: canRunNixosWorkers ? false : 'needs what real servers need, plus loop devices, sgdisk, partx, blkid, mkswap, curl, jq' },
  async (t) => {
    const { cloud, logs } = await startCloud(t, {
      realServers: true,
      bootDelayMs: 100,
      readyDelayMs: 50,
      deleteDelayMs: 50,
      nixosWorker: { fetchAttempts: 2, swapMib: 8 },
    });
    const image = cloud.addImage({ description: 'nixos worker', labels: { role: 'nix-worker' }, worker: 'nixos' });
    const host = keyPair('worker-host');
    const login = keyPair('daemon@test');
    const userData = `#cloud-config\n${JSON.stringify({
      ssh_keys: { ed25519_private: host.private, ed25519_public: host.public },
      users: [{ name: 'root', ssh_authorized_keys: [login.public] }],
      runcmd: ['touch /run/cloud-init-ran'],
    })}\n`;
    const create = async (name: string): Promise<Schemas['server']> => {
      const r = await api(cloud, 'POST', '/servers', { ...baseServer, image: String(image.id), name, user_data: userData });
      t.equal(r.status, 201, `${name} created`);
      return (obj(r.json) as unknown as Schemas['create_server_response']).server;
    };
    const info = (id: number) => cloud.servers().find((s) => s.id === id);
    const requestsBefore = cloud.requests.length;

    // Two servers at once: one healthy, one whose metadata service drops every connection.
    const ok = await create('nixos-1');
    const broken = await create('nixos-2');
    cloud.injectMetadata({ server: broken.id, networkError: true, times: Infinity });

    // The metadata service, as the healthy server sees it.
    const base = cloud.metadataBase(ok.id);
    const ud = await fetch(`${base}/userdata`);
    t.equal(ud.status, 200);
    t.match(ud.headers.get('content-type'), /^text\/plain/);
    t.equal(await ud.text(), userData, 'the user data the server was created with');
    const meta = await (await fetch(`${base}/metadata`)).text();
    t.match(meta, `instance-id: ${ok.id}\n`);
    t.match(meta, 'hostname: nixos-1\n');
    t.match(meta, `public-ipv4: ${ok.public_net.ipv4?.ip}\n`);
    t.equal(await (await fetch(`${base}/metadata/hostname`)).text(), 'nixos-1');
    t.equal(await (await fetch(`${base}/metadata/availability-zone`)).text(), 'fsn1-dc14');
    t.equal((await fetch(`${base}/nothing`)).status, 404, 'unknown path: 404');
    t.equal((await fetch(`${cloud.metadataBase(99)}/userdata`)).status, 404, 'unknown server: 404');
    t.equal((await fetch(`${base}/userdata`, { method: 'POST' })).status, 405);
    cloud.injectMetadata({ server: ok.id, path: '/userdata', status: 500, body: 'oops' });
    const faulty = await fetch(`${base}/userdata`);
    t.same([faulty.status, await faulty.text()], [500, 'oops'], 'a metadata fault answers once');
    t.equal(cloud.requests.length, requestsBefore + 2, 'metadata requests are not API requests');

    // The healthy one: keys, disk, sshd, ready marker.
    await until('nixos-1 ready', () => info(ok.id)?.cloudInitDone, 20_000);
    const s1 = info(ok.id);
    t.same(s1?.units, { keys: 'done', expand: 'done', store: 'done', sshd: 'done', ready: 'done' });
    t.equal(s1?.bootMode, 'nixos');
    t.ok(s1?.loopDevice, 'its disk is on a loop device');
    const c = await sshConnect(ok.public_net.ipv4?.ip ?? '', login.private, host.public);
    const inside = await sshExec(
      c,
      'test -e /run/nix-hcloud-builder/ready && echo ready; ls /etc/ssh; stat -c %a /root/.ssh /root/.ssh/authorized_keys; test -e /run/cloud-init-ran || echo no-cloud-init',
    );
    c.end();
    t.equal(
      inside.stdout,
      'ready\nmoduli\nssh_host_ed25519_key\nssh_host_ed25519_key.pub\n700\n600\nno-cloud-init\n',
      'a private /etc/ssh with only the fetched key; no cloud-init',
    );
    const disk = s1?.workerDisk ?? '';
    const table = spawnSync('sgdisk', ['--print', disk], { encoding: 'utf8' }).stdout;
    t.match(table, /\n\s+4\s+\d+\s+\d+\s+.*8200\s+swap\n/, 'a swap partition at the end');

    // The broken one: the keys unit fails, so sshd never starts and the marker is never written.
    await until('nixos-2 keys failed', () => info(broken.id)?.units?.keys === 'failed', 20_000);
    const s2 = info(broken.id);
    t.match(s2?.units, { keys: 'failed', sshd: 'skipped', ready: 'skipped' });
    t.equal(await connectError(broken.public_net.ipv4?.ip ?? ''), 'ECONNREFUSED', 'no sshd');
    t.match(readFileSync(join(s2?.dir ?? '', 'fetch-keys.log'), 'utf8'), /after 2 attempts/);
    t.ok(
      logs.some((l) => l.includes(`server ${broken.id}: nix-hcloud-builder-keys.service failed`)),
      'the failure is logged',
    );
    t.same(
      cloud.metadataRequests.filter((r) => r.server === broken.id).map((r) => r.status),
      [0, 0],
      'two attempts, both dropped',
    );

    // A reboot: the disk is kept, zpool-expand.sh finds it grown and only turns swap on again.
    t.equal((await api(cloud, 'POST', `/servers/${ok.id}/actions/poweroff`)).status, 201);
    await until('off', () => info(ok.id)?.status === 'off');
    t.same(loopsUnder(s1?.dir ?? ''), [], 'powered off: the loop device is detached');
    const calls = join(s1?.dir ?? '', 'stub-calls.log');
    const firstBoot = readFileSync(calls, 'utf8');
    t.equal((await api(cloud, 'POST', `/servers/${ok.id}/actions/poweron`)).status, 201);
    await until('ready again', () => info(ok.id)?.cloudInitDone, 20_000);
    t.equal(spawnSync('sgdisk', ['--print', disk], { encoding: 'utf8' }).stdout, table, 'the partition table is unchanged');
    const secondBoot = readFileSync(calls, 'utf8').slice(firstBoot.length);
    t.match(secondBoot, /swapon --discard \/dev\/loop\d+p4\n/, 'swap on again');
    t.match(readFileSync(join(s1?.dir ?? '', 'zpool-expand.log'), 'utf8'), /grew from (\d+) to \1 bytes\n(.|\n)*$/, 'nothing more to grow');

    // Deleted while zpool-expand.sh runs: every process dies and the loop device goes.
    const third = await create('nixos-3');
    await until('expanding', () => info(third.id)?.units?.expand === 'running', 20_000);
    await api(cloud, 'DELETE', `/servers/${third.id}`);
    await until('deleted', () => info(third.id)?.deleted);
    t.same(loopsUnder(info(third.id)?.dir ?? ''), [], 'deleted mid-boot: the loop device is detached');
    t.match(info(third.id)?.units, { expand: 'stopped', ready: 'stopped' }, 'the units it had not ended say it stopped');

    // Behaviours: another host key than the user data's (after the keys unit), and no ready unit.
    cloud.behaveNext('wrong-host-key');
    cloud.behaveNext('never-ready');
    const wrong = await create('nixos-wrong-key');
    const never = await create('nixos-never-ready');
    await until('both sshds up', () => info(wrong.id)?.sshdRunning && info(never.id)?.sshdRunning, 20_000);
    await t.rejects(
      sshConnect(wrong.public_net.ipv4?.ip ?? '', login.private, host.public),
      /host/i,
      'wrong-host-key: host key verification fails',
    );
    await new Promise((r) => setTimeout(r, 300));
    t.same(
      info(never.id)?.units,
      { keys: 'done', expand: 'done', store: 'done', sshd: 'done', ready: 'waiting' },
      'never-ready: the ready unit never runs',
    );
    const cn = await sshConnect(never.public_net.ipv4?.ip ?? '', login.private, host.public);
    t.equal((await sshExec(cn, 'test -e /run/nix-hcloud-builder/ready || echo not-ready')).stdout, 'not-ready\n');
    cn.end();

    // The last-resort cleanup (process exit) and stop() release the loop devices too.
    await until('ready again', () => info(ok.id)?.cloudInitDone, 20_000);
    t.ok(loopsUnder(s1?.dir ?? '').length === 1, 'attached while running');
    cloud.killAllSync();
    t.same(loopsUnder(s1?.dir ?? ''), [], 'killAllSync detached it');
    const fourth = await create('nixos-4');
    await until('nixos-4 disk', () => info(fourth.id)?.loopDevice);
    const dir4 = info(fourth.id)?.dir ?? '';
    await cloud.stop();
    t.same(loopsUnder(dir4), [], 'stop() detached the disk of a server still booting');
    t.same(cloud.schemaErrors, []);
  },
);

// ---------------------------------------------------------------- volumes

async function actionDone(cloud: FakeCloud, id: number): Promise<Schemas['action']> {
  return until(`action ${id}`, async () => {
    const a = obj((await api(cloud, 'GET', `/actions/${id}`)).json)['action'] as Schemas['action'];
    return a.status !== 'running' ? a : null;
  });
}

t.test("volumes: create, list, attach, detach, delete with Hetzner's rules", async (t) => {
  // Volume actions take a quarter of the boot delay (at most 200 ms): long enough to see a lock.
  const { cloud } = await startCloud(t, { bootDelayMs: 400 });
  const a = (
    obj((await api(cloud, 'POST', '/servers', { ...baseServer, name: 'va' })).json) as unknown as Schemas['create_server_response']
  ).server;
  const releaseCreates = cloud.holdActions('create_volume');
  const created = await api(cloud, 'POST', '/volumes', {
    name: 'store-1',
    size: 10,
    location: 'fsn1',
    labels: { pool: 'x86' },
    format: 'ext4',
    automount: false,
  });
  t.equal(created.status, 201);
  const c = obj(created.json) as unknown as Schemas['create_volume_response'];
  t.match(c.volume, { name: 'store-1', size: 10, server: null, status: 'creating', format: 'ext4', location: { name: 'fsn1' } });
  t.equal(c.volume.linux_device, `/dev/disk/by-id/scsi-0HC_Volume_${c.volume.id}`);
  t.equal(c.action.command, 'create_volume');
  t.same(c.next_actions, []);
  const vid = c.volume.id;
  t.ok(existsSync(cloud.volumeDir(vid)), 'the volume has its folder');

  // Input errors.
  const bad = async (body: unknown) => obj((await api(cloud, 'POST', '/volumes', body)).json)['error'];
  t.match(await bad({ name: 'small', size: 9, location: 'fsn1' }), { code: 'invalid_input', details: { fields: [{ name: 'size' }] } });
  t.match(await bad({ name: 'big', size: 10241, location: 'fsn1' }), { code: 'invalid_input', details: { fields: [{ name: 'size' }] } });
  t.match(await bad({ name: '-x', size: 10, location: 'fsn1' }), { code: 'invalid_input', details: { fields: [{ name: 'name' }] } });
  t.match(await bad({ name: 'nowhere', size: 10 }), { code: 'invalid_input', details: { fields: [{ name: 'location' }] } });
  t.match(await bad({ name: 'store-1', size: 10, location: 'nbg1' }), { code: 'uniqueness_error' });
  t.match(await bad({ name: 'fmt', size: 10, location: 'fsn1', format: 'btrfs' }), { code: 'invalid_input' });

  // Locked while its create action runs.
  const early = await api(cloud, 'POST', `/volumes/${vid}/actions/attach`, { server: a.id, automount: false });
  t.equal(early.status, 423);
  t.equal(errorCode(early), 'locked');
  releaseCreates();
  await actionDone(cloud, c.action.id);
  t.equal((obj((await api(cloud, 'GET', `/volumes/${vid}`)).json)['volume'] as Schemas['volume']).status, 'available');

  // Location must match.
  const far = (
    obj(
      (await api(cloud, 'POST', '/servers', { ...baseServer, name: 'far', location: 'nbg1' })).json,
    ) as unknown as Schemas['create_server_response']
  ).server;
  const wrongPlace = await api(cloud, 'POST', `/volumes/${vid}/actions/attach`, { server: far.id });
  t.equal(wrongPlace.status, 422);
  t.equal(errorCode(wrongPlace), 'invalid_input');

  // Attach; one server at a time; delete refused while attached.
  const attach = await api(cloud, 'POST', `/volumes/${vid}/actions/attach`, { server: a.id, automount: false });
  t.equal(attach.status, 201);
  const attachAction = obj(attach.json)['action'] as Schemas['action'];
  t.equal(attachAction.command, 'attach_volume');
  t.same(attachAction.resources.map((r) => r.type).sort(), ['server', 'volume']);
  t.equal((await actionDone(cloud, attachAction.id)).status, 'success');
  t.same((obj((await api(cloud, 'GET', `/servers/${a.id}`)).json)['server'] as Schemas['server']).volumes, [vid], 'the server lists it');
  const b = (
    obj((await api(cloud, 'POST', '/servers', { ...baseServer, name: 'vb' })).json) as unknown as Schemas['create_server_response']
  ).server;
  const second = await api(cloud, 'POST', `/volumes/${vid}/actions/attach`, { server: b.id });
  t.equal(second.status, 422);
  t.equal(errorCode(second), 'volume_already_attached');
  const del = await api(cloud, 'DELETE', `/volumes/${vid}`);
  t.equal(del.status, 422);
  t.match(obj(del.json)['error'], { code: 'service_error', message: /still attached/ });
  const busy = await api(cloud, 'POST', '/servers', { ...baseServer, name: 'vc', volumes: [vid] });
  t.equal(errorCode(busy), 'volume_already_attached', 'a server cannot be created with an attached volume');

  // Detach; detach again is refused.
  const detach = await api(cloud, 'POST', `/volumes/${vid}/actions/detach`);
  t.equal(detach.status, 201);
  await actionDone(cloud, (obj(detach.json)['action'] as Schemas['action']).id);
  t.equal((obj((await api(cloud, 'GET', `/volumes/${vid}`)).json)['volume'] as Schemas['volume']).server, null);
  t.same((obj((await api(cloud, 'GET', `/servers/${a.id}`)).json)['server'] as Schemas['server']).volumes, []);
  const again = await api(cloud, 'POST', `/volumes/${vid}/actions/detach`);
  t.equal(again.status, 422);
  t.equal(errorCode(again), 'service_error');

  // Server create with the volume; deleting the server detaches it.
  const releaseAttaches = cloud.holdActions('attach_volume');
  const withVol = await api(cloud, 'POST', '/servers', { ...baseServer, name: 'vd', volumes: [vid] });
  t.equal(withVol.status, 201);
  const wv = obj(withVol.json) as unknown as Schemas['create_server_response'];
  t.same(wv.server.volumes, [vid]);
  t.ok(
    wv.next_actions.some((x) => x.command === 'attach_volume'),
    'an attach_volume next action',
  );
  const farCreate = await api(cloud, 'POST', '/servers', { ...baseServer, name: 've', location: 'nbg1', volumes: [vid] });
  t.equal(errorCode(farCreate), 'locked', 'refused while its attach action runs');
  releaseAttaches();
  const missing = await api(cloud, 'POST', '/servers', { ...baseServer, name: 'vf', volumes: [1] });
  t.match(obj(missing.json)['error'], { code: 'invalid_input', details: { fields: [{ name: 'volumes' }] } });
  await Promise.all(wv.next_actions.map((x) => actionDone(cloud, x.id)));
  await api(cloud, 'DELETE', `/servers/${wv.server.id}`);
  await until(
    'volume detached by the server delete',
    async () => (obj((await api(cloud, 'GET', `/volumes/${vid}`)).json)['volume'] as Schemas['volume']).server === null,
  );

  // List, filters, paging, labels, rename, actions, delete.
  for (let i = 2; i <= 4; i++)
    await api(cloud, 'POST', '/volumes', { name: `store-${i}`, size: 10 * i, location: 'fsn1', labels: { pool: i % 2 ? 'arm' : 'x86' } });
  const page = obj((await api(cloud, 'GET', '/volumes?label_selector=pool%3Dx86&per_page=1&page=2')).json);
  t.same(
    (page['volumes'] as Schemas['volume'][]).map((v) => v.name),
    ['store-2'],
  );
  t.match(obj(page['meta'])['pagination'], { page: 2, per_page: 1, total_entries: 3, last_page: 3 });
  t.same(
    (obj((await api(cloud, 'GET', '/volumes?name=store-3')).json)['volumes'] as Schemas['volume'][]).map((v) => v.size),
    [30],
  );
  const renamed = await api(cloud, 'PUT', `/volumes/${vid}`, { name: 'store-one', labels: { pool: 'x86', slot: '0' } });
  t.match(obj(renamed.json)['volume'], { name: 'store-one', labels: { pool: 'x86', slot: '0' } });
  t.equal(errorCode(await api(cloud, 'PUT', `/volumes/${vid}`, { name: 'store-2' })), 'uniqueness_error');
  const actions = (obj((await api(cloud, 'GET', `/volumes/${vid}/actions`)).json)['actions'] as Schemas['action'][]).map((x) => x.command);
  t.same(actions, ['create_volume', 'attach_volume', 'detach_volume', 'attach_volume']);
  t.equal((await api(cloud, 'DELETE', `/volumes/${vid}`)).status, 204);
  t.notOk(existsSync(cloud.volumeDir(vid)), 'its data is gone');
  t.equal((await api(cloud, 'GET', `/volumes/${vid}`)).status, 404);
  t.equal(cloud.volumes().length, 3);

  // Pricing; faults on the new routes.
  const prices = obj(obj((await api(cloud, 'GET', '/pricing')).json)['pricing']);
  t.same(obj(prices['volume'])['price_per_gb_month'], { net: '0.0440000000', gross: '0.0523600000000000' });
  cloud.inject({ method: 'POST', path: /^\/volumes\/\d+\/actions\/attach$/, status: 503, code: 'unavailable' });
  const faulted = await api(cloud, 'POST', `/volumes/${vid + 1}/actions/attach`, { server: a.id });
  t.equal(faulted.status, 503);
  t.equal(errorCode(faulted), 'unavailable');
  t.same(cloud.schemaErrors, [], 'every answer matches openapi.json');
});

t.test(
  "real servers: a volume's data outlives the server it was written on",
  { skip: canRunServers ? false : 'needs root, /usr/sbin/sshd, /nix, unshare and nsenter' },
  async (t) => {
    const { cloud } = await startCloud(t, { realServers: true, bootDelayMs: 100, readyDelayMs: 50, deleteDelayMs: 50 });
    const host = keyPair('test');
    const login = keyPair('test');
    const userData = `#cloud-config\n${JSON.stringify({ ssh_keys: { ed25519_private: host.private, ed25519_public: host.public }, users: [{ name: 'root', ssh_authorized_keys: [login.public] }] })}\n`;
    const vol = obj(
      (await api(cloud, 'POST', '/volumes', { name: 'store', size: 10, location: 'fsn1' })).json,
    ) as unknown as Schemas['create_volume_response'];
    const vid = vol.volume.id;
    await actionDone(cloud, vol.action.id);
    const mnt = `/mnt/HC_Volume_${vid}`;

    const boot = async (name: string, extra: Record<string, unknown>): Promise<{ id: number; client: Client }> => {
      const r = obj(
        (await api(cloud, 'POST', '/servers', { ...baseServer, name, user_data: userData, ...extra })).json,
      ) as unknown as Schemas['create_server_response'];
      await until(`${name} sshd`, () => cloud.liveServers().find((s) => s.id === r.server.id)?.sshdRunning);
      return { id: r.server.id, client: await sshConnect(r.server.public_net.ipv4?.ip ?? '', login.private, host.public) };
    };

    // Server A boots with the volume and writes into it.
    const a = await boot('vol-a', { volumes: [vid] });
    const wrote = await sshExec(a.client, `echo from-a > ${mnt}/proof && findmnt -n -o TARGET ${mnt}`);
    t.equal(wrote.code, 0, wrote.stderr);
    t.equal(wrote.stdout.trim(), mnt, 'mounted where automount puts it');
    a.client.end();
    t.equal(readFileSync(join(cloud.volumeDir(vid), 'proof'), 'utf8'), 'from-a\n', 'written into the volume folder');
    t.notOk(existsSync(`${mnt}`), "the host's /mnt is untouched");
    await api(cloud, 'DELETE', `/servers/${a.id}`);
    await until(
      'A deleted and the volume free',
      async () => (obj((await api(cloud, 'GET', `/volumes/${vid}`)).json)['volume'] as Schemas['volume']).server === null,
    );

    // Server B, booted later with no volume, gets it hot-plugged and reads A's file.
    const b = await boot('vol-b', {});
    t.equal((await sshExec(b.client, `test -e ${mnt} && echo there || echo absent`)).stdout, 'absent\n');
    const attach = obj((await api(cloud, 'POST', `/volumes/${vid}/actions/attach`, { server: b.id, automount: false })).json)[
      'action'
    ] as Schemas['action'];
    await actionDone(cloud, attach.id);
    t.equal((await sshExec(b.client, `cat ${mnt}/proof`)).stdout, 'from-a\n', "A's file is on B");
    const detach = obj((await api(cloud, 'POST', `/volumes/${vid}/actions/detach`)).json)['action'] as Schemas['action'];
    await actionDone(cloud, detach.id);
    t.equal((await sshExec(b.client, `test -e ${mnt} && echo there || echo absent`)).stdout, 'absent\n', 'gone from B once detached');
    b.client.end();

    // Server C boots with it, after B was left running without it.
    const c = await boot('vol-c', { volumes: [vid] });
    t.equal((await sshExec(c.client, `cat ${mnt}/proof`)).stdout, 'from-a\n', 'and on C, attached at boot');
    c.client.end();
    t.same(cloud.schemaErrors, []);
  },
);
