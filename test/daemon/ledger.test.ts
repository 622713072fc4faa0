import t from 'tap';
import { mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { untilBeforeNextBilledHour } from '../../src/daemon/idle-timer.js';
import { billedHours, Ledger } from '../../src/daemon/ledger.js';

const H = 3_600_000;
const T0 = Date.UTC(2026, 10, 10, 12, 0, 0);

t.test('every started hour is billed', async (t) => {
  const at = (ms: number) => new Date(T0 + ms).toISOString();
  t.equal(billedHours({ createdAt: at(0), deletedAt: at(60_000) }, 0, T0 + 10 * H), 1, '1 minute = 1 hour');
  t.equal(billedHours({ createdAt: at(0), deletedAt: at(H) }, 0, T0 + 10 * H), 1, 'exactly 1 hour');
  t.equal(billedHours({ createdAt: at(0), deletedAt: at(H + 1) }, 0, T0 + 10 * H), 2, 'a second into the next hour');
  t.equal(billedHours({ createdAt: at(0) }, 0, T0 + 2.5 * H), 3, 'running: up to now');
  t.equal(billedHours({ createdAt: at(-5 * H), deletedAt: at(H) }, T0, T0 + 10 * H), 1, 'only hours starting in the period');
});

t.test('spend, cost so far and the budget check', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-ledger-'));
  const ledger = Ledger.load(dir);
  const now = T0 + 2 * H;
  ledger.opened({
    id: 1,
    name: 'a',
    pool: 'p',
    serverType: 'ccx33',
    location: 'fsn1',
    hourlyEur: 0.1,
    createdAt: new Date(now - 90 * 60_000).toISOString(),
  });
  ledger.opened({
    id: 2,
    name: 'b',
    pool: 'p',
    serverType: 'cx23',
    location: 'fsn1',
    hourlyEur: 0.01,
    createdAt: new Date(now - 30 * 60_000).toISOString(),
  });
  ledger.closed('b', new Date(now - 20 * 60_000));
  t.equal(statSync(join(dir, 'ledger.json')).mode & 0o777, 0o600);
  t.equal(Ledger.load(dir).entries.length, 2, 'persisted');
  t.equal(Math.round(ledger.costSoFar('a', now)! * 1000) / 1000, 0.2, 'two started hours');
  t.ok(Math.abs(ledger.spentThisMonth(now) - 0.21) < 1e-9, `spent ${ledger.spentThisMonth(now)}`);
  t.doesNotThrow(() => ledger.check(1, 0.5, 'x', now));
  t.throws(() => ledger.check(0.5, 0.5, 'ccx63 in fsn1', now), {
    name: 'BudgetExceeded',
    message: /budget: creating ccx63 in fsn1 \(€0\.5000\/h\) would exceed budget\.maxEurPerMonth \(€0\.50; spent this month €0\.2\d\)/,
  });
  t.doesNotThrow(() => ledger.check(12, 0.5, 'x', now, 11), 'store volumes count for their month');
  t.throws(() => ledger.check(11.5, 0.5, 'cx23 in fsn1', now, 11), {
    name: 'BudgetExceeded',
    message: /spent this month €0\.2\d, store volumes €11\.00\/month\)$/,
  });
  t.throws(() => ledger.checkVolume(11.5, 10.47, 'store volume v (200 GB in fsn1)', 1, now), {
    name: 'BudgetExceeded',
    message:
      /^budget: creating store volume v \(200 GB in fsn1\) \(€10\.47\/month\) would exceed budget\.maxEurPerMonth \(€11\.50; spent this month €0\.2\d, store volumes €1\.00\/month\)$/,
  });
  t.doesNotThrow(() => ledger.checkVolume(12, 10.47, 'v', 1, now));
});

t.test('billing-hour idle policy: keep until just before the next paid hour', async (t) => {
  const margin = 3 * 60_000;
  t.equal(untilBeforeNextBilledHour(T0, T0 + 10 * 60_000, margin), 47 * 60_000);
  t.equal(untilBeforeNextBilledHour(T0, T0 + 58 * 60_000, margin), 0, 'inside the margin: delete now');
  t.equal(untilBeforeNextBilledHour(T0, T0 + 61 * 60_000, margin), 56 * 60_000, 'second hour paid: keep to its end');
});
