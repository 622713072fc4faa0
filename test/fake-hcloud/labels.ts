// Hetzner Cloud labels: validation of keys and values, and label selectors
// (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma = and).

export type Labels = Record<string, string>;

const NAME = /^[a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?$/;
const VALUE = /^([a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?)?$/;
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Returns a list of problems (empty when the labels are valid). */
export function labelProblems(labels: unknown, allowReserved = false): string[] {
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) return ['labels must be an object'];
  const problems: string[] = [];
  for (const [key, value] of Object.entries(labels)) {
    const slash = key.lastIndexOf('/');
    const prefix = slash >= 0 ? key.slice(0, slash) : null;
    const name = slash >= 0 ? key.slice(slash + 1) : key;
    if (!NAME.test(name)) problems.push(`label key '${key}': name must be 1-63 characters [a-zA-Z0-9._-], alphanumeric at both ends`);
    if (prefix !== null) {
      if (prefix.length === 0 || prefix.length > 253 || !prefix.split('.').every((p) => DNS_LABEL.test(p))) {
        problems.push(`label key '${key}': prefix must be a DNS subdomain`);
      } else if (!allowReserved && (prefix === 'hetzner.cloud' || prefix.endsWith('.hetzner.cloud'))) {
        problems.push(`label key '${key}': prefix hetzner.cloud is reserved`);
      }
    }
    if (typeof value !== 'string') problems.push(`label '${key}': value must be a string`);
    else if (!VALUE.test(value))
      problems.push(`label '${key}': value must be at most 63 characters [a-zA-Z0-9._-], alphanumeric at both ends`);
  }
  return problems;
}

type Requirement =
  | { op: 'eq' | 'ne'; key: string; value: string }
  | { op: 'exists' | 'absent'; key: string }
  | { op: 'in' | 'notin'; key: string; values: string[] };

export class SelectorError extends Error {}

const KEY = /^[a-zA-Z0-9][a-zA-Z0-9./_-]*$/;
const VAL = /^[a-zA-Z0-9._-]*$/;

/** Splits on commas that are not inside parentheses. */
function splitTop(s: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (depth < 0) throw new SelectorError('unbalanced parentheses');
    if (ch === ',' && depth === 0) {
      parts.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (depth !== 0) throw new SelectorError('unbalanced parentheses');
  parts.push(cur);
  return parts;
}

export function parseSelector(selector: string): Requirement[] {
  if (selector.trim() === '') return [];
  return splitTop(selector).map((raw) => {
    const part = raw.trim();
    let m: RegExpExecArray | null;
    if ((m = /^(\S+?)\s+(in|notin)\s*\(([^()]*)\)$/.exec(part))) {
      const key = m[1] ?? '';
      const values = (m[3] ?? '').split(',').map((v) => v.trim());
      if (!KEY.test(key) || values.some((v) => !VAL.test(v))) throw new SelectorError(`invalid expression '${part}'`);
      return { op: m[2] === 'in' ? 'in' : 'notin', key, values };
    }
    if ((m = /^([^=!\s]+)\s*(!=|==|=)\s*([^=!\s]*)$/.exec(part))) {
      const key = m[1] ?? '';
      const value = m[3] ?? '';
      if (!KEY.test(key) || !VAL.test(value)) throw new SelectorError(`invalid expression '${part}'`);
      return { op: m[2] === '!=' ? 'ne' : 'eq', key, value };
    }
    if ((m = /^!\s*([^=!\s]+)$/.exec(part))) {
      const key = m[1] ?? '';
      if (!KEY.test(key)) throw new SelectorError(`invalid expression '${part}'`);
      return { op: 'absent', key };
    }
    if (KEY.test(part)) return { op: 'exists', key: part };
    throw new SelectorError(`invalid expression '${part}'`);
  });
}

/** `k!=v` and `k notin (...)` also match resources without the key, as in Kubernetes. */
export function matches(requirements: Requirement[], labels: Labels): boolean {
  return requirements.every((r) => {
    const has = Object.prototype.hasOwnProperty.call(labels, r.key);
    const v = labels[r.key];
    switch (r.op) {
      case 'eq':
        return has && v === r.value;
      case 'ne':
        return !has || v !== r.value;
      case 'exists':
        return has;
      case 'absent':
        return !has;
      case 'in':
        return has && v !== undefined && r.values.includes(v);
      case 'notin':
        return !has || v === undefined || !r.values.includes(v);
    }
  });
}
