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

  constructor(private readonly delayMs: number, private readonly onFire: () => void, private readonly clock: Clock = systemClock) {}

  /** (Re)starts the countdown from now. */
  start(): void {
    this.cancel();
    this.startedAt = this.clock.now();
    this.handle = this.clock.setTimeout(() => {
      this.handle = undefined;
      this.startedAt = undefined;
      this.onFire();
    }, this.delayMs);
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
