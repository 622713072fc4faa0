/**
 * The transport of the Hetzner Cloud API client: one request (auth, timeout, error parsing), its
 * retries per `retry.ts`, pagination, and the sleeps between attempts. The resource modules
 * (`resources/`) and the action waiter (`actions.ts`) speak to the API only through it.
 */
import { insecureEndpointReason } from '../core/loopback.js';
import { AnswerTooLarge, MAX_ANSWER_BYTES, readLimited } from './answer-body.js';
import type { operations } from './openapi.js';
import { HcloudError, apiErrorMessage } from './errors.js';
import {
  abortableSleep,
  backoffDelay,
  failureProvesNotApplied,
  rateLimitDelay,
  replayForMethod,
  resolveRetryPolicy,
  shouldRetry,
  type Replay,
  type RetryPolicy,
} from './retry.js';
import type { ListMeta, Logger, OkAnswer, QueryOf } from './types.js';

const noopLogger: Logger = { debug() {}, info() {}, warn() {} };

export interface TransportOptions {
  /** API base, e.g. `https://api.hetzner.cloud/v1`. */
  endpoint: string;
  token: string;
  retry?: Partial<RetryPolicy>;
  /** Timeout of each single request, answer body included; default 30 s. */
  requestTimeoutMs?: number;
  /** Largest answer body read; a larger one is an `invalid_response` error. Default MAX_ANSWER_BYTES. */
  maxAnswerBytes?: number;
  logger?: Logger;
  userAgent?: string;
  /** Waits between retries and polls; must reject when `signal` aborts. Injectable for tests. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Clock in ms since the epoch (for `RateLimit-Reset` and wait deadlines). */
  now?: () => number;
}

/** Entries per page when listing (the API's maximum). */
export const PER_PAGE = 50;
const DEFAULT_USER_AGENT = 'nix-hcloud-builder';

export type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';

type BodyOf<Op extends keyof operations> = operations[Op]['requestBody'] extends infer B
  ? B extends { content: { 'application/json': infer J } }
    ? J
    : never
  : never;

export interface RequestSpec<Op extends keyof operations> {
  method: Method;
  /** Path below the endpoint, e.g. `/servers/42`. */
  path: string;
  query?: QueryOf<Op>;
  page?: number;
  body?: BodyOf<Op>;
  signal?: AbortSignal | undefined;
  /** Defaults from the method; see `retry.ts`. */
  replay?: Replay;
  /** Set to true by the retry loop once an attempt failed in a way that leaves its outcome unknown. */
  outcome?: { unknown: boolean };
}

type AttemptResult<T> = { ok: true; data: T } | { ok: false; error: HcloudError; rateLimitReset: string | null };

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Reads the `{"error": {code, message, details}}` body, if that is what it is. */
function parseErrorBody(text: string): { code: string; message: string; details?: unknown } | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isRecord(parsed) || !isRecord(parsed.error)) return undefined;
  const { code, message, details } = parsed.error;
  if (typeof code !== 'string') return undefined;
  return { code, message: typeof message === 'string' ? message : '', details: details ?? undefined };
}

function describeCause(err: unknown): string {
  const parts: string[] = [];
  let current: unknown = err;
  for (let depth = 0; depth < 4 && current instanceof Error; depth++) {
    const code = (current as { code?: unknown }).code;
    parts.push(typeof code === 'string' && !current.message.includes(code) ? `${current.message} (${code})` : current.message);
    current = current.cause;
  }
  return parts.filter((p) => p.length > 0).join(': ') || String(err);
}

type QueryScalar = string | number | boolean | null | undefined;

export function asArray<T>(value: T | T[] | undefined): T[] | undefined {
  if (value === undefined) return undefined;
  return Array.isArray(value) ? value : [value];
}

export class Transport {
  readonly endpoint: string;
  readonly retryPolicy: RetryPolicy;
  readonly requestTimeoutMs: number;
  readonly maxAnswerBytes: number;
  readonly log: Logger;
  readonly now: () => number;
  readonly #token: string;
  #tokenRefused = false;
  readonly #userAgent: string;
  readonly #sleep: (ms: number, signal?: AbortSignal) => Promise<void>;

