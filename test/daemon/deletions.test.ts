/**
 * The deletion queue on its own: a scripted API and a fake clock, so backoff, persistence and
 * the hour after which a failing delete is an error are checked without real waiting.
 */
import t from 'tap';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/core/log.js';
import { HcloudError } from '../../src/hcloud/errors.js';
import {
  DEFAULT_DELETE_POLICY,
  Deletions,
  DeletionStopped,
  deleteRetryDelayMs,
  deleteServersWithin,
  isOverdue,
  type DeletionRecord,
  type DeletionsDeps,
} from '../../src/daemon/deletions.js';
import { FakeClock } from './fake-clock.js';

const START = Date.parse('2025-01-01T00:00:00Z');
const SECOND = 1000;
const MINUTE = 60_000;

const settle = async (): Promise<void> => {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
};

const notFound = (): HcloudError => new HcloudError({ status: 404, code: 'not_found', message: 'server not found' });
const apiError = (status: number, code: string): HcloudError => new HcloudError({ status, code, message: `injected ${status}` });

/** The API as the queue sees it: each DELETE answers the next scripted error, then succeeds and the server is gone. */
class ScriptedApi {
  readonly live = new Set<number>();
  /** Errors the next DELETEs answer, in order. */
  readonly deleteErrors: HcloudError[] = [];
  readonly deletesAt: number[] = [];
  /** Servers a GET still finds after a successful delete (the API lags). */
  readonly lingering = new Set<number>();
  readonly byName = new Map<string, number>();

  constructor(private readonly clock: FakeClock) {}

  hcloud(): DeletionsDeps['hcloud'] {
    return {
      deleteServer: async (id: number) => {
        this.deletesAt.push(this.clock.now());
        const err = this.deleteErrors.shift();
        if (err) throw err;
        if (!this.live.has(id)) throw notFound();
        if (!this.lingering.delete(id)) this.live.delete(id);
        return { id: 1, command: 'delete_server', status: 'success' } as never;
      },
      waitForActions: async (actions) => actions,
      getServer: async (id: number) => {
        if (!this.live.has(id)) throw notFound();
        return { id, status: 'running' } as never;
      },
      listServers: async (q = {}) => {
        const id = q.name === undefined ? undefined : this.byName.get(q.name);
        return id === undefined || !this.live.has(id) ? [] : [{ id, name: q.name } as never];
      },
    };
  }
}

function setup(options: { previous?: DeletionRecord[]; policy?: DeletionsDeps['policy'] } = {}) {
  const clock = new FakeClock(START);
  const api = new ScriptedApi(clock);
  const logLines: { level: number; msg: string; overdue?: boolean; retryInMs?: number }[] = [];
  const log = createLogger({
    level: 'debug',
    pretty: false,
    destination: new Writable({
      write(chunk: Buffer, _e, done) {
        logLines.push(JSON.parse(chunk.toString()) as never);
        done();
      },
    }),
  });
  const saved: DeletionRecord[][] = [];
  const gone: string[] = [];
  const queue: Deletions = new Deletions(
    {
      hcloud: api.hcloud(),
      log,
      clock,
      ...(options.policy ? { policy: options.policy } : {}),
      changed: () => saved.push(queue.pending),
      gone: (r) => gone.push(r.name),
    },
    options.previous ?? [],
  );
  return { clock, api, queue, logLines, saved, gone };
}

t.test('backoff: doubling from the first wait, capped; the default starts at 10 s and stops at 5 min', async (t) => {
  t.same(
    [1, 2, 3, 4, 5, 6, 7, 50].map((n) => deleteRetryDelayMs(DEFAULT_DELETE_POLICY, n)),
    [10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000, 300_000],
  );
  t.same(
    [1, 2, 3, 4].map((n) => deleteRetryDelayMs({ firstRetryMs: 200, maxRetryMs: 500 }, n)),
    [200, 400, 500, 500],
  );
});

t.test('503, 423, 429 and even 403 are retried with backoff until GET says 404', async (t) => {
  const { clock, api, queue, gone } = setup();
  api.live.add(7);
  api.deleteErrors.push(
    apiError(503, 'unavailable'),
    apiError(423, 'locked'),
    apiError(429, 'rate_limit_exceeded'),
    apiError(403, 'forbidden'),
  );
  let done = false;
  void queue.delete({ id: 7, name: 'w7' }, 'idle timeout').then(() => {
    done = true;
  });
  await settle();
  for (const wait of [10, 20, 40, 80]) {
    t.notOk(done, 'still pending');
    clock.advance(wait * SECOND - 1);
    await settle();
    t.equal(api.deletesAt.length, 1 + [10, 20, 40, 80].indexOf(wait), `no attempt before the ${wait} s wait is over`);
    clock.advance(1);
    await settle();
  }
  t.ok(done, 'resolved once gone');
  t.same(
    api.deletesAt.map((at) => (at - START) / SECOND),
    [0, 10, 30, 70, 150],
  );
  t.same(gone, ['w7']);
  t.same(queue.pending, []);
});

