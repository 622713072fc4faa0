/** The one sweep rule, with a fixed clock: what must go and why, for each thing an asker knows. */
import t from 'tap';
import { describeReason, whatMustGo, type SweepCandidate } from '../../src/daemon/sweep-rule.js';

const NOW = Date.parse('2026-12-06T12:00:00Z');
const HOUR = 3_600_000;
const pool = { maxLifetimeMs: 4 * HOUR };
const at = (hoursAgo: number): string => new Date(NOW - hoursAgo * HOUR).toISOString();

function verdicts(candidates: SweepCandidate<string>[]): Record<string, string> {
  return Object.fromEntries(whatMustGo(candidates, NOW).map((v) => [v.subject, v.reason]));
}

t.test('unknown servers go; known ones by their lifetime; pending deletes are left to the queue', async (t) => {
  t.same(
    verdicts([
      { subject: 'stray', created: at(0.1), known: false, pool },
      { subject: 'stray-being-deleted', created: at(0.1), known: false, pool, deleting: true },
      { subject: 'young', created: at(1), known: true, pool, sessions: 0 },
      { subject: 'old-idle', created: at(4), known: true, pool, sessions: 0 },
      { subject: 'old-busy', created: at(5), known: true, pool, sessions: 2 },
      { subject: 'ancient-busy', created: at(8), known: true, pool, sessions: 2 },
      { subject: 'orphan-pool', created: at(1), known: true, pool: undefined },
    ]),
    { stray: 'unknown', 'old-idle': 'maxLifetime reached', 'ancient-busy': 'hard lifetime cap', 'orphan-pool': 'pool not configured' },
  );
});

t.test('an asker that cannot know the sessions applies the hard cap only', async (t) => {
  t.same(
    verdicts([
      { subject: 'old', created: at(5), known: true, pool },
      { subject: 'ancient', created: at(8), known: true, pool },
    ]),
    { ancient: 'hard lifetime cap' },
  );
});

t.test("each reason has words for the commands' output", async (t) => {
  t.match(describeReason('unknown'), /^not in the state/);
  t.match(describeReason('hard lifetime cap'), /twice/);
});
