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
