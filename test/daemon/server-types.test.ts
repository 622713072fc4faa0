import t from 'tap';
import { parseConfig, type PoolConfig } from '../../src/core/config.js';
import { checkPoolServerTypes } from '../../src/daemon/server-types.js';
import { SERVER_TYPES } from '../fake-hcloud/catalog.js';

function pool(locations: string[]): PoolConfig {
  return parseConfig({ pools: { x86_64: { serverTypes: ['cx22'], locations } } }, '/').pools['x86_64'] as PoolConfig;
}

// cx22 as the API lists it, deprecated in fsn1 only (the per-location record the API keeps).
const listed = SERVER_TYPES.find((type) => type.name === 'cx22');
if (!listed) throw new Error('the fake lists no cx22');
const deprecation = { announced: '2025-10-16T00:00:00+00:00', unavailable_after: '2026-12-31T00:00:00+00:00' };
const cx22 = { ...listed, locations: listed.locations.map((l) => ({ ...l, deprecation: l.name === 'fsn1' ? deprecation : null })) };

t.test("a server type deprecated in one of the pool's locations is a warning naming it", async (t) => {
  t.same(checkPoolServerTypes(pool(['fsn1', 'nbg1']), [cx22]), [
    'pool "x86_64": server type "cx22" is deprecated in fsn1 (unavailable after 2026-12-31T00:00:00+00:00)',
  ]);
});

t.test('deprecated only where the pool does not build: no warning', async (t) => {
  t.same(checkPoolServerTypes(pool(['nbg1', 'hel1']), [cx22]), []);
});
