/**
 * Where a worker is created, in order: the pool's first server type in its first location, then
 * its other locations, then the next server type; with a warm store, every server type in the
 * store volume's location first (with the volume), then the others without it (cold).
 */
import type { PoolConfig } from '../core/config.js';
import type { StoreVolumeInput } from './user-data.js';

/** A store volume a worker may boot with: where it is, and what the cloud-config needs of it. */
export interface WarmVolume {
  id: number;
  name: string;
  location: string;
}

export interface Placement {
  serverType: string;
  location: string;
  /** With the store volume (only in its location). */
  volume?: StoreVolumeInput & { name: string };
}

/** Create errors after which the next placement is worth a try. */
export const TRY_ELSEWHERE = new Set(['resource_unavailable', 'resource_limit_exceeded', 'placement_error']);

export function placements(pool: Pick<PoolConfig, 'serverTypes' | 'locations' | 'store'>, warm?: WarmVolume): Placement[] {
  const all = pool.serverTypes.flatMap((serverType) => pool.locations.map((location) => ({ serverType, location })));
  const store = pool.store;
  if (!warm || !store) return all;
  const withVolume = pool.serverTypes.map((serverType) => ({
    serverType,
    location: warm.location,
    volume: { volumeId: warm.id, gcAtPercent: store.gcAtPercent, name: warm.name },
  }));
  return [...withVolume, ...all.filter((a) => a.location !== warm.location)];
}