  constructor(opts: TransportOptions) {
    let url: URL;
    try {
      url = new URL(opts.endpoint);
    } catch {
      throw new TypeError(`Hetzner Cloud endpoint is not a URL: ${JSON.stringify(opts.endpoint)}`);
    }
    const insecure = insecureEndpointReason(url);
    if (insecure) throw new TypeError(`Hetzner Cloud endpoint ${opts.endpoint}: ${insecure}`);
    if (typeof opts.token !== 'string' || opts.token.trim() === '') throw new TypeError('Hetzner Cloud API token is empty');
    this.endpoint = opts.endpoint.replace(/\/+$/, '');
    this.#token = opts.token.trim();
    this.retryPolicy = resolveRetryPolicy(opts.retry);
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 30_000;
    this.maxAnswerBytes = opts.maxAnswerBytes ?? MAX_ANSWER_BYTES;
    if (!(this.requestTimeoutMs > 0)) throw new RangeError('requestTimeoutMs must be > 0');
    this.#userAgent = opts.userAgent ?? DEFAULT_USER_AGENT;
    this.log = opts.logger ?? noopLogger;
    this.#sleep = opts.sleep ?? abortableSleep;
    this.now = opts.now ?? Date.now;
  }

  /** Keeps the token out of `util.inspect`, `console.log` and JSON dumps. */
  toJSON(): Record<string, unknown> {
    return { endpoint: this.endpoint };
  }

  /** Every page of a list, in order. */
  async paginate<Op extends keyof operations, T>(
    op: Op,
    path: string,
    query: QueryOf<Op>,
    pick: (answer: OkAnswer<Op>) => T[],
    signal?: AbortSignal,
  ): Promise<T[]> {
    const items: T[] = [];
    let page = 1;
    // Bounded so that a broken `next_page` cannot loop forever.
    for (let pages = 0; pages < 10_000; pages++) {
      const answer = await this.request(op, { method: 'GET', path, query, page, signal });
      const got: unknown = pick(answer);
      if (!Array.isArray(got)) throw this.invalid('GET', path, 200, `page ${page} lacks its list`);
      items.push(...(got as T[]));
      const raw: unknown = answer;
      const meta: unknown = isRecord(raw) ? raw.meta : undefined;
      const next = isRecord(meta) && isRecord(meta.pagination) ? (meta as ListMeta).pagination.next_page : null;
      if (typeof next !== 'number' || next <= page) break;
      page = next;
    }
    return items;
  }

  /** One logical request: attempts, retries per `retry.ts`, and sleeps between them. */
  async request<Op extends keyof operations>(op: Op, spec: RequestSpec<Op>): Promise<OkAnswer<Op>> {
    const replay = spec.replay ?? replayForMethod(spec.method);
    const policy = this.retryPolicy;
    for (let retry = 0; ; retry++) {
      const result = await this.#attempt<OkAnswer<Op>>(op, spec);
      if (result.ok) return result.data;
      const err = result.error;
      // A retryable failure that does not prove the request was refused may have been applied.
      if (spec.outcome !== undefined && err.retryable && !failureProvesNotApplied(err)) spec.outcome.unknown = true;
      if (retry >= policy.maxRetries || !shouldRetry(err, replay)) throw err;
      const fromHeader = err.status === 429 ? rateLimitDelay(result.rateLimitReset, this.now(), policy) : undefined;
      const delayMs = fromHeader ?? backoffDelay(policy, retry);
      this.log.warn(
        {
          op,
          method: spec.method,
          path: spec.path,
          status: err.status,
          code: err.code,
          requestId: err.requestId,
          retry: retry + 1,
          delayMs,
        },
        'Hetzner Cloud API request failed, retrying',
      );
      await this.pause(delayMs, spec.signal, spec.method, spec.path);
    }
  }

