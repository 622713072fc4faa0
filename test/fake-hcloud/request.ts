// Reading a request of the fake API: its JSON body (checked against openapi.json), its query
// (pages, label selectors, sort orders) and the resources it names.

import type { components } from '../../src/hcloud/openapi.js';
import { ApiError, invalidInput } from './api.js';
import { labelProblems, matches, parseSelector, SelectorError, type Labels } from './labels.js';
import { checkRequestBody } from './openapi.js';

type Pagination = components['schemas']['pagination'];

export interface RequestContext {
  method: string;
  path: string; // relative to /v1, no query
  query: URLSearchParams;
  body: string;
  template: string | null;
  params: Record<string, number>;
}

export interface Answer {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parses and schema-checks a JSON request body (an absent body counts as `{}`). */
export function jsonBody(c: RequestContext, apiDate: Date): Record<string, unknown> {
  let body: unknown = {};
  if (c.body.trim() !== '') {
    try {
      body = JSON.parse(c.body);
    } catch (e) {
      throw new ApiError(400, 'json_error', `invalid JSON: ${(e as Error).message}`);
    }
  }
  if (!isRecord(body)) throw new ApiError(400, 'json_error', 'the request body must be a JSON object');
  const problems = c.template === null ? [] : checkRequestBody(c.method, c.template, body, apiDate);
  if (problems.length > 0) {
    const fields = new Map<string, string[]>();
    for (const p of problems) fields.set(p.name, [...(fields.get(p.name) ?? []), p.message]);
    throw invalidInput(
      `invalid input in fields '${[...fields.keys()].join("', '")}'`,
      [...fields].map(([name, messages]) => ({ name, messages })),
    );
  }
  return body;
}

export function paginate<T>(items: T[], q: URLSearchParams): { items: T[]; meta: { pagination: Pagination } } {
  const num = (name: string, dflt: number): number => {
    const raw = q.get(name);
    if (raw === null || raw === '') return dflt;
    if (!/^\d+$/.test(raw) || Number(raw) < 1) {
      throw invalidInput(`invalid input in field '${name}'`, [{ name, messages: ['must be a positive integer'] }]);
    }
    return Number(raw);
  };
  const page = num('page', 1);
  const perPage = Math.min(50, num('per_page', 25));
  const total = items.length;
  const last = Math.max(1, Math.ceil(total / perPage));
  return {
    items: items.slice((page - 1) * perPage, page * perPage),
    meta: {
      pagination: {
        page,
        per_page: perPage,
        previous_page: page > 1 ? Math.min(page - 1, last) : null,
        next_page: page < last ? page + 1 : null,
        last_page: last,
        total_entries: total,
      },
    },
  };
}

export function selector(q: URLSearchParams): ((labels: Labels) => boolean) | null {
  const raw = q.get('label_selector');
  if (raw === null) return null;
  try {
    const reqs = parseSelector(raw);
    return (labels) => matches(reqs, labels);
  } catch (e) {
    if (e instanceof SelectorError) {
      throw invalidInput(`label_selector: ${e.message}`, [{ name: 'label_selector', messages: [e.message] }]);
    }
    throw e;
  }
}

export function sorter<T extends { id: number; name?: string | null; created?: string }>(
  q: URLSearchParams,
  allowed: string[],
): (a: T, b: T) => number {
  const keys = q.getAll('sort');
  for (const k of keys) {
    const [field, dir] = k.split(':');
    if (!field || !allowed.includes(field) || (dir !== undefined && dir !== 'asc' && dir !== 'desc')) {
      throw invalidInput(`invalid sort '${k}'`, [{ name: 'sort', messages: [`must be one of ${allowed.join(', ')} with :asc or :desc`] }]);
    }
  }
  const specs = [...keys, 'id:asc'].map((k) => {
    const [field = 'id', dir] = k.split(':');
    return { field, sign: dir === 'desc' ? -1 : 1 };
  });
  return (a, b) => {
    for (const { field, sign } of specs) {
      const va = field === 'id' ? a.id : field === 'name' ? (a.name ?? '') : (a.created ?? '');
      const vb = field === 'id' ? b.id : field === 'name' ? (b.name ?? '') : (b.created ?? '');
      if (va < vb) return -sign;
      if (va > vb) return sign;
    }
    return 0;
  };
}

export function byId<T extends { id: number }>(list: readonly T[], c: RequestContext, what: string): T {
  const id = c.params['id'];
  const found = list.find((x) => x.id === id);
  if (!found) throw new ApiError(404, 'not_found', `${what} with ID '${id}' not found`);
  return found;
}

export function findByIdOrName<T extends { id: number; name?: string | null }>(list: readonly T[], ref: unknown): T[] {
  if (typeof ref === 'number') return list.filter((x) => x.id === ref);
  if (typeof ref !== 'string') return [];
  if (/^\d+$/.test(ref)) {
    const byId = list.filter((x) => x.id === Number(ref));
    if (byId.length > 0) return byId;
  }
  return list.filter((x) => x.name === ref);
}

/** Refuses labels the API refuses (422 invalid_input on `labels`). */
export function checkLabels(labels: Labels): void {
  const lp = labelProblems(labels);
  if (lp.length > 0) throw invalidInput(`invalid input in field 'labels'`, [{ name: 'labels', messages: lp }]);
}
