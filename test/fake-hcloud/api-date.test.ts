// The fake answers as the API does on its day (`apiDate`): every property that openapi.json marks
// deprecated with a removal date before that day is left out, read from the description itself,
// so a newly deprecated property is dropped without a change to the fake.

import t, { type Test } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { FakeCloud } from './fake-cloud.js';
import { checkResponse, deprecatedAnswerProperties, removalDate, type DeprecatedProperty } from './openapi.js';

const TOKEN = 'fake-token-0123456789';
/** The day before `server.datacenter` and its kind go ("will be removed after the 1 July 2026"). */
const BEFORE = new Date('2026-07-01T12:00:00Z');

async function startCloud(t: Test, apiDate?: Date): Promise<FakeCloud> {
  const dir = mkdtempSync(join(tmpdir(), 'fake-hcloud-api-date-'));
  const cloud = await FakeCloud.start({
    token: TOKEN,
    dataDir: dir,
    realServers: false,
    bootDelayMs: 20,
    deleteDelayMs: 20,
    readyDelayMs: 20,
    log: () => undefined,
    ...(apiDate ? { apiDate } : {}),
  });
  t.teardown(async () => {
    await cloud.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return cloud;
}

async function api(cloud: FakeCloud, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  const res = await fetch(`${cloud.url}${path}`, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
    body: body === undefined ? null : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: text === '' ? null : (JSON.parse(text) as unknown) };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The id of the first item a list answer holds (its one array), or undefined. */
function firstId(json: unknown): number | undefined {
  if (!isRecord(json)) return undefined;
  const list = Object.values(json).find((v): v is unknown[] => Array.isArray(v));
  const first = list?.[0];
  return isRecord(first) && typeof first['id'] === 'number' ? first['id'] : undefined;
}

/**
 * One answer of each operation the fake serves that can be had without side effects, keyed by
 * "METHOD template": every GET (a `{param}` filled with the first item of the list above it) and
 * the answer of creating a server. The project holds a server, an ssh key and a volume.
 */
async function sampleAnswers(cloud: FakeCloud): Promise<Map<string, unknown>> {
  const answers = new Map<string, unknown>();
  await api(cloud, 'POST', '/ssh_keys', { name: 'k', public_key: generateKeyPair('k').publicKey });
  const created = await api(cloud, 'POST', '/servers', {
    name: 'w1',
    server_type: 'cx23',
    image: 'ubuntu-24.04',
    location: 'fsn1',
    ssh_keys: ['k'],
  });
  if (created.status !== 201) throw new Error(`create server: ${JSON.stringify(created.json)}`);
  answers.set('POST /servers', created.json);
  await api(cloud, 'POST', '/volumes', { name: 'v1', size: 10, location: 'fsn1' });
  for (const { method, template } of cloud.servedOperations()) {
    if (method !== 'GET') continue;
    let path = '';
    for (const segment of template.split('/').slice(1)) {
      if (!/^\{\w+\}$/.test(segment)) {
        path += `/${segment}`;
        continue;
      }
      const list = await api(cloud, 'GET', path);
      const id = list.status === 200 ? firstId(list.json) : undefined;
      if (id === undefined) break;
      path += `/${id}`;
    }
    if (path.split('/').length !== template.split('/').length) continue;
    const answer = await api(cloud, 'GET', path);
    if (answer.status === 200) answers.set(`GET ${template}`, answer.json);
  }
  return answers;
}

/** The objects at `path` minus its last name ("[]": each item), and whether each has that name. */
function holders(answer: unknown, path: readonly string[]): boolean[] {
  let level: unknown[] = [answer];
  for (const name of path.slice(0, -1)) {
    level = level.flatMap((v) =>
      name === '[]' ? (Array.isArray(v) ? (v as unknown[]) : []) : isRecord(v) && v[name] !== undefined ? [v[name]] : [],
    );
  }
  const last = path[path.length - 1] ?? '';
  return level.filter(isRecord).map((v) => last in v);
}

const where = (p: DeprecatedProperty): string => `${p.method} ${p.template} -> ${p.path.join('.')}`;

/** The deprecated properties of the fake's answers, and which of them it sends on `apiDate`. */
async function check(t: Test, apiDate: Date | undefined): Promise<void> {
  const cloud = await startCloud(t, apiDate);
  const day = apiDate ?? new Date();
  const properties = deprecatedAnswerProperties(cloud.servedOperations());
  t.ok(
    properties.some((p) => p.template === '/servers/{id}' && p.path.join('.') === 'server.datacenter'),
    'the walk of the description finds server.datacenter',
  );
  const answers = await sampleAnswers(cloud);
  for (const p of properties) {
    const gone = p.removedFrom !== null && p.removedFrom.getTime() <= day.getTime();
    const answer = answers.get(`${p.method} ${p.template}`);
    // Each dated deprecation must be seen in an answer, or this test proves nothing about it.
    if (answer === undefined) {
      t.equal(p.removedFrom, null, `${where(p)}: an answer of this operation is sampled`);
      continue;
    }
    const has = holders(answer, p.path);
    t.ok(has.length > 0, `${where(p)}: the answer holds its object`);
    t.same(
      has,
      has.map(() => !gone),
      `${where(p)}: ${gone ? 'left out' : 'sent'} on ${day.toISOString().slice(0, 10)}`,
    );
  }
  t.same(cloud.schemaErrors, [], 'every answer matches the schema of its day');
}

t.test('removal dates are read from the deprecation text', async (t) => {
  t.same(
    removalDate('**Deprecated**: This property is deprecated and will be removed after the 1 July 2026.'),
    new Date('2026-07-02T00:00:00Z'),
  );
  t.same(removalDate('will be removed after 01 July 2026. Use the `location` key instead.'), new Date('2026-07-02T00:00:00Z'));
  t.equal(removalDate('This field is deprecated.'), null, 'no date: still sent');
});

t.test('today (the default): the deprecated properties past their date are left out of every answer', async (t) => {
  await check(t, undefined);
});

t.test('on an earlier day the same properties are there', async (t) => {
  await check(t, BEFORE);
});

t.test('the schema of a day does not require what is gone by then, and still does before', async (t) => {
  const cloud = await startCloud(t, new Date('2026-12-01T00:00:00Z'));
  const answers = await sampleAnswers(cloud);
  const server = answers.get('GET /servers/{id}');
  t.ok(isRecord(server) && isRecord(server['server']) && !('datacenter' in server['server']), 'no datacenter in the answer');
  t.equal(checkResponse('GET', '/servers/{id}', 200, server, new Date('2026-12-01T00:00:00Z')), null);
  t.match(checkResponse('GET', '/servers/{id}', 200, server, BEFORE), /datacenter/);
});
