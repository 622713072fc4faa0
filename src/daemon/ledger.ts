/**
 * The money ledger: every server this daemon created, with its hourly price, so that spend can be
 * shown and capped. Hetzner bills every started hour in full, from the server's creation until
 * its deletion. Kept in `ledger.json` in stateDir (0600), entries older than two months dropped.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../core/atomic-file.js';

const HOUR = 3_600_000;

export interface LedgerEntry {
  id: number;
  name: string;
  pool: string;
  serverType: string;
  location: string;
  /** Gross price per hour in EUR, as the API gives it for that location. */
  hourlyEur: number;
  createdAt: string;
  deletedAt?: string;
}

export class BudgetExceeded extends Error {
  override name = 'BudgetExceeded';
}

function monthStart(now: number): number {
  const d = new Date(now);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
}

/** Hours billed for `entry` that started within [from, to). */
export function billedHours(entry: Pick<LedgerEntry, 'createdAt' | 'deletedAt'>, from: number, to: number): number {
  const created = Date.parse(entry.createdAt);
  const end = Math.min(entry.deletedAt ? Date.parse(entry.deletedAt) : to, to);
  if (end <= created) return end === created && !entry.deletedAt ? 1 : 0;
  const first = Math.max(0, Math.ceil((from - created) / HOUR));
  const last = Math.ceil((end - created) / HOUR);
  return Math.max(0, last - first);
}

export class Ledger {
  private constructor(
    private readonly file: string,
    readonly entries: LedgerEntry[],
  ) {}

  static load(stateDir: string): Ledger {
    const file = join(stateDir, 'ledger.json');
    let entries: LedgerEntry[] = [];
    if (existsSync(file)) {
      try {
        const data = JSON.parse(readFileSync(file, 'utf8')) as { entries?: LedgerEntry[] };
        entries = Array.isArray(data.entries) ? data.entries : [];
      } catch {
        // A broken ledger must not stop the daemon; the budget then counts from now on.
        entries = [];
      }
    }
    return new Ledger(file, entries);
  }

  private save(): void {
    const horizon = monthStart(Date.now()) - 31 * 24 * HOUR;
    const kept = this.entries.filter((e) => !e.deletedAt || Date.parse(e.deletedAt) > horizon);
    this.entries.splice(0, this.entries.length, ...kept);
    writeFileAtomic(this.file, `${JSON.stringify({ version: 1, entries: this.entries }, null, 2)}\n`);
  }

  opened(entry: LedgerEntry): void {
    this.entries.push(entry);
    this.save();
  }

  closed(name: string, at = new Date()): void {
    const entry = this.entries.find((e) => e.name === name && !e.deletedAt);
    if (!entry) return;
    entry.deletedAt = at.toISOString();
    this.save();
  }

  /** EUR billed so far this calendar month (UTC), running servers included up to `now`. */
  spentThisMonth(now = Date.now()): number {
    const from = monthStart(now);
    return this.entries.reduce((sum, e) => sum + billedHours(e, from, now) * e.hourlyEur, 0);
  }

  /** EUR billed for one server since it was created. */
  costSoFar(name: string, now = Date.now()): number | undefined {
    const entry = this.entries.find((e) => e.name === name);
    return entry ? billedHours(entry, 0, now) * entry.hourlyEur : undefined;
  }

  /**
   * Throws when one more hour of a server at `hourlyEur` would take this month past
   * `maxEurPerMonth`. `volumesEurPerMonth`: the store volumes', counted for a whole month each
   * (they bill whether attached or not, so a month of them is as good as spent).
   */
  check(maxEurPerMonth: number, hourlyEur: number, what: string, now = Date.now(), volumesEurPerMonth = 0): void {
    const spent = this.spentThisMonth(now);
    if (spent + volumesEurPerMonth + hourlyEur > maxEurPerMonth) {
      throw new BudgetExceeded(
        `budget: creating ${what} (€${hourlyEur.toFixed(4)}/h) would exceed budget.maxEurPerMonth (€${maxEurPerMonth.toFixed(2)}; spent this month €${spent.toFixed(2)}${volumesText(volumesEurPerMonth)})`,
      );
    }
  }

  /** Throws when a new volume at `eurPerMonth` would take this month past `maxEurPerMonth`, as `check`. */
  checkVolume(maxEurPerMonth: number, eurPerMonth: number, what: string, volumesEurPerMonth: number, now = Date.now()): void {
    const spent = this.spentThisMonth(now);
    if (spent + volumesEurPerMonth + eurPerMonth > maxEurPerMonth) {
      throw new BudgetExceeded(
        `budget: creating ${what} (€${eurPerMonth.toFixed(2)}/month) would exceed budget.maxEurPerMonth (€${maxEurPerMonth.toFixed(2)}; spent this month €${spent.toFixed(2)}${volumesText(volumesEurPerMonth)})`,
      );
    }
  }
}

function volumesText(eurPerMonth: number): string {
  return eurPerMonth > 0 ? `, store volumes €${eurPerMonth.toFixed(2)}/month` : '';
}
