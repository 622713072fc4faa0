/**
 * The default instance name: the host name plus a random suffix made at the daemon's first start
 * and kept in the state folder (`instance`), so two machines with one host name (NixOS's default
 * is "nixos") in one Hetzner project never take each other's servers for their own, and the name
 * stays the same across restarts. A state folder from before the suffix keeps its instance (its
 * servers and store volumes carry it).
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';

/** A label value: at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends. */
export const LABEL_VALUE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)$/;
const SUFFIX_LENGTH = 6;

export function instanceFilePath(stateDir: string): string {
  return join(stateDir, 'instance');
}

/** Where the default came from: the state folder's `instance` file or state, or made now (to be kept at start). */
export type InstanceOrigin = 'config' | 'state folder' | 'new';

export function hostPart(host = hostname()): string {
  const cleaned = host
    .toLowerCase()
    .replace(/[^a-z0-9_.-]/g, '-')
    .replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, '');
  // Room for "-" and the suffix within the label value's 63 characters.
  return (cleaned || 'default').slice(0, 63 - 1 - SUFFIX_LENGTH).replace(/[^a-z0-9]+$/, '') || 'default';
}

/** A fresh default: host name, "-", six random letters and digits. */
export function newDefaultInstance(host = hostname()): string {
  const suffix = [...randomBytes(SUFFIX_LENGTH)].map((b) => (b % 36).toString(36)).join('');
  return `${hostPart(host)}-${suffix}`;
}

/** The instance kept in the state folder, if any: its `instance` file, else the instance of a state.json written before it. */
export function keptInstance(stateDir: string): string | undefined {
  const file = instanceFilePath(stateDir);
  const candidates: (() => unknown)[] = [
    () => (existsSync(file) ? readFileSync(file, 'utf8').trim() : undefined),
    () => {
      const state = join(stateDir, 'state.json');
      return existsSync(state) ? (JSON.parse(readFileSync(state, 'utf8')) as { instance?: unknown }).instance : undefined;
    },
  ];
  for (const candidate of candidates) {
    let value: unknown;
    try {
      value = candidate();
    } catch {
      continue;
    }
    if (typeof value === 'string' && LABEL_VALUE.test(value)) return value;
  }
  return undefined;
}

export function defaultInstance(stateDir: string): { instance: string; origin: InstanceOrigin } {
  const kept = keptInstance(stateDir);
  return kept ? { instance: kept, origin: 'state folder' } : { instance: newDefaultInstance(), origin: 'new' };
}
