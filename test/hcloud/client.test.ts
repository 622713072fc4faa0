// Tests of the Hetzner Cloud client against a tiny local HTTP stub (retries, timeouts, pagination,
// the action waiter, aborts). Sleeps are injected so that backoff costs no wall-clock time.
import { getEventListeners } from 'node:events';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import t, { type Test } from 'tap';
import { pino } from 'pino';
import { HcloudClient, type HcloudClientOptions } from '../../src/hcloud/client.js';
import { HcloudError, isNotFound, isVolumeAttached } from '../../src/hcloud/errors.js';
import {
  abortableSleep,
  backoffDelay,
  defaultRetryPolicy,
  failureProvesNotApplied,
  rateLimitDelay,
  resolveRetryPolicy,
  shouldRetry,
} from '../../src/hcloud/retry.js';
import type { Action, CreateServerRequest } from '../../src/hcloud/types.js';
import { rejection } from './rejection.js';

const TOKEN = 'stub-token-0123456789abcdefghijklmnopqrstuvwxyz';

interface StubRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  body: string;
  headers: http.IncomingHttpHeaders;
}
type Reply = { status?: number; json?: unknown; text?: string; headers?: Record<string, string>; delayMs?: number } | 'destroy' | 'hang';
type Handler = (req: StubRequest, index: number) => Reply | Promise<Reply>;

interface Stub {
  url: string;
  requests: StubRequest[];
}

