/** A clock for unit tests that only moves when told to: no real waiting, same order every run. */
import type { Clock } from '../../src/daemon/idle-timer.js';

export class FakeClock implements Clock {
  private timers: { at: number; fn: () => void; id: number }[] = [];
  private nextId = 1;

  constructor(private time = 0) {}

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

  /** Moves time on by `ms`, firing due timers in order, also those set by a timer that fired. */
  advance(ms: number): void {
    const until = this.time + ms;
    for (;;) {
      const next = this.timers.filter((x) => x.at <= until).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!next) break;
      this.timers = this.timers.filter((x) => x !== next);
      this.time = next.at;
      next.fn();
    }
    this.time = until;
  }

  /** Timers set and neither fired nor cleared. */
  get pending(): number {
    return this.timers.length;
  }
}
