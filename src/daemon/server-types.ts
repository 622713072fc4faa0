/** Checks a pool's server types against `GET /server_types`: each must exist and fit the pool's systems. */
import type { PoolConfig } from '../core/config.js';
import type { ServerType } from '../hcloud/types.js';
import { UserError } from '../core/errors.js';

const SYSTEM_ARCH: Record<string, 'x86' | 'arm'> = {
  'x86_64-linux': 'x86',
  'i686-linux': 'x86',
  'aarch64-linux': 'arm',
  'armv7l-linux': 'arm',
};

export class PoolTypeError extends UserError {
  override name = 'PoolTypeError';
}

/** The architecture a pool's systems need; throws when they mix x86 and arm. */
export function poolArchitecture(pool: PoolConfig): 'x86' | 'arm' {
  const archs = new Set(pool.systems.map((s) => SYSTEM_ARCH[s]));
  if (archs.has(undefined)) {
    throw new PoolTypeError(
      `pool "${pool.name}": unknown system in ${JSON.stringify(pool.systems)}; known: ${Object.keys(SYSTEM_ARCH).join(', ')}`,
    );
  }
  if (archs.size !== 1)
    throw new PoolTypeError(
      `pool "${pool.name}": systems ${pool.systems.join(', ')} need both x86 and arm servers; make one pool per architecture`,
    );
  return [...archs][0] as 'x86' | 'arm';
}

/** Returns warnings (types deprecated in one of the pool's locations); throws for unknown types and architecture mismatches. */
export function checkPoolServerTypes(pool: PoolConfig, types: ServerType[]): string[] {
  const arch = poolArchitecture(pool);
  const warnings: string[] = [];
  for (const name of pool.serverTypes) {
    const type = types.find((t) => t.name === name);
    if (!type)
      throw new PoolTypeError(
        `pool "${pool.name}": server type "${name}" does not exist; known types: ${types.map((t) => t.name).join(', ')}`,
      );
    if (type.architecture !== arch) {
      throw new PoolTypeError(
        `pool "${pool.name}": server type "${name}" is ${type.architecture}, but the pool builds ${pool.systems.join(', ')} (${arch})`,
      );
    }
    for (const where of type.locations) {
      if (where.deprecation && pool.locations.includes(where.name)) {
        warnings.push(
          `pool "${pool.name}": server type "${name}" is deprecated in ${where.name} (unavailable after ${where.deprecation.unavailable_after})`,
        );
      }
    }
  }
  return warnings;
}
