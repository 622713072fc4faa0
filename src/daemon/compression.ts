/**
 * Compression "zstd" needs libzstd in the daemon (npm zstd-napi, a native addon). Where it did
 * not build, the pools that use zstd run uncompressed, said once at start: builds must not fail
 * for want of a faster pipe.
 */
import type { PoolConfig } from '../core/config.js';

export interface PoolCompression {
  pools: PoolConfig[];
  /** The pools configured with zstd (whether or not it loaded). */
  zstdPools: string[];
  /** libzstd's version, when a pool uses zstd and it loaded. */
  libzstd?: string;
  /** Why the zstd pools run with "none" instead. */
  unavailable?: string;
}

export function resolvePoolCompression(pools: PoolConfig[], loadZstd: () => { versionString(): string }): PoolCompression {
  const zstdPools = pools.filter((p) => p.compression === 'zstd').map((p) => p.name);
  if (zstdPools.length === 0) return { pools, zstdPools };
  try {
    return { pools, zstdPools, libzstd: loadZstd().versionString() };
  } catch (err) {
    return {
      pools: pools.map((p) => (p.compression === 'zstd' ? { ...p, compression: 'none' } : p)),
      zstdPools,
      unavailable: (err as Error).message,
    };
  }
}
