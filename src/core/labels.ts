/** The labels that mark a server as ours, and the selectors that find them again. */
export const LABEL_MANAGED_BY = 'managed-by';
export const LABEL_INSTANCE = 'nix-hcloud-builder/instance';
export const LABEL_POOL = 'nix-hcloud-builder/pool';
export const MANAGED_BY = 'nix-hcloud-builder';

export function serverLabels(instance: string, pool: string): Record<string, string> {
  return { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_INSTANCE]: instance, [LABEL_POOL]: pool };
}

/** Every server of this daemon instance (all pools). */
export function instanceSelector(instance: string): string {
  return `${LABEL_MANAGED_BY}=${MANAGED_BY},${LABEL_INSTANCE}=${instance}`;
}

/** A server name: RFC 1123, unique per project, says whose it is at a glance in the console. */
export function serverName(instance: string, pool: string, suffix: string): string {
  const raw = `nhb-${instance}-${pool}-${suffix}`.toLowerCase().replace(/[^a-z0-9-]+/g, '-');
  return raw.slice(0, 63).replace(/-+$/, '');
}

/** Which worker slot of a pool a store volume belongs to (0 … maxWorkers-1). */
export const LABEL_SLOT = 'nix-hcloud-builder/slot';

/** A pool's store volume for one worker slot: our labels plus the slot. */
export function volumeLabels(instance: string, pool: string, slot: number): Record<string, string> {
  return { ...serverLabels(instance, pool), [LABEL_SLOT]: String(slot) };
}

/** Every store volume of one pool of this instance. */
export function poolSelector(instance: string, pool: string): string {
  return `${instanceSelector(instance)},${LABEL_POOL}=${pool}`;
}

/**
 * A volume name: unique per project, alphanumeric ends, at most 64. The slot suffix is kept
 * whole when the name is cut, so two slots of one pool never share a name.
 */
export function volumeName(instance: string, pool: string, slot: number): string {
  const suffix = `-store-${slot}`;
  const head = `nhb-${instance}-${pool}`.toLowerCase().replace(/[^a-z0-9-]+/g, '-');
  return `${head.slice(0, 64 - suffix.length)}${suffix}`;
}
