/**
 * The money module: prices asked once and again after a failure, the budget check of a server
 * (fail closed on an unknown price) and of a store volume, with the store volumes counted.
 */
import t from 'tap';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ledger } from '../../src/daemon/ledger.js';
import { Money, volumePriceOf, type MoneyDeps } from '../../src/daemon/money.js';
import type { Pricing, ServerType } from '../../src/hcloud/types.js';

const T0 = Date.UTC(2026, 11, 6, 12, 0, 0);

function serverType(name: string, prices: Record<string, string>): ServerType {
  return {
    name,
    prices: Object.entries(prices).map(([location, gross]) => ({
      location,
      price_hourly: { gross, net: gross },
      price_monthly: { gross, net: gross },
    })),
  } as unknown as ServerType;
}

function pricing(gross: string): Pricing {
  return { volume: { price_per_gb_month: { gross, net: gross } } } as unknown as Pricing;
}

function money(over: Partial<MoneyDeps> & { types?: () => Promise<ServerType[]>; prices?: () => Promise<Pricing> } = {}): {
  money: Money;
  calls: { types: number; pricing: number };
} {
  const calls = { types: 0, pricing: 0 };
  const hcloud = {
    listServerTypes: () => (calls.types++, (over.types ?? (async () => [serverType('cx23', { fsn1: '0.0060' })]))()),
    getPricing: () => (calls.pricing++, (over.prices ?? (async () => pricing('0.0524')))()),
  };
  const ledger = Ledger.load(mkdtempSync(join(tmpdir(), 'nhb-money-')));
  return { money: new Money({ hcloud, ledger, storeGb: () => 0, now: () => T0, ...over }), calls };
}

t.test('prices are asked once, and again after a failure', async (t) => {
  let fail = true;
  const { money: m, calls } = money({
    types: async () => (fail ? Promise.reject(new Error('503')) : [serverType('cx23', { fsn1: '0.0060' })]),
  });
  await t.rejects(m.hourlyPrice('cx23', 'fsn1'), /503/);
  fail = false;
  t.equal(await m.hourlyPrice('cx23', 'fsn1'), '0.0060');
  t.equal(await m.hourlyPrice('cx23', 'nbg1'), undefined, 'no price in a location the type is not sold in');
  t.equal(calls.types, 2, 'one failed call, one kept answer');
});

t.test('without a budget, a server is priced when possible and never refused', async (t) => {
  const { money: m } = money({ types: async () => Promise.reject(new Error('down')) });
  t.equal(await m.priceServer('cx23', 'fsn1'), undefined);
});

t.test('with a budget: fail closed on an unknown price, refuse past the budget, count the store volumes', async (t) => {
  const budget = { maxEurPerMonth: 1 };
  t.equal(await money({ budget }).money.priceServer('cx23', 'fsn1'), '0.0060');
  await t.rejects(money({ budget }).money.priceServer('cx23', 'nbg1'), {
    name: 'BudgetExceeded',
    message: 'budget: no price known for cx23 in nbg1',
  });
  await t.rejects(money({ budget: { maxEurPerMonth: 0.005 } }).money.priceServer('cx23', 'fsn1'), {
    name: 'BudgetExceeded',
    message: /would exceed budget\.maxEurPerMonth/,
  });
  // 20 GB at €0.0524 is €1.048 a month: over the budget with any server.
  await t.rejects(money({ budget, storeGb: () => 20 }).money.priceServer('cx23', 'fsn1'), {
    name: 'BudgetExceeded',
    message: /store volumes €1\.05\/month/,
  });
  await t.rejects(
    money({ budget, storeGb: () => 20, prices: async () => Promise.reject(new Error('no pricing')) }).money.priceServer('cx23', 'fsn1'),
    {
      name: 'BudgetExceeded',
      message: "budget: the store volumes' price is unknown (no pricing)",
    },
  );
});

t.test('a store volume against the budget', async (t) => {
  const { money: m, calls } = money({ budget: { maxEurPerMonth: 1 }, storeGb: () => 0 });
  await t.resolves(m.checkVolume(10, 'store volume a'));
  await t.rejects(m.checkVolume(20, 'store volume b (20 GB in fsn1)'), {
    name: 'BudgetExceeded',
    message: /^budget: creating store volume b \(20 GB in fsn1\) \(€1\.05\/month\)/,
  });
  t.equal(calls.pricing, 1, 'the volume price was asked once');
  await t.resolves(money().money.checkVolume(10_000, 'no budget'), 'no budget, no check');
  await t.rejects(money({ budget: { maxEurPerMonth: 1 }, prices: async () => Promise.reject(new Error('x')) }).money.checkVolume(10, 'v'), {
    message: 'budget: no volume price known (x)',
  });
});

t.test('volumePriceOf reads the gross price and refuses what is not a number', async (t) => {
  t.equal(volumePriceOf(pricing('0.0524')), 0.0524);
  t.throws(() => volumePriceOf(pricing('n/a')), /no usable volume price/);
});

t.test('budgetRefusal: a boot is refused only when no placement of the pool fits', async (t) => {
  const types = async () => [serverType('cx23', { fsn1: '0.0060', nbg1: '0.0040' }), serverType('cx33', { fsn1: '0.0200' })];
  const pool = { serverTypes: ['cx33', 'cx23'], locations: ['fsn1', 'nbg1'] };
  t.equal(await money({ types }).money.budgetRefusal(pool), undefined, 'no budget: never refused');
  t.equal(await money({ types, budget: { maxEurPerMonth: 0.005 } }).money.budgetRefusal(pool), undefined, 'cx23 in nbg1 still fits');
  t.match(
    await money({ types, budget: { maxEurPerMonth: 0.003 } }).money.budgetRefusal(pool),
    /^budget: creating cx23 in nbg1 .* would exceed budget\.maxEurPerMonth/,
    'none fits: the reason of the last placement tried',
  );
});
