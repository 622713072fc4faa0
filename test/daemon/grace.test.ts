/** The shutdown grace period ends for each of its reasons, and leaves no timer of its own behind. */
import t from 'tap';
import { GRACE_POLL_MS, startGrace } from '../../src/daemon/grace.js';
import { FakeClock } from './fake-clock.js';

const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Whether `promise` has settled by now. */
async function isDone(promise: Promise<void>): Promise<boolean> {
  let done = false;
  void promise.then(() => (done = true));
  await settle();
  return done;
}

t.test('ends when the sessions are gone (polled), and clears its timeout', async (t) => {
  const clock = new FakeClock();
  let sessions = 2;
  const grace = startGrace({ graceMs: 60_000, activeSessions: () => sessions, clock });
  clock.advance(5 * GRACE_POLL_MS);
  t.notOk(await isDone(grace.done), 'sessions still running');
  t.equal(clock.pending, 2, 'its timeout and one poll, no more');
  sessions = 0;
  clock.advance(GRACE_POLL_MS);
  t.ok(await isDone(grace.done), 'over at the next poll');
  t.equal(clock.pending, 0, 'no timer left');
});

t.test('ends when the time is up, and clears its poll', async (t) => {
  const clock = new FakeClock();
  const grace = startGrace({ graceMs: 1000, activeSessions: () => 1, clock });
  clock.advance(999);
  t.notOk(await isDone(grace.done));
  clock.advance(1);
  t.ok(await isDone(grace.done), 'over after graceMs');
  t.equal(clock.pending, 0, 'no timer left');
});

t.test('ends when the endpoint has closed, and clears both', async (t) => {
  const clock = new FakeClock();
  let closedNow = (): void => undefined;
  const closed = new Promise<void>((resolve) => (closedNow = resolve));
  const grace = startGrace({ graceMs: 60_000, activeSessions: () => 1, closed, clock });
  closedNow();
  t.ok(await isDone(grace.done));
  t.equal(clock.pending, 0, 'no timer left');
});

t.test('end() (a second signal) ends it at once, and clears both', async (t) => {
  const clock = new FakeClock();
  const grace = startGrace({ graceMs: 60_000, activeSessions: () => 1, clock });
  grace.end();
  t.ok(await isDone(grace.done));
  t.equal(clock.pending, 0, 'no timer left');
  grace.end();
  clock.advance(120_000);
  t.equal(clock.pending, 0, 'ending twice, or time passing after, sets no timer');
});
