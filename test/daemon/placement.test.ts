/** Where a worker is created, in order: cold everywhere, or its store volume's location first. */
import t from 'tap';
import { placements } from '../../src/daemon/placement.js';

const pool = { serverTypes: ['ccx33', 'cpx42'], locations: ['fsn1', 'nbg1'] };

t.test('without a warm store: each server type in each location, type by type', async (t) => {
  t.same(
    placements(pool).map((p) => `${p.serverType}@${p.location}`),
    ['ccx33@fsn1', 'ccx33@nbg1', 'cpx42@fsn1', 'cpx42@nbg1'],
  );
  const warm = { id: 7, name: 'vol', location: 'nbg1' };
  t.same(
    placements(pool, warm).map((p) => p.volume),
    [undefined, undefined, undefined, undefined],
    'a volume without a store setting is ignored',
  );
});

t.test("with a warm store: every type in the volume's location with it, then the others cold", async (t) => {
  const store = { volumeGb: 20, gcAtPercent: 80 } as never;
  const order = placements({ ...pool, store }, { id: 7, name: 'vol', location: 'nbg1' });
  t.same(
    order.map((p) => `${p.serverType}@${p.location}${p.volume ? '+vol' : ''}`),
    ['ccx33@nbg1+vol', 'cpx42@nbg1+vol', 'ccx33@fsn1', 'cpx42@fsn1'],
  );
  t.same(order[0]?.volume, { volumeId: 7, gcAtPercent: 80, name: 'vol' });
  t.same(placements({ ...pool, store }).length, 4, 'no volume leased: cold everywhere');
});
