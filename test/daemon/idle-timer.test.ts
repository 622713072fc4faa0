import t from 'tap';
import { IdleTimer, type Clock } from '../../src/daemon/idle-timer.js';

/** A clock that only moves when told to. */
class FakeClock implements Clock {
  private time = 0;
  private timers: { at: number; fn: () => void; id: number }[] = [];
  private nextId = 1;
  now(): number {
    return this.time;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.timers.push({ at: this.time + ms, fn, id });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.timers = this.timers.filter((x) => x.id !== handle);
  }
  advance(ms: number): void {
    this.time += ms;
    const due = this.timers.filter((x) => x.at <= this.time);
    this.timers = this.timers.filter((x) => x.at > this.time);
    for (const x of due) x.fn();
  }
  get pending(): number {
    return this.timers.length;
  }
}

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