  async #attempt<T>(op: keyof operations, spec: RequestSpec<keyof operations>): Promise<AttemptResult<T>> {
    const { method, path } = spec;
    const userSignal = spec.signal;
    if (userSignal?.aborted) return { ok: false, error: this.#aborted(method, path, userSignal), rateLimitReset: null };

    const params = new URLSearchParams();
    if (spec.query !== undefined) {
      // Query parameters are scalars or arrays of them (the description has no other kind).
      for (const [key, value] of Object.entries(spec.query as Record<string, QueryScalar | QueryScalar[]>)) {
        for (const item of asArray(value) ?? []) {
          if (item !== undefined && item !== null) params.append(key, String(item));
        }
      }
    }
    if (spec.page !== undefined) {
      params.set('page', String(spec.page));
      params.set('per_page', String(PER_PAGE));
    }
    const qs = params.toString();
    const url = `${this.endpoint}${path}${qs ? `?${qs}` : ''}`;

    const headers: Record<string, string> = {
      Authorization: `Bearer ${this.#token}`,
      Accept: 'application/json',
      'User-Agent': this.#userAgent,
    };
    let body: string | undefined;
    if (spec.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(spec.body);
    }

    // One controller per attempt, wired to the caller's signal by hand and unwired afterwards:
    // `AbortSignal.any` would keep every request's signal alive for as long as a long-lived
    // caller signal (e.g. the daemon's shutdown signal) lives.
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort(new DOMException(`no answer within ${this.requestTimeoutMs} ms`, 'TimeoutError'));
    }, this.requestTimeoutMs);
    const onAbort = (): void => controller.abort(userSignal?.reason);
    userSignal?.addEventListener('abort', onAbort, { once: true });
    const signal = controller.signal;
    const started = this.now();
    let status = 0;
    let requestId: string | undefined;
    let rateLimitReset: string | null = null;
    let text: string;
    try {
      const res = await fetch(url, { method, headers, body: body ?? null, signal });
      status = res.status;
      requestId = res.headers.get('x-correlation-id') ?? undefined;
      rateLimitReset = res.headers.get('ratelimit-reset');
      this.log.debug(
        {
          op,
          method,
          path,
          status,
          requestId,
          ms: this.now() - started,
          rateLimitRemaining: res.headers.get('ratelimit-remaining') ?? undefined,
        },
        'Hetzner Cloud API answer',
      );
      text = await readLimited(res, this.maxAnswerBytes);
    } catch (cause) {
      let error: HcloudError;
      if (cause instanceof AnswerTooLarge) {
        error = this.invalid(method, path, status, cause.message, requestId);
      } else if (userSignal?.aborted) {
        error = this.#aborted(method, path, userSignal);
      } else if (timedOut) {
        error = new HcloudError({
          status: 0,
          code: 'timeout',
          message: `no answer from Hetzner Cloud API within ${this.requestTimeoutMs} ms (${method} ${path})`,
          method,
          path,
          cause,
          ...(requestId === undefined ? {} : { requestId }),
        });
      } else {
        error = new HcloudError({
          status: 0,
          code: 'network_error',
          message: `network error talking to Hetzner Cloud API (${method} ${path}): ${describeCause(cause)}`,
          method,
          path,
          cause,
          ...(requestId === undefined ? {} : { requestId }),
        });
      }
      return { ok: false, error, rateLimitReset: null };
    } finally {
      clearTimeout(timer);
      userSignal?.removeEventListener('abort', onAbort);
    }

    // The token's standing as the API last judged it (any answer but 401 means it was accepted).
    this.#tokenRefused = status === 401;
    if (status < 200 || status >= 300) {
      const parsed = parseErrorBody(text);
      const code = parsed?.code ?? `http_${status}`;
      const apiMessage = parsed?.message ?? text.replace(/\s+/g, ' ').trim().slice(0, 200);
      const error = new HcloudError({
        status,
        code,
        message: apiErrorMessage(status, code, apiMessage, method, path),
        method,
        path,
        ...(parsed?.details === undefined ? {} : { details: parsed.details }),
        ...(requestId === undefined ? {} : { requestId }),
      });
      return { ok: false, error, rateLimitReset };
    }

    // 204 No Content (e.g. DELETE /images/{id}, DELETE /ssh_keys/{id}) has no body to read.
    if (status === 204) return { ok: true, data: undefined as T };
    try {
      return { ok: true, data: JSON.parse(text) as T };
    } catch (cause) {
      const error = this.invalid(method, path, status, 'answer is not JSON', requestId, cause);
      return { ok: false, error, rateLimitReset: null };
    }
  }

  /** Sleeps between attempts or polls; an abort turns into `HcloudError` code `aborted`. */
  async pause(ms: number, signal: AbortSignal | undefined, method: string, path: string): Promise<void> {
    try {
      await this.#sleep(ms, signal);
    } catch (err) {
      if (signal?.aborted) throw this.#aborted(method, path, signal);
      throw err;
    }
    if (signal?.aborted) throw this.#aborted(method, path, signal);
  }

  #aborted(method: string, path: string, signal: AbortSignal): HcloudError {
    return new HcloudError({
      status: 0,
      code: 'aborted',
      message: `Hetzner Cloud API request aborted (${method} ${path})`,
      method,
      path,
      cause: signal.reason,
    });
  }

  /** True when the API's last answer refused the token (401), until an answer accepts it. */
  get tokenRefused(): boolean {
    return this.#tokenRefused;
  }

  invalid(method: string, path: string, status: number, why: string, requestId?: string, cause?: unknown): HcloudError {
    return new HcloudError({
      status,
      code: 'invalid_response',
      message: `unexpected answer from Hetzner Cloud API (${method} ${path}): ${why}`,
      method,
      path,
      ...(requestId === undefined ? {} : { requestId }),
      ...(cause === undefined ? {} : { cause }),
    });
  }
}

/**
 * The API's query for a list call from our filters: camelCase keys become the API's snake_case
 * (`labelSelector` → `label_selector`, `includeDeprecated` → `include_deprecated`), absent ones
 * are left out, and arrays stay arrays (sent as repeated parameters).
 */
export function listQuery<Op extends keyof operations>(filters: object): QueryOf<Op> {
  const query: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(filters)) {
    if (value !== undefined) query[key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)] = value;
  }
  return query;
}
