/** A restartable one-shot timer with an injectable clock, so tests need no real waiting. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const handle = setTimeout(fn, ms);
    // An idle timer must not keep a stopping process alive; shutdown deletes workers itself.
    handle.unref();
    return handle;
  },
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export class IdleTimer {
  private handle: unknown;
  private startedAt: number | undefined;

  constructor(
    private readonly delayMs: number,
    private readonly onFire: () => void,
    private readonly clock: Clock = systemClock,
  ) {}

  /** (Re)starts the countdown from now, for the configured delay or the one given. */
  start(delayMs = this.delayMs): void {
    this.cancel();
    this.startedAt = this.clock.now();
    this.handle = this.clock.setTimeout(() => {
      this.handle = undefined;
      this.startedAt = undefined;
      this.onFire();
    }, delayMs);
  }

  cancel(): void {
    if (this.handle !== undefined) this.clock.clearTimeout(this.handle);
    this.handle = undefined;
    this.startedAt = undefined;
  }

  get running(): boolean {
    return this.handle !== undefined;
  }

  /** When the countdown started, or undefined when it is not running. */
  get since(): number | undefined {
    return this.startedAt;
  }
}

const HOUR_MS = 3_600_000;

/**
 * For the "billing-hour" idle policy: Hetzner bills every started hour, so an idle server costs
 * nothing extra until just before its next hour begins. Returns how long to keep it from `now`
 * (0 when that moment has passed: delete now).
 */
export function untilBeforeNextBilledHour(createdAtMs: number, nowMs: number, marginMs: number): number {
  const elapsed = Math.max(0, nowMs - createdAtMs);
  const nextHour = createdAtMs + (Math.floor(elapsed / HOUR_MS) + 1) * HOUR_MS;
  return Math.max(0, nextHour - marginMs - nowMs);
}
