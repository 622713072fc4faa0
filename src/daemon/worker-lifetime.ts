/**
 * How long a pool's workers live: each idle worker's timer (idleTimeout, or until just before its
 * next billed hour), the drain past maxLifetime, and the lifetime caps of the sweep rule.
 */
import type { PoolConfig } from '../core/config.js';
import { IdleTimer, untilBeforeNextBilledHour, type Clock } from './idle-timer.js';
import type { WorkerRecord } from './state.js';
import { whatMustGo, type SweepVerdict } from './sweep-rule.js';

type LifetimeConfig = Pick<PoolConfig, 'idleTimeoutMs' | 'idlePolicy' | 'billingMarginMs' | 'maxLifetimeMs'>;

export class WorkerLifetimes<W extends { readonly record: Pick<WorkerRecord, 'createdAt'> }> {
  private readonly idleTimers = new Map<W, IdleTimer>();

  constructor(
    private readonly config: LifetimeConfig,
    private readonly clock: Clock,
  ) {}

  /** Past maxLifetime a worker takes no new sessions and goes once its sessions end. */
  draining(worker: W): boolean {
    return this.clock.now() - Date.parse(worker.record.createdAt) >= this.config.maxLifetimeMs;
  }

  /** Starts the idle timer of a worker that has no sessions now; `onIdle` runs when it fires. Answers its delay. */
  startIdle(worker: W, onIdle: () => void): number {
    const delayMs =
      this.config.idlePolicy === 'billing-hour'
        ? untilBeforeNextBilledHour(Date.parse(worker.record.createdAt), this.clock.now(), this.config.billingMarginMs)
        : this.config.idleTimeoutMs;
    let timer = this.idleTimers.get(worker);
    if (!timer) {
      timer = new IdleTimer(this.config.idleTimeoutMs, onIdle, this.clock);
      this.idleTimers.set(worker, timer);
    }
    timer.start(delayMs);
    return delayMs;
  }

  /** A session came: the worker is not idle. */
  cancelIdle(worker: W): void {
    this.idleTimers.get(worker)?.cancel();
  }

  /** The worker is gone. */
  forget(worker: W): void {
    this.cancelIdle(worker);
    this.idleTimers.delete(worker);
  }

  /** No timer fires any more (the pool closes). */
  cancelAll(): void {
    for (const timer of this.idleTimers.values()) timer.cancel();
  }

  /**
   * The ready workers the lifetime caps send away (the sweep rule): past maxLifetime and idle, or
   * past twice that with sessions running. `sessionsOn` counts a worker's sessions.
   */
  overdue(ready: W[], sessionsOn: (worker: W) => number): SweepVerdict<W>[] {
    const candidates = ready.map((w) => ({
      subject: w,
      created: w.record.createdAt,
      known: true,
      pool: this.config,
      sessions: sessionsOn(w),
    }));
    return whatMustGo(candidates, this.clock.now());
  }
}
