// The catalogue's routes: server types, locations and prices, read-only (the catalogue is catalog.ts).

import { LOCATIONS, pricing, SERVER_TYPES } from './catalog.js';
import type { Router } from './http.js';
import { byId, paginate, sorter, type Answer, type RequestContext } from './request.js';

export function catalogRoutes(router: Router): void {
  router.add('GET', '/server_types', (c) => listServerTypes(c));
  router.add('GET', '/server_types/{id}', (c) => ({ status: 200, body: { server_type: byId(SERVER_TYPES, c, 'server type') } }));
  router.add('GET', '/locations', (c) => listLocations(c));
  router.add('GET', '/locations/{id}', (c) => ({ status: 200, body: { location: byId(LOCATIONS, c, 'location') } }));
  router.add('GET', '/pricing', () => ({ status: 200, body: { pricing: pricing() } }));
}

function listServerTypes(c: RequestContext): Answer {
  const name = c.query.get('name');
  const items = SERVER_TYPES.filter((t) => name === null || t.name === name).sort((a, b) => a.id - b.id);
  const p = paginate(items, c.query);
  return { status: 200, body: { server_types: p.items, meta: p.meta } };
}

function listLocations(c: RequestContext): Answer {
  const name = c.query.get('name');
  const items = LOCATIONS.filter((l) => name === null || l.name === name).sort(sorter(c.query, ['id', 'name']));
  const p = paginate(items, c.query);
  return { status: 200, body: { locations: p.items, meta: p.meta } };
}
