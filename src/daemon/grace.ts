/**
 * The shutdown grace period: running sessions get up to `graceMs` to finish. It ends at the first
 * of: no session left (polled), the endpoint closed (every connection gone), the time is up, or
 * `end()` (a second signal). Whichever it is, both of its timers are cleared, so that nothing of
 * it outlives the wait.
 */
import { systemClock, type Clock } from './idle-timer.js';

/** How often the grace period looks at the session count. */
export const GRACE_POLL_MS = 200;

export interface GraceOptions {
  graceMs: number;
  activeSessions: () => number;
  /** Resolves when the endpoint has closed; the grace period ends then too. */
  closed?: Promise<unknown>;
  clock?: Clock;
}

export interface Grace {
  /** Resolves when the grace period is over, for whichever reason. */
  done: Promise<void>;
  /** Ends the grace period now. */
  end(): void;
}

export function startGrace({ graceMs, activeSessions, closed, clock = systemClock }: GraceOptions): Grace {
  let finish = (): void => undefined;
  const done = new Promise<void>((resolve) => {
    let over = false;
    let poll: unknown;
    const timeout = clock.setTimeout(() => finish(), graceMs);
    const check = (): void => {
      poll = undefined;
      if (activeSessions() === 0) finish();
      else poll = clock.setTimeout(check, GRACE_POLL_MS);
    };
    finish = () => {
      if (over) return;
      over = true;
      clock.clearTimeout(timeout);
      if (poll !== undefined) clock.clearTimeout(poll);
      resolve();
    };
    poll = clock.setTimeout(check, GRACE_POLL_MS);
    // A failed close is the caller's to see (it awaits `closed` itself); here it only ends the wait.
    closed?.then(finish, finish);
  });
  return { done, end: () => finish() };
}
