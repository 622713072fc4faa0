/** A pool's worker lifetimes on a fake clock: idle timers by policy, the drain, the caps. */
import t from 'tap';
import { WorkerLifetimes } from '../../src/daemon/worker-lifetime.js';
import { FakeClock } from './fake-clock.js';

const MINUTE = 60_000;
const START = Date.parse('2026-12-06T12:00:00Z');
const config = { idleTimeoutMs: 10 * MINUTE, idlePolicy: 'timeout' as const, billingMarginMs: 3 * MINUTE, maxLifetimeMs: 60 * MINUTE };
const worker = (createdMinutesAgo: number, now: number) => ({
  record: { createdAt: new Date(now - createdMinutesAgo * MINUTE).toISOString() },
});

t.test('idleTimeout: the timer fires after it, unless a session came; a gone worker has no timer', async (t) => {
  const clock = new FakeClock(START);
  const lifetimes = new WorkerLifetimes(config, clock);
  const w = worker(5, START);
  let fired = 0;
  t.equal(
    lifetimes.startIdle(w, () => fired++),
    10 * MINUTE,
  );
  clock.advance(9 * MINUTE);
  lifetimes.cancelIdle(w);
  clock.advance(5 * MINUTE);
  t.equal(fired, 0, 'a session came');
  lifetimes.startIdle(w, () => fired++);
  clock.advance(10 * MINUTE);
  t.equal(fired, 1);
  lifetimes.startIdle(w, () => fired++);
  lifetimes.forget(w);
  t.equal(clock.pending, 0);
});

t.test('billing-hour: the timer runs until the margin before the next billed hour', async (t) => {
  const clock = new FakeClock(START);
  const lifetimes = new WorkerLifetimes({ ...config, idlePolicy: 'billing-hour' }, clock);
  t.equal(
    lifetimes.startIdle(worker(20, START), () => undefined),
    37 * MINUTE,
  );
});

t.test('past maxLifetime a worker drains; the caps send idle ones away, and busy ones past twice that', async (t) => {
  const clock = new FakeClock(START);
  const lifetimes = new WorkerLifetimes(config, clock);
  const young = worker(59, START);
  const old = worker(60, START);
  const ancient = worker(120, START);
  t.equal(lifetimes.draining(young), false);
  t.equal(lifetimes.draining(old), true);
  const sessions = new Map([
    [young, 0],
    [old, 1],
    [ancient, 1],
  ]);
  t.same(
    lifetimes.overdue([young, old, ancient], (w) => sessions.get(w) ?? 0),
    [{ subject: ancient, reason: 'hard lifetime cap' }],
  );
  sessions.set(old, 0);
  t.same(
    lifetimes.overdue([young, old], (w) => sessions.get(w) ?? 0).map((v) => v.reason),
    ['maxLifetime reached'],
  );
});