t.test('a delete that succeeds while GET still finds the server is a failed attempt', async (t) => {
  const { clock, api, queue } = setup();
  api.live.add(3);
  api.lingering.add(3);
  const deleted = queue.delete({ id: 3, name: 'w3' }, 'orphan');
  await settle();
  t.equal(queue.pending[0]?.failures, 1);
  t.match(queue.pending[0]?.lastError, /still exists after its delete/);
  clock.advance(10 * SECOND);
  await deleted;
  t.same(queue.pending, []);
});

t.test('persistence: every change is reported; a new queue from the saved records goes on, keeping since and failures', async (t) => {
  const first = setup();
  first.api.live.add(9);
  first.api.deleteErrors.push(apiError(503, 'unavailable'), apiError(503, 'unavailable'));
  const stopped = t.rejects(first.queue.delete({ id: 9, name: 'w9' }, 'boot failed'), DeletionStopped);
  await settle();
  first.clock.advance(10 * SECOND);
  await settle();
  const saved = first.saved.at(-1) as DeletionRecord[];
  t.match(saved, [
    { id: 9, name: 'w9', reason: 'boot failed', since: new Date(START).toISOString(), failures: 2, lastError: /injected 503/ },
  ]);
  first.queue.stop();
  await stopped;
  t.equal(first.clock.pending, 0, 'stop leaves no timer behind');

  const second = setup({ previous: saved });
  second.api.live.add(9);
  second.clock.advance(30 * MINUTE);
  second.queue.resume();
  await settle();
  t.same(second.gone, ['w9'], 'the restarted queue deleted it at once');
  t.equal(second.api.deletesAt.length, 1);
});

t.test('the same server asked twice is one deletion; by name when the create never answered', async (t) => {
  const { api, queue } = setup();
  api.live.add(5);
  api.byName.set('w5', 5);
  const a = queue.delete({ id: 0, name: 'w5' }, 'boot failed');
  const b = queue.delete({ id: 5, name: 'w5' }, 'orphan');
  t.equal(queue.pending.length, 1);
  t.equal(queue.pending[0]?.reason, 'boot failed', 'the first reason stays');
  await Promise.all([a, b]);
  t.equal(api.deletesAt.length, 1);
  t.notOk(api.live.has(5));

  const never = queue.delete({ id: 0, name: 'never-created' }, 'boot failed');
  await never;
  t.equal(api.deletesAt.length, 1, 'a server that was never created needs no DELETE');
});

t.test('a delete still failing after an hour is an error line and counts as overdue', async (t) => {
  const { clock, api, queue, logLines } = setup({ policy: { firstRetryMs: 60_000, maxRetryMs: 10 * MINUTE } });
  api.live.add(11);
  for (let i = 0; i < 20; i++) api.deleteErrors.push(apiError(423, 'locked'));
  void queue.delete({ id: 11, name: 'w11' }, 'idle timeout').catch(() => undefined);
  await settle();
  for (let minutes = 0; minutes < 59; minutes++) {
    clock.advance(MINUTE);
    await settle();
  }
  t.same(queue.overdue(), [], 'not overdue within the hour');
  t.notOk(
    logLines.some((l) => l.level >= 50),
    'failures within the hour are warnings',
  );
  t.ok(logLines.some((l) => l.level === 40 && /deleting server w11 failed; retrying in/.test(l.msg)));
  clock.advance(11 * MINUTE);
  await settle();
  t.equal(queue.overdue().length, 1, 'overdue after an hour');
  const error = logLines.find((l) => l.level === 50);
  t.match(error, { overdue: true, msg: /server w11 is still not deleted after 1h\d+m/ });
  t.ok(isOverdue({ since: new Date(START).toISOString() }, START + 60 * MINUTE));
  t.notOk(isOverdue({ since: new Date(START).toISOString() }, START + 59 * MINUTE));
  queue.stop();
});

t.test('drain: true once empty, false when the time is up; deleteServersWithin names what is left', async (t) => {
  const { clock, api, queue } = setup();
  api.live.add(1);
  api.deleteErrors.push(apiError(503, 'unavailable'));
  void queue.delete({ id: 1, name: 'w1' }, 'down').catch(() => undefined);
  const drained = queue.drain(60 * SECOND);
  await settle();
  clock.advance(10 * SECOND);
  await settle();
  t.equal(await drained, true);

  api.live.add(2);
  api.deleteErrors.push(apiError(503, 'unavailable'), apiError(503, 'unavailable'));
  void queue.delete({ id: 2, name: 'w2' }, 'down').catch(() => undefined);
  const timedOut = queue.drain(5 * SECOND);
  await settle();
  clock.advance(5 * SECOND);
  t.equal(await timedOut, false);
  queue.stop();

  // With real timers: a short bound and an API that keeps failing.
  const real = new ScriptedApi(new FakeClock(START));
  real.live.add(4);
  for (let i = 0; i < 100; i++) real.deleteErrors.push(apiError(423, 'locked'));
  const left = await deleteServersWithin(
    { hcloud: real.hcloud(), log: createLogger({ level: 'silent' }), policy: { firstRetryMs: 5, maxRetryMs: 10 } },
    [{ id: 4, name: 'w4', reason: 'down' }],
    100,
  );
  t.match(left, [{ id: 4, name: 'w4', reason: 'down', lastError: /injected 423/ }]);
  t.ok((left[0]?.failures ?? 0) >= 2, 'retried meanwhile');
});
