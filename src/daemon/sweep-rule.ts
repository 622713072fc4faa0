/**
 * The one sweep rule: which of this instance's servers must go, and why. A pure function of the
 * servers, what is known of each, the pools' lifetimes and the clock; the daemon's periodic
 * sweep, `Pool`'s lifetime caps and `gc` all ask it, each with what it knows.
 */

export type SweepReason =
  /** Labelled as ours, but no worker of ours: a crash, or a create whose answer was lost. */
  | 'unknown'
  /** Its pool is not in the config (any more). */
  | 'pool not configured'
  /** Past twice its pool's maxLifetime: deleted even with sessions running. */
  | 'hard lifetime cap'
  /** Past maxLifetime with no session. */
  | 'maxLifetime reached';

export interface SweepCandidate<S> {
  /** What the verdict is about (a server from the API, a worker of a pool). */
  subject: S;
  /** When the server was created (ISO 8601). */
  created: string;
  /** A worker record of ours knows it. */
  known: boolean;
  /** Its pool, when configured. */
  pool: { maxLifetimeMs: number } | undefined;
  /** Sessions running on it; undefined when the asker cannot know (then only the hard cap applies). */
  sessions?: number;
  /** Its delete is already under way (the deletion queue's): nothing more to do. */
  deleting?: boolean;
}

export interface SweepVerdict<S> {
  subject: S;
  reason: SweepReason;
}

const WHY: Record<SweepReason, string> = {
  unknown: 'not in the state (labelled as ours, but no worker of ours knows it)',
  'pool not configured': 'its pool is not in the config',
  'hard lifetime cap': "past twice its pool's maxLifetime",
  'maxLifetime reached': 'past maxLifetime with no session',
};

/** The reason in words, for logs and the commands' output. */
export function describeReason(reason: SweepReason): string {
  return WHY[reason];
}

/** What must go, in the order given, each with its reason; `now` in ms since the epoch. */
export function whatMustGo<S>(candidates: SweepCandidate<S>[], now: number): SweepVerdict<S>[] {
  const verdicts: SweepVerdict<S>[] = [];
  for (const c of candidates) {
    const reason = verdictOf(c, now);
    if (reason) verdicts.push({ subject: c.subject, reason });
  }
  return verdicts;
}

function verdictOf<S>(c: SweepCandidate<S>, now: number): SweepReason | undefined {
  if (c.deleting) return undefined;
  if (!c.known) return 'unknown';
  if (!c.pool) return 'pool not configured';
  const age = now - Date.parse(c.created);
  if (age >= 2 * c.pool.maxLifetimeMs) return 'hard lifetime cap';
  if (c.sessions === 0 && age >= c.pool.maxLifetimeMs) return 'maxLifetime reached';
  return undefined;
}
