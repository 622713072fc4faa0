import t from 'tap';
import { IdleTimer } from '../../src/daemon/idle-timer.js';
import { FakeClock } from './fake-clock.js';

t.test('fires once after the delay', async (t) => {
  const clock = new FakeClock();
  let fired = 0;
  const timer = new IdleTimer(600_000, () => fired++, clock);
  timer.start();
  t.equal(timer.since, 0);
  clock.advance(599_999);
  t.equal(fired, 0);
  t.ok(timer.running);
  clock.advance(1);
  t.equal(fired, 1);
  t.notOk(timer.running);
  clock.advance(10_000_000);
  t.equal(fired, 1);
});

t.test('a new session cancels it; the next idle period starts afresh', async (t) => {
  const clock = new FakeClock();
  let fired = 0;
  const timer = new IdleTimer(1000, () => fired++, clock);
  timer.start();
  clock.advance(900);
  timer.cancel();
  clock.advance(5000);
  t.equal(fired, 0);
  t.equal(clock.pending, 0);
  timer.start();
  clock.advance(900);
  timer.start();
  t.equal(clock.pending, 1, 'restarting leaves one timer, not two');
  clock.advance(900);
  t.equal(fired, 0);
  clock.advance(100);
  t.equal(fired, 1);
});