async function startStub(t: Test, handler: Handler): Promise<Stub> {
  const requests: StubRequest[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://stub');
      const seen: StubRequest = {
        method: req.method ?? '',
        path: url.pathname.replace(/^\/v1/, ''),
        query: url.searchParams,
        body: Buffer.concat(chunks).toString('utf8'),
        headers: req.headers,
      };
      requests.push(seen);
      void Promise.resolve(handler(seen, requests.length - 1)).then((reply) => {
        if (reply === 'destroy') {
          req.socket.destroy();
          return;
        }
        if (reply === 'hang') return;
        const send = (): void => {
          const status = reply.status ?? 200;
          const body = reply.text ?? (reply.json === undefined ? '' : JSON.stringify(reply.json));
          res.writeHead(status, { 'Content-Type': 'application/json', ...reply.headers });
          res.end(body);
        };
        if (reply.delayMs) setTimeout(send, reply.delayMs);
        else send();
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/v1`, requests };
}

interface Harness {
  client: HcloudClient;
  slept: number[];
  logs: { level: string; obj: Record<string, unknown>; msg: string }[];
}

function makeClient(url: string, opts: Partial<HcloudClientOptions> = {}): Harness {
  const slept: number[] = [];
  const logs: Harness['logs'] = [];
  const log = (level: string) => (obj: Record<string, unknown>, msg: string) => logs.push({ level, obj, msg });
  const client = new HcloudClient({
    endpoint: url,
    token: TOKEN,
    retry: { jitter: false },
    sleep: async (ms, signal) => {
      slept.push(ms);
      signal?.throwIfAborted();
    },
    logger: { debug: log('debug'), info: log('info'), warn: log('warn') },
    ...opts,
  });
  return { client, slept, logs };
}

function apiError(status: number, code: string, message: string, details: unknown = null, headers: Record<string, string> = {}): Reply {
  return { status, json: { error: { code, message, details } }, headers };
}

function action(id: number, status: Action['status'], progress = status === 'success' ? 100 : 0, command = 'create_server'): Action {
  return {
    id,
    command,
    status,
    progress,
    error: status === 'error' ? { code: 'action_failed', message: 'Action failed' } : null,
    started: '2025-01-01T00:00:00Z',
    finished: status === 'running' ? null : '2025-01-01T00:00:10Z',
    resources: [{ id: 42, type: 'server' }],
  };
}

function server(
  id: number,
  name: string,
  labels: Record<string, string> = {},
  created = new Date().toISOString(),
): Record<string, unknown> {
  return { id, name, labels, created, status: 'initializing' };
}

const createRequest: CreateServerRequest = {
  name: 'builder-7f3a',
  server_type: 'cax21',
  image: 'ubuntu-24.04',
  location: 'fsn1',
  labels: { 'nix-hcloud-builder/pool': 'default', 'nix-hcloud-builder/id': '7f3a' },
  start_after_create: true,
  user_data: '#cloud-config\n',
  public_net: { enable_ipv4: false, enable_ipv6: true },
};

function assertNoToken(t: Test, err: HcloudError, logs: Harness['logs'] = []): void {
  const text = [err.message, err.stack ?? '', JSON.stringify(err), JSON.stringify(logs)].join('\n');
  t.notOk(text.includes(TOKEN), 'token appears in no error text or log');
  t.notOk(/authorization/i.test(text), 'no Authorization header in error text or logs');
}

// ------------------------------------------------------------------------ errors

t.test('error answers are parsed into HcloudError', async (t) => {
  const details = { fields: [{ name: 'name', messages: ['invalid hostname'] }] };
  const stub = await startStub(t, () =>
    apiError(422, 'invalid_input', 'invalid input in field name', details, { 'X-Correlation-Id': 'corr-123' }),
  );
  const { client, logs } = makeClient(stub.url);
  const err = await rejection(client.createServer(createRequest));
  t.equal(err.status, 422);
  t.equal(err.code, 'invalid_input');
  t.match(err.message, /invalid input in field name/);
  t.same(err.details, details);
  t.equal(err.requestId, 'corr-123');
  t.equal(err.method, 'POST');
  t.equal(err.path, '/servers');
  t.equal(err.retryable, false);
  t.equal(stub.requests.length, 1, '422 is not retried');
  assertNoToken(t, err, logs);

  const sent = stub.requests[0];
  t.equal(sent?.headers.authorization, `Bearer ${TOKEN}`, 'token sent as bearer');
  t.equal(sent?.headers['content-type'], 'application/json');
  t.same(JSON.parse(sent?.body ?? ''), createRequest, 'body is the typed request');
});

t.test('401, 403 and 404 are not retried and say what is wrong', async (t) => {
  const replies: Record<string, Reply> = {
    '/servers/1': apiError(401, 'unauthorized', 'unable to authenticate'),
    '/servers/2': apiError(403, 'forbidden', 'insufficient permissions'),
    '/servers/3': apiError(404, 'not_found', 'server with ID 3 not found'),
    '/servers/4': apiError(403, 'resource_limit_exceeded', 'server limit exceeded', { limits: [{ name: 'server' }] }),
  };
  const stub = await startStub(t, (req) => replies[req.path] ?? apiError(500, 'server_error', 'unexpected'));
  const { client, slept, logs } = makeClient(stub.url);

  t.equal(client.tokenRefused, false, 'no answer yet: not known to be refused');
  const e401 = await rejection(client.getServer(1));
  t.equal(e401.status, 401);
  t.equal(e401.code, 'unauthorized');
  t.match(e401.message, /token is wrong/);
  assertNoToken(t, e401, logs);
  t.equal(client.tokenRefused, true, 'the client knows the token was refused');

  const e403 = await rejection(client.getServer(2));
  t.equal(e403.status, 403);
  t.equal(client.tokenRefused, false, 'any other answer means the token was taken');
  t.match(e403.message, /read-only/);

  const e404 = await rejection(client.getServer(3));
  t.equal(e404.code, 'not_found');
  t.ok(isNotFound(e404));

  const limit = await rejection(client.getServer(4));
  t.equal(limit.code, 'resource_limit_exceeded');
  t.notMatch(limit.message, /read-only/, 'only the forbidden code hints at a read-only token');
  t.same(limit.details, { limits: [{ name: 'server' }] });

  t.equal(stub.requests.length, 4, 'one request each');
  t.same(slept, []);
});

t.test('a non-JSON error answer keeps its status', async (t) => {
  const stub = await startStub(t, () => ({ status: 418, text: '<html>teapot</html>' }));
  const { client } = makeClient(stub.url);
  const err = await rejection(client.getServer(1));
  t.equal(err.status, 418);
  t.equal(err.code, 'http_418');
  t.match(err.message, /teapot/);
});

t.test('a 2xx that is not JSON is invalid_response', async (t) => {
  const stub = await startStub(t, () => ({ status: 200, text: 'not json' }));
  const { client } = makeClient(stub.url);
  const err = await rejection(client.getAction(5));
  t.equal(err.code, 'invalid_response');
  t.equal(err.retryable, false);
});

t.test('an answer past maxAnswerBytes is an error saying so, with a Content-Length or without one', async (t) => {
  const big = JSON.stringify({ server: server(1, 'a'), padding: 'x'.repeat(4096) });
  for (const headers of [{}, { 'Transfer-Encoding': 'chunked' }]) {
    const stub = await startStub(t, () => ({ status: 200, text: big, headers }));
    const { client } = makeClient(stub.url, { maxAnswerBytes: 1024 });
    const err = await rejection(client.getServer(1));
    t.equal(err.code, 'invalid_response', JSON.stringify(headers));
    t.match(err.message, /answer is larger than 1024 bytes/);
    t.equal(stub.requests.length, 1, 'not retried');
    const { client: roomy } = makeClient(stub.url, { maxAnswerBytes: big.length });
    t.equal((await roomy.getServer(1)).id, 1, 'an answer of exactly the limit is read');
  }
});

t.test('plain http is refused except to a loopback address (the token would cross the network in clear)', async (t) => {
  for (const endpoint of [
    'http://api.hetzner.cloud/v1',
    'http://10.0.0.1/v1',
    'http://[fd00::1]/v1',
    'http://localhost.evil.example/v1',
    'ftp://127.0.0.1/v1',
  ]) {
    t.throws(() => new HcloudClient({ endpoint, token: TOKEN }), /clear text|not an http/, endpoint);
  }
  for (const endpoint of ['https://api.hetzner.cloud/v1', 'http://127.0.0.1:8080/v1', 'http://127.1.2.3/v1', 'http://[::1]:9/v1']) {
    t.doesNotThrow(() => new HcloudClient({ endpoint, token: TOKEN }), endpoint);
  }
});

t.test('isNotFound is the one test of "gone": a 404 with the API\'s not_found code, nothing else', async (t) => {
  t.ok(isNotFound(new HcloudError({ status: 404, code: 'not_found', message: 'server with ID 3 not found' })));
  t.notOk(
    isNotFound(new HcloudError({ status: 404, code: 'http_404', message: '<html>Not Found</html>' })),
    "a 404 without the API's error body (a proxy, a wrong endpoint)",
  );
  t.notOk(
    isNotFound(new HcloudError({ status: 0, code: 'not_found', message: 'action failed', action: action(9, 'error', 0, 'delete_server') })),
    'a failed action',
  );
  t.notOk(isNotFound(new HcloudError({ status: 410, code: 'not_found', message: 'gone?' })));
  t.notOk(isNotFound(Object.assign(new Error('not found'), { status: 404, code: 'not_found' })), 'only HcloudError');
});

t.test('deleteServerAndWait takes a server as gone exactly when isNotFound says so', async (t) => {
  const failedDelete: Action = {
    ...action(7, 'error', 0, 'delete_server'),
    error: { code: 'not_found', message: 'server vanished mid-delete' },
  };
  const stub = await startStub(t, (req) => {
    if (req.path === '/servers/1') return apiError(404, 'not_found', 'server with ID 1 not found');
    if (req.path === '/servers/2') return { status: 404, text: '<html>Not Found</html>' };
    if (req.path === '/servers/3') return { json: { action: action(7, 'running', 0, 'delete_server') } };
    if (req.path === '/actions') return { json: { actions: [failedDelete], meta: { pagination: { page: 1, next_page: null } } } };
    return { json: { action: failedDelete } };
  });
  const { client } = makeClient(stub.url);
  t.equal(await client.deleteServerAndWait(1), false, 'API 404 not_found: already gone');
  t.equal((await rejection(client.deleteServerAndWait(2))).code, 'http_404', 'a bare 404: an error, not "gone"');
  const failed = await rejection(client.deleteServerAndWait(3));
  t.equal(failed.code, 'not_found', 'a delete action that failed with not_found: an error, not "gone"');
  t.ok(failed.action, 'the failed action');
});

// ------------------------------------------------------------------------ retries

t.test('429 waits until RateLimit-Reset', async (t) => {
  const now = 1_700_000_000_000;
  const stub = await startStub(t, (_req, i) =>
    i === 0
      ? apiError(429, 'rate_limit_exceeded', 'limit of 3600 requests per hour reached', null, {
          'RateLimit-Limit': '3600',
          'RateLimit-Remaining': '0',
          'RateLimit-Reset': String(now / 1000 + 7),
        })
      : { json: { server: server(9, 'a') } },
  );
  const { client, slept } = makeClient(stub.url, { now: () => now });
  const s = await client.getServer(9);
  t.equal(s.id, 9);
  t.same(slept, [7000], 'slept exactly until the reset time');
  t.equal(stub.requests.length, 2);
});

t.test('429 without RateLimit-Reset backs off; a far reset is capped', async (t) => {
  const now = 1_700_000_000_000;
  const stub = await startStub(t, (_req, i) => {
    if (i === 0) return apiError(429, 'rate_limit_exceeded', 'slow down');
    if (i === 1) return apiError(429, 'rate_limit_exceeded', 'slow down', null, { 'RateLimit-Reset': String(now / 1000 + 3600) });
    return { json: { action: action(1, 'running') } };
  });
  const { client, slept } = makeClient(stub.url, { now: () => now });
  await client.getAction(1);
  t.same(slept, [1000, 60_000], 'backoff, then the reset capped at maxDelayMs');
});

t.test('5xx retries are bounded and back off exponentially', async (t) => {
  const stub = await startStub(t, () => apiError(503, 'unavailable', 'service unavailable'));
  const { client, slept } = makeClient(stub.url, { retry: { jitter: false, maxRetries: 5, maxDelayMs: 10_000 } });
  const err = await rejection(client.getServer(1));
  t.equal(err.status, 503);
  t.equal(err.retryable, true);
  t.equal(stub.requests.length, 6, 'first try + 5 retries');
  t.same(slept, [1000, 2000, 4000, 8000, 10_000], 'x2 growth, capped');
});

t.test('500, 502 and 504 are retried for GET, then succeed', async (t) => {
  const stub = await startStub(t, (_req, i) => {
    if (i === 0) return apiError(500, 'server_error', 'boom');
    if (i === 1) return { status: 502, text: 'Bad Gateway' };
    if (i === 2) return apiError(504, 'timeout', 'gateway timeout');
    return { json: { server: server(1, 'a') } };
  });
  const { client, slept, logs } = makeClient(stub.url);
  await client.getServer(1);
  t.same(slept, [1000, 2000, 4000]);
  t.equal(logs.filter((l) => l.level === 'warn').length, 3, 'each retry is logged');
  t.notOk(JSON.stringify(logs).includes(TOKEN));
});

t.test('jittered backoff stays between base and the exponential delay', async (t) => {
  const stub = await startStub(t, () => apiError(500, 'server_error', 'boom'));
  const { client, slept } = makeClient(stub.url, { retry: { jitter: true, maxRetries: 4 } });
  await rejection(client.getServer(1));
  t.equal(slept.length, 4);
  slept.forEach((ms, i) => t.ok(ms >= 1000 && ms <= 1000 * 2 ** i, `retry ${i}: ${ms} ms in range`));
});

t.test('409 conflict is retried, uniqueness_error is not', async (t) => {
  const stub = await startStub(t, (req, i) => {
    if (req.path === '/servers/1')
      return i === 0 ? apiError(409, 'conflict', 'resource changed') : { json: { action: action(3, 'running', 0, 'delete_server') } };
    return apiError(409, 'uniqueness_error', 'server name is already used');
  });
  const { client, slept } = makeClient(stub.url);
  const a = await client.deleteServer(1);
  t.equal(a.command, 'delete_server');
  t.same(slept, [1000]);
  const err = await rejection(client.createServer(createRequest));
  t.equal(err.code, 'uniqueness_error');
  t.equal(err.retryable, false);
  t.equal(stub.requests.filter((r) => r.method === 'POST').length, 1, 'no resend');
  t.equal(stub.requests.filter((r) => r.method === 'GET').length, 0, 'no adoption on a first-attempt uniqueness_error');
});

t.test('network errors are retried', async (t) => {
  const stub = await startStub(t, (_req, i) => (i < 2 ? 'destroy' : { json: { server: server(1, 'a') } }));
  const { client, slept } = makeClient(stub.url);
  const s = await client.getServer(1);
  t.equal(s.id, 1);
  t.same(slept, [1000, 2000]);

  // A port nothing listens on any more: connection refused, every time.
  const port = await new Promise<number>((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolve(port));
    });
  });
  const dead = makeClient(`http://127.0.0.1:${port}/v1`, { retry: { jitter: false, maxRetries: 2 } });
  const err = await rejection(dead.client.listServers());
  t.equal(err.status, 0);
  t.equal(err.code, 'network_error');
  t.equal(err.retryable, true);
  t.ok(failureProvesNotApplied(err), 'a refused connection proves nothing was sent');
  t.same(dead.slept, [1000, 2000]);
  assertNoToken(t, err, dead.logs);
});

t.test('per-request timeouts are retried and reported as timeout', async (t) => {
  const stub = await startStub(t, (_req, i) =>
    i === 0 ? 'hang' : i === 1 ? { delayMs: 500, json: {} } : { json: { server: server(1, 'a') } },
  );
  const { client, slept } = makeClient(stub.url, { requestTimeoutMs: 100 });
  const s = await client.getServer(1);
  t.equal(s.id, 1);
  t.equal(stub.requests.length, 3);
  t.same(slept, [1000, 2000]);

  const always = await startStub(t, () => 'hang');
  const h = makeClient(always.url, { requestTimeoutMs: 50, retry: { maxRetries: 1, jitter: false } });
  const err = await rejection(h.client.getServer(1));
  t.equal(err.code, 'timeout');
  t.equal(err.status, 0);
  t.equal(err.retryable, true);
  t.equal(always.requests.length, 2);
});

// ------------------------------------------------------------------------ POST /servers rule

t.test('createServer is resent after a 500 (names are unique) and succeeds', async (t) => {
  const created = {
    server: server(42, createRequest.name, createRequest.labels),
    action: action(1, 'running'),
    next_actions: [action(2, 'running', 0, 'start_server')],
    root_password: null,
  };
  const stub = await startStub(t, (_req, i) => (i === 0 ? apiError(500, 'server_error', 'boom') : { status: 201, json: created }));
  const { client, slept } = makeClient(stub.url);
  const res = await client.createServer(createRequest);
  t.equal(res.server.id, 42);
  t.equal(res.action.id, 1);
  t.same(slept, [1000]);
  t.equal(stub.requests.length, 2);
});

t.test('createServer after a lost answer adopts the server it created', async (t) => {
  const labels = createRequest.labels ?? {};
  const stub = await startStub(t, (req, i) => {
    if (req.method === 'POST')
      return i === 0 ? apiError(504, 'timeout', 'gateway timeout') : apiError(409, 'uniqueness_error', 'server name is already used');
    if (req.path === '/servers') {
      return {
        json: {
          servers: [server(42, createRequest.name, { ...labels, extra: 'x' })],
          meta: { pagination: { page: 1, per_page: 50, previous_page: null, next_page: null, last_page: 1, total_entries: 1 } },
        },
      };
    }
    if (req.path === '/servers/42/actions') {
      return {
        json: {
          actions: [action(7, 'success'), action(8, 'running', 10, 'start_server')],
          meta: { pagination: { page: 1, per_page: 50, previous_page: null, next_page: null, last_page: 1, total_entries: 2 } },
        },
      };
    }
    return apiError(404, 'not_found', 'no');
  });
  const { client, logs } = makeClient(stub.url);
  const res = await client.createServer(createRequest);
  t.equal(res.server.id, 42);
  t.equal(res.action.id, 7);
  t.same(
    res.next_actions.map((a) => a.id),
    [8],
  );
  t.equal(res.root_password, null);
  t.equal(stub.requests.filter((r) => r.method === 'POST').length, 2, 'exactly one resend');
  t.equal(stub.requests.find((r) => r.path === '/servers' && r.method === 'GET')?.query.get('name'), createRequest.name);
  t.ok(logs.some((l) => l.level === 'warn' && /adopted/.test(l.msg)));
});

t.test('createServer does not adopt a foreign server with the same name', async (t) => {
  const stub = await startStub(t, (req, i) => {
    if (req.method === 'POST') return i === 0 ? 'destroy' : apiError(409, 'uniqueness_error', 'server name is already used');
    return {
      json: {
        servers: [server(43, createRequest.name, { owner: 'someone-else' })],
        meta: { pagination: { page: 1, per_page: 50, previous_page: null, next_page: null, last_page: 1, total_entries: 1 } },
      },
    };
  });
  const { client } = makeClient(stub.url);
  const err = await rejection(client.createServer(createRequest));
  t.equal(err.code, 'uniqueness_error');
  t.equal(stub.requests.filter((r) => r.path.includes('/actions')).length, 0);
});

t.test('the POST rule: unsafe requests are resent only when the failure proves nothing happened', async (t) => {
  const mk = (status: number, code: string, cause?: unknown): HcloudError => new HcloudError({ status, code, message: code, cause });
  const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' });
  const reset = Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' });
  const cases: [HcloudError, boolean, boolean][] = [
    // error, unsafe POST retried, GET retried
    [mk(429, 'rate_limit_exceeded'), true, true],
    [mk(409, 'conflict'), true, true],
    [mk(409, 'uniqueness_error'), false, false],
    [mk(503, 'maintenance'), true, true],
    [mk(500, 'server_error'), false, true],
    [mk(502, 'http_502'), false, true],
    [mk(504, 'timeout'), false, true],
    [mk(0, 'timeout'), false, true],
    [mk(0, 'network_error', new TypeError('fetch failed', { cause: refused })), true, true],
    [mk(0, 'network_error', new TypeError('fetch failed', { cause: new AggregateError([refused, refused]) })), true, true],
    [mk(0, 'network_error', new TypeError('fetch failed', { cause: reset })), false, true],
    [mk(0, 'aborted'), false, false],
    [mk(401, 'unauthorized'), false, false],
    [mk(403, 'forbidden'), false, false],
    [mk(404, 'not_found'), false, false],
    [mk(412, 'resource_unavailable'), false, false],
    [mk(422, 'invalid_input'), false, false],
    [mk(423, 'locked'), false, false],
  ];
  for (const [err, unsafe, idempotent] of cases) {
    t.equal(shouldRetry(err, 'unsafe'), unsafe, `${err.status} ${err.code}: unsafe POST`);
    t.equal(shouldRetry(err, 'idempotent'), idempotent, `${err.status} ${err.code}: GET/DELETE`);
    t.equal(shouldRetry(err, 'unique_name'), idempotent, `${err.status} ${err.code}: POST /servers`);
  }
});

// ------------------------------------------------------------------------ retry helpers

t.test('retry policy helpers', async (t) => {
  t.same({ ...defaultRetryPolicy }, { maxRetries: 5, baseDelayMs: 1000, maxDelayMs: 60_000, factor: 2, jitter: true });
  const p = resolveRetryPolicy({ jitter: false });
  t.same(
    [0, 1, 2, 5, 6, 10].map((r) => backoffDelay(p, r)),
    [1000, 2000, 4000, 32_000, 60_000, 60_000],
  );
  t.equal(
    backoffDelay({ ...p, jitter: true }, 3, () => 0),
    1000,
  );
  t.equal(
    backoffDelay({ ...p, jitter: true }, 3, () => 1),
    8000,
  );
  t.equal(rateLimitDelay('1000', 995_500, p), 4500);
  t.equal(rateLimitDelay('1000', 1_000_500, p), undefined, 'past reset');
  t.equal(rateLimitDelay('soon', 0, p), undefined);
  t.equal(rateLimitDelay(null, 0, p), undefined);
  t.throws(() => resolveRetryPolicy({ maxRetries: -1 }));
  t.throws(() => resolveRetryPolicy({ baseDelayMs: 5000, maxDelayMs: 10 }));
});

// ------------------------------------------------------------------------ pagination

t.test('listServers follows pagination across 3 pages', async (t) => {
  const all = Array.from({ length: 120 }, (_, i) => server(i + 1, `builder-${i + 1}`, { pool: 'default' }));
  const stub = await startStub(t, (req) => {
    const page = Number(req.query.get('page'));
    const perPage = Number(req.query.get('per_page'));
    const last = Math.ceil(all.length / perPage);
    return {
      json: {
        servers: all.slice((page - 1) * perPage, page * perPage),
        meta: {
          pagination: {
            page,
            per_page: perPage,
            previous_page: page > 1 ? page - 1 : null,
            next_page: page < last ? page + 1 : null,
            last_page: last,
            total_entries: all.length,
          },
        },
      },
    };
  });
  const { client } = makeClient(stub.url);
  const servers = await client.listServers({ labelSelector: 'pool=default', status: ['running', 'initializing'] });
  t.equal(servers.length, 120);
  t.same(
    servers.map((s) => s.id),
    all.map((s) => s.id),
  );
  t.same(
    stub.requests.map((r) => r.query.get('page')),
    ['1', '2', '3'],
  );
  for (const r of stub.requests) {
    t.equal(r.path, '/servers');
    t.equal(r.query.get('per_page'), '50');
    t.equal(r.query.get('label_selector'), 'pool=default');
    t.same(r.query.getAll('status'), ['running', 'initializing']);
  }
});

t.test('catalogue lists pass their filters', async (t) => {
  const meta = { pagination: { page: 1, per_page: 50, previous_page: null, next_page: null, last_page: 1, total_entries: 1 } };
  const stub = await startStub(t, (req) => {
    if (req.path === '/images') return { json: { images: [{ id: 5, name: null }], meta } };
    if (req.path === '/server_types') return { json: { server_types: [{ id: 1, name: 'cax21' }], meta } };
    if (req.path === '/locations') return { json: { locations: [{ id: 1, name: 'fsn1' }], meta } };
    return apiError(404, 'not_found', 'no');
  });
  const { client } = makeClient(stub.url);
  const images = await client.listImages({
    type: 'snapshot',
    architecture: 'arm',
    labelSelector: 'nix-hcloud-builder/image',
    sort: 'created:desc',
  });
  t.equal(images[0]?.id, 5);
  const q = stub.requests[0]?.query;
  t.same(q?.getAll('type'), ['snapshot']);
  t.equal(q?.get('architecture'), 'arm');
  t.equal(q?.get('label_selector'), 'nix-hcloud-builder/image');
  t.same(q?.getAll('sort'), ['created:desc']);
  t.equal((await client.listServerTypes())[0]?.name, 'cax21');
  t.equal((await client.listLocations())[0]?.name, 'fsn1');
});

// ------------------------------------------------------------------------ actions

t.test('waitForActions polls until every action succeeds', async (t) => {
  const states: Record<number, Action[]> = {
    1: [action(1, 'running', 50), action(1, 'success')],
    2: [action(2, 'running', 0, 'start_server'), action(2, 'running', 0, 'start_server'), action(2, 'success', 100, 'start_server')],
  };
  let poll = 0;
  const stub = await startStub(t, (req) => {
    const ids = req.query.getAll('id').map(Number);
    const actions = ids.map((id) => {
      const seq = states[id] ?? [];
      return seq[Math.min(poll, seq.length - 1)];
    });
    poll++;
    return { json: { actions } };
  });
  const { client, slept } = makeClient(stub.url);
  const seen: string[] = [];
  const done = await client.waitForActions([action(1, 'running'), action(2, 'running', 0, 'start_server')], {
    onProgress: (a) => seen.push(`${a.id}:${a.status}:${a.progress}`),
  });
  t.same(
    done.map((a) => [a.id, a.status]),
    [
      [1, 'success'],
      [2, 'success'],
    ],
  );
  t.same(
    stub.requests.map((r) => r.query.getAll('id')),
    [['1', '2'], ['1', '2'], ['2']],
  );
  t.same(slept, [500, 500, 500], 'polls every actionPollIntervalMs');
  t.same(seen, ['1:running:50', '1:success:100', '2:success:100']);
});

t.test('waitForActions returns at once when nothing is running', async (t) => {
  const stub = await startStub(t, () => ({ json: { actions: [] } }));
  const { client } = makeClient(stub.url);
  const done = await client.waitForActions([action(1, 'success')]);
  t.equal(done[0]?.status, 'success');
  t.equal(stub.requests.length, 0);
});

t.test('waitForActions throws the failed action as HcloudError', async (t) => {
  const failed: Action = {
    ...action(9, 'error', 100, 'start_server'),
    error: { code: 'server_start_failed', message: 'could not start the server' },
  };
  const stub = await startStub(t, () => ({ json: { actions: [failed] } }));
  const { client } = makeClient(stub.url);
  const err = await rejection(client.waitForActions([action(9, 'running', 0, 'start_server')]));
  t.equal(err.code, 'server_start_failed');
  t.equal(err.message, 'could not start the server');
  t.equal(err.status, 0);
  t.equal(err.retryable, false);
  t.equal(err.action?.id, 9);
  t.match(err.details, { actionId: 9, command: 'start_server' });
});

t.test('waitForActions gives up at timeoutMs', async (t) => {
  let clock = 0;
  const stub = await startStub(t, () => ({ json: { actions: [action(1, 'running', 10)] } }));
  const { client } = makeClient(stub.url, {
    now: () => clock,
    sleep: async (ms) => {
      clock += ms;
    },
  });
  const err = await rejection(client.waitForActions([action(1, 'running')], { timeoutMs: 1200 }));
  t.equal(err.code, 'action_wait_timeout');
  t.same(err.details, { actionIds: [1], commands: ['create_server'] });
  t.equal(stub.requests.length, 3, 'polls at 500, 1000, 1200 ms');
});

t.test('getAction and deleteServer answer typed actions', async (t) => {
  const stub = await startStub(t, (req) =>
    req.method === 'DELETE' ? { json: { action: action(4, 'running', 0, 'delete_server') } } : { json: { action: action(3, 'success') } },
  );
  const { client } = makeClient(stub.url);
  t.equal((await client.getAction(3)).status, 'success');
  t.equal((await client.deleteServer(42)).command, 'delete_server');
  t.same(
    stub.requests.map((r) => `${r.method} ${r.path}`),
    ['GET /actions/3', 'DELETE /servers/42'],
  );
});

// ------------------------------------------------------------------------ aborts

t.test('abort cancels a retry sleep', async (t) => {
  const stub = await startStub(t, () => apiError(503, 'maintenance', 'maintenance'));
  const client = new HcloudClient({ endpoint: stub.url, token: TOKEN, retry: { baseDelayMs: 60_000, maxDelayMs: 60_000 } });
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 50);
  const started = Date.now();
  const err = await rejection(client.getServer(1, ac.signal));
  t.equal(err.code, 'aborted');
  t.equal(err.retryable, false);
  t.ok(Date.now() - started < 5000, 'did not wait for the backoff');
  t.equal(stub.requests.length, 1);
});

t.test('abort cancels a request in flight', async (t) => {
  const stub = await startStub(t, () => 'hang');
  const { client, slept } = makeClient(stub.url);
  const ac = new AbortController();
  const reason = new Error('shutting down');
  setTimeout(() => ac.abort(reason), 50);
  const err = await rejection(client.listServers({}, ac.signal));
  t.equal(err.code, 'aborted');
  t.equal(err.cause, reason, 'the abort reason is the cause');
  t.same(slept, [], 'not retried');
});

t.test('an aborted signal sends nothing', async (t) => {
  const stub = await startStub(t, () => ({ json: {} }));
  const { client } = makeClient(stub.url);
  const err = await rejection(client.createServer(createRequest, AbortSignal.abort()));
  t.equal(err.code, 'aborted');
  t.equal(stub.requests.length, 0);
});

t.test('abort cancels waitForActions', async (t) => {
  const stub = await startStub(t, () => ({ json: { actions: [action(1, 'running')] } }));
  const client = new HcloudClient({ endpoint: stub.url, token: TOKEN, actionPollIntervalMs: 20 });
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  const err = await rejection(client.waitForActions([action(1, 'running')], { signal: ac.signal }));
  t.equal(err.code, 'aborted');
  t.ok(stub.requests.length >= 1);
});

t.test('abortableSleep', async (t) => {
  await abortableSleep(1);
  const ac = new AbortController();
  const p = abortableSleep(60_000, ac.signal);
  ac.abort(new Error('stop'));
  await t.rejects(p, { message: 'stop' });
  await t.rejects(abortableSleep(10, AbortSignal.abort(new Error('already'))), { message: 'already' });
});

// ------------------------------------------------------------------------ options

t.test('options and logging', async (t) => {
  t.throws(() => new HcloudClient({ endpoint: 'not a url', token: TOKEN }));
  t.throws(() => new HcloudClient({ endpoint: 'https://api.hetzner.cloud/v1', token: '  ' }));
  const client = new HcloudClient({ endpoint: 'https://api.hetzner.cloud/v1/', token: TOKEN, logger: pino({ level: 'silent' }) });
  t.equal(client.endpoint, 'https://api.hetzner.cloud/v1');
  t.notOk(JSON.stringify(client).includes(TOKEN), 'token not in JSON of the client');

  const stub = await startStub(t, () => ({ json: { server: server(1, 'a') } }));
  const { client: c2, logs } = makeClient(stub.url, { userAgent: 'test-agent/1' });
  await c2.getServer(1);
  t.equal(stub.requests[0]?.headers['user-agent'], 'test-agent/1');
  t.ok(logs.some((l) => l.level === 'debug' && l.obj.status === 200));
  t.notOk(JSON.stringify(logs).includes(TOKEN));
});

t.test('a long-lived caller signal keeps no listeners after requests', async (t) => {
  const stub = await startStub(t, (_req, i) =>
    i % 2 === 0 ? apiError(500, 'server_error', 'boom') : { json: { server: server(1, 'a') } },
  );
  const { client } = makeClient(stub.url);
  const shutdown = new AbortController();
  for (let i = 0; i < 5; i++) await client.getServer(1, shutdown.signal);
  await client.waitForActions([action(1, 'success')], { signal: shutdown.signal });
  t.equal(getEventListeners(shutdown.signal, 'abort').length, 0);
});

t.test("volume calls: each request's method, path, query and body", async (t) => {
  const meta = { pagination: { page: 1, per_page: 50, previous_page: null, next_page: null, last_page: 1, total_entries: 1 } };
  const volume = { id: 7, name: 'store-0', size: 10, server: null, labels: {} };
  const stub = await startStub(t, (req) => {
    if (req.method === 'POST' && req.path === '/volumes')
      return { status: 201, json: { volume, action: action(1, 'running', 0, 'create_volume'), next_actions: [] } };
    if (req.method === 'GET' && req.path === '/volumes') return { json: { volumes: [volume], meta } };
    if (req.method === 'GET' && req.path === '/volumes/7') return { json: { volume } };
    if (req.method === 'PUT' && req.path === '/volumes/7') return { json: { volume } };
    if (req.path === '/volumes/7/actions/attach') return { status: 201, json: { action: action(2, 'running', 0, 'attach_volume') } };
    if (req.path === '/volumes/7/actions/detach') return { status: 201, json: { action: action(3, 'running', 0, 'detach_volume') } };
    if (req.method === 'DELETE' && req.path === '/volumes/7') return { status: 204 };
    if (req.path === '/pricing')
      return {
        json: { pricing: { currency: 'EUR', volume: { price_per_gb_month: { net: '0.0440000000', gross: '0.0523600000000000' } } } },
      };
    return apiError(404, 'not_found', 'no route');
  });
  const { client } = makeClient(stub.url);
  const created = await client.createVolume({
    name: 'store-0',
    size: 10,
    location: 'fsn1',
    labels: { 'nix-hcloud-builder/slot': '0' },
    format: 'ext4',
  });
  t.equal(created.action.command, 'create_volume');
  await client.getVolume(7);
  await client.listVolumes({ labelSelector: 'nix-hcloud-builder/pool=x86', name: 'store-0', status: ['available'], sort: 'id:asc' });
  await client.updateVolume(7, { labels: { a: 'b' } });
  t.equal((await client.attachVolume(7, 42)).command, 'attach_volume');
  await client.attachVolume(7, 43, true);
  t.equal((await client.detachVolume(7)).command, 'detach_volume');
  t.equal(await client.deleteVolume(7), undefined);
  const pricing = await client.getPricing();
  t.equal(pricing.volume.price_per_gb_month.net, '0.0440000000');

  const seen = stub.requests.map((r) => ({ method: r.method, path: r.path, body: r.body === '' ? null : (JSON.parse(r.body) as unknown) }));
  t.same(seen, [
    // No automount: the worker mounts the volume itself; no server: created detached.
    {
      method: 'POST',
      path: '/volumes',
      body: { name: 'store-0', size: 10, location: 'fsn1', labels: { 'nix-hcloud-builder/slot': '0' }, format: 'ext4' },
    },
    { method: 'GET', path: '/volumes/7', body: null },
    { method: 'GET', path: '/volumes', body: null },
    { method: 'PUT', path: '/volumes/7', body: { labels: { a: 'b' } } },
    { method: 'POST', path: '/volumes/7/actions/attach', body: { server: 42, automount: false } },
    { method: 'POST', path: '/volumes/7/actions/attach', body: { server: 43, automount: true } },
    { method: 'POST', path: '/volumes/7/actions/detach', body: null },
    { method: 'DELETE', path: '/volumes/7', body: null },
    { method: 'GET', path: '/pricing', body: null },
  ]);
  const list = stub.requests[2];
  t.equal(list?.query.get('label_selector'), 'nix-hcloud-builder/pool=x86');
  t.equal(list?.query.get('name'), 'store-0');
  t.same(list?.query.getAll('status'), ['available']);
  t.same(list?.query.getAll('sort'), ['id:asc']);
  t.equal(list?.query.get('per_page'), '50');
});

t.test('a refused delete of an attached volume is an HcloudError, not retried', async (t) => {
  const stub = await startStub(t, (req) =>
    req.method === 'DELETE'
      ? apiError(422, 'service_error', "volume with ID '7' is still attached to a server")
      : apiError(422, 'volume_already_attached', 'Volume is already attached to a server, detach first'),
  );
  const { client, slept } = makeClient(stub.url);
  const del = await rejection(client.deleteVolume(7));
  t.equal(del.status, 422);
  t.equal(del.code, 'service_error');
  t.match(del.message, /still attached/);
  t.equal(del.path, '/volumes/7');
  t.ok(isVolumeAttached(del), 'recognised as a volume still attached');
  t.notOk(del.retryable);
  const attach = await rejection(client.attachVolume(7, 42));
  t.equal(attach.code, 'volume_already_attached');
  t.ok(isVolumeAttached(attach));
  t.notOk(isVolumeAttached(new HcloudError({ status: 422, code: 'service_error', message: 'something else' })));
  t.notOk(isVolumeAttached(new Error('still attached')));
  t.equal(stub.requests.length, 2, 'each sent once');
  t.same(slept, []);
});
