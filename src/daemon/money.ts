/**
 * Money in one place: the API's prices (server types per location, volumes per GB-month), each
 * asked once and again after a failure; the budget check before anything billed is created (fail
 * closed: with a budget, an unknown price refuses the create); and the ledger (ledger.ts), whose
 * sums say what this month has cost.
 */
import type { HcloudClient } from '../hcloud/client.js';
import type { Pricing, ServerType } from '../hcloud/types.js';
import type { PoolConfig } from '../core/config.js';
import { BudgetExceeded, type Ledger } from './ledger.js';
import { placements } from './placement.js';

export interface MoneyDeps {
  hcloud: Pick<HcloudClient, 'listServerTypes' | 'getPricing'>;
  ledger: Ledger;
  budget?: { maxEurPerMonth: number } | undefined;
  /** GB of store volumes this daemon holds now (counted for a whole month each: they bill whether attached or not). */
  storeGb: () => number;
  now?: () => number;
}

/** Gross EUR per GB-month of a volume, from `GET /pricing`. */
export function volumePriceOf(pricing: Pricing): number {
  const price = Number(pricing.volume.price_per_gb_month.gross);
  if (!Number.isFinite(price)) throw new Error(`GET /pricing gave no usable volume price (${JSON.stringify(pricing.volume)})`);
  return price;
}

/** A promise kept until it fails: the next call asks again. */
function cachedUntilFailure<T>(load: () => Promise<T>): () => Promise<T> {
  let cached: Promise<T> | undefined;
  return () =>
    (cached ??= load().catch((err: unknown) => {
      cached = undefined;
      throw err;
    }));
}

export class Money {
  /** The API's server types with their prices per location. */
  readonly serverTypes: () => Promise<ServerType[]>;
  /** Gross EUR per GB-month of a volume. */
  readonly volumePricePerGbMonth: () => Promise<number>;
  private readonly now: () => number;

  constructor(private readonly deps: MoneyDeps) {
    this.serverTypes = cachedUntilFailure(() => deps.hcloud.listServerTypes());
    this.volumePricePerGbMonth = cachedUntilFailure(async () => volumePriceOf(await deps.hcloud.getPricing()));
    this.now = deps.now ?? Date.now;
  }

  get ledger(): Ledger {
    return this.deps.ledger;
  }

  /** Gross EUR per hour of a server type in a location, as the API gives it; undefined when unknown. */
  async hourlyPrice(serverType: string, location: string): Promise<string | undefined> {
    const type = (await this.serverTypes()).find((t) => t.name === serverType);
    return type?.prices.find((p) => p.location === location)?.price_hourly.gross;
  }

  /** What the store volumes this daemon holds cost a month, at the API's price. */
  async volumesEurPerMonth(): Promise<number> {
    const gb = this.deps.storeGb();
    return gb === 0 ? 0 : gb * (await this.volumePricePerGbMonth());
  }

  /** Why the budget would refuse a server in every placement of `pool` now; undefined when one fits (or there is no budget). */
  async budgetRefusal(pool: Pick<PoolConfig, 'serverTypes' | 'locations' | 'store'>): Promise<string | undefined> {
    if (!this.deps.budget) return undefined;
    let why: string | undefined;
    for (const { serverType, location } of placements(pool)) {
      try {
        await this.priceServer(serverType, location);
        return undefined;
      } catch (err) {
        if (!(err instanceof BudgetExceeded)) throw err;
        why = err.message;
      }
    }
    return why ?? 'budget: the pool has no server type or location';
  }

  /**
   * The hourly price of a server about to be created, checked against the budget: throws
   * `BudgetExceeded` when one more hour of it would take this month past the budget, or when
   * there is a budget and its price or the store volumes' price cannot be read.
   */
  async priceServer(serverType: string, location: string): Promise<string | undefined> {
    const price = await this.hourlyPrice(serverType, location).catch(() => undefined);
    const budget = this.deps.budget;
    if (!budget) return price;
    if (price === undefined) throw new BudgetExceeded(`budget: no price known for ${serverType} in ${location}`);
    this.ledger.check(
      budget.maxEurPerMonth,
      Number(price),
      `${serverType} in ${location}`,
      this.now(),
      await this.knownVolumesEurPerMonth(),
    );
    return price;
  }

  /** Throws `BudgetExceeded` when a new store volume of `sizeGb` would take this month past the budget. */
  async checkVolume(sizeGb: number, what: string): Promise<void> {
    const budget = this.deps.budget;
    if (!budget) return;
    let perGb: number;
    try {
      perGb = await this.volumePricePerGbMonth();
    } catch (err) {
      throw new BudgetExceeded(`budget: no volume price known (${(err as Error).message})`);
    }
    this.ledger.checkVolume(budget.maxEurPerMonth, sizeGb * perGb, what, await this.knownVolumesEurPerMonth(), this.now());
  }

  /** The store volumes' monthly cost; with a budget, unknown is refused like an unknown server price. */
  private async knownVolumesEurPerMonth(): Promise<number> {
    try {
      return await this.volumesEurPerMonth();
    } catch (err) {
      throw new BudgetExceeded(`budget: the store volumes' price is unknown (${(err as Error).message})`);
    }
  }
}
