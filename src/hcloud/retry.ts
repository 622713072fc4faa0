/**
 * The one retry policy of the Hetzner Cloud client, after hcloud-go: exponential backoff from
 * 1 s, x2, capped at 60 s, with jitter, at most 5 retries; a 429 waits for `RateLimit-Reset`.
 *
 * Which failures are retried depends on whether sending the request again could do something
 * twice. Servers cost money by the started hour, so the rule is strict:
 *
 * - GET and DELETE (`idempotent`): every retryable failure (429, 409 conflict, 500, 502, 503,
 *   504, network errors, per-request timeouts). Deleting twice cannot cost anything: the second
 *   DELETE of a deleted server answers 404.
 * - Any other POST/PUT (`unsafe`, e.g. server actions, `create_image`): only failures that prove
 *   the request was not applied: 429 (refused before it was looked at), 409 `conflict` (refused
 *   because the resource changed meanwhile), 503 (maintenance / unavailable: refused), and network
 *   errors that happened before a byte was sent (connection refused, DNS failure, connect
 *   timeout). A 500, 502, 504, a reset connection or our own timeout leave the outcome unknown
 *   (a second `create_image` would be a second, billed snapshot), so they are not retried.
 * - A PUT that sets a resource's attributes to given values (`PUT /images/{id}`) is sent as
 *   `idempotent`: applying the same body twice leaves the same state.
 * - POST /servers (`unique_name`): retried like `idempotent`, because server names are unique
 *   per project: whatever happened to the first attempt, a second one with the same name can never
 *   create a second server. Its only risk is the opposite one: when the first attempt did create
 *   the server, the retry is answered 409 `uniqueness_error`. The client then looks the server up
 *   by name and adopts it (see `HcloudClient.createServer`), but only after an unknown outcome;
 *   a `uniqueness_error` on a first attempt is an ordinary error.
 */
import type { HcloudError } from './errors.js';

export interface RetryPolicy {
  /** Retries after the first attempt (so `maxRetries + 1` attempts in all). */
  maxRetries: number;
  baseDelayMs: number;
  maxDelayMs: number;
  factor: number;
  /** Spread each delay uniformly between `baseDelayMs` and the computed delay (as hcloud-go). */
  jitter: boolean;
}

export const defaultRetryPolicy: Readonly<RetryPolicy> = Object.freeze({
  maxRetries: 5,
  baseDelayMs: 1000,
  maxDelayMs: 60_000,
  factor: 2,
  jitter: true,
});

export function resolveRetryPolicy(overrides: Partial<RetryPolicy> = {}): RetryPolicy {
  const policy: RetryPolicy = { ...defaultRetryPolicy };
  for (const [key, value] of Object.entries(overrides) as [keyof RetryPolicy, RetryPolicy[keyof RetryPolicy] | undefined][]) {
    if (value !== undefined) (policy as unknown as Record<string, unknown>)[key] = value;
  }
  const { maxRetries, baseDelayMs, maxDelayMs, factor } = policy;
  if (!Number.isInteger(maxRetries) || maxRetries < 0)
    throw new RangeError(`retry.maxRetries must be a non-negative integer, got ${maxRetries}`);
  if (!(baseDelayMs >= 0)) throw new RangeError(`retry.baseDelayMs must be >= 0, got ${baseDelayMs}`);
  if (!(maxDelayMs >= baseDelayMs)) throw new RangeError(`retry.maxDelayMs must be >= baseDelayMs, got ${maxDelayMs}`);
  if (!(factor >= 1)) throw new RangeError(`retry.factor must be >= 1, got ${factor}`);
  return policy;
}

/**
 * Delay before retry number `retry` (0 for the first retry): `base * factor^retry`, capped; with
 * jitter, uniform in `[base, that]`.
 */
export function backoffDelay(policy: RetryPolicy, retry: number, random: () => number = Math.random): number {
  const capped = Math.min(policy.maxDelayMs, policy.baseDelayMs * policy.factor ** retry);
  if (!policy.jitter) return Math.round(capped);
  return Math.round(policy.baseDelayMs + (capped - policy.baseDelayMs) * random());
}

/**
 * Delay asked for by a 429's `RateLimit-Reset` (unix seconds), capped at `maxDelayMs`. The
 * header tells when the bucket is full again; it refills one request a second, so waiting the
 * whole way is never needed past the cap. Undefined when the header is absent, unreadable or
 * already past, in which case the ordinary backoff applies.
 */
export function rateLimitDelay(resetHeader: string | null, nowMs: number, policy: RetryPolicy): number | undefined {
  if (resetHeader === null) return undefined;
  const text = resetHeader.trim();
  if (!/^\d+(\.\d+)?$/.test(text)) return undefined;
  const wait = Number(text) * 1000 - nowMs;
  if (!(wait > 0)) return undefined;
  return Math.min(Math.ceil(wait), policy.maxDelayMs);
}

/** How safe it is to send a request again; see the rule at the top of this file. */
export type Replay = 'idempotent' | 'unsafe' | 'unique_name';

export function replayForMethod(method: string): Replay {
  const m = method.toUpperCase();
  return m === 'GET' || m === 'HEAD' || m === 'DELETE' ? 'idempotent' : 'unsafe';
}

/** Error codes of a connection that never carried the request. */
const NOT_SENT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH', 'UND_ERR_CONNECT_TIMEOUT']);

function errorCode(value: unknown): string | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const code = (value as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

/** True when a fetch failure (its `cause` chain) shows that the request was never sent. */
export function networkFailureBeforeSend(err: unknown): boolean {
  let current: unknown = err;
  for (let depth = 0; depth < 5 && typeof current === 'object' && current !== null; depth++) {
    const code = errorCode(current);
    if (code !== undefined && NOT_SENT_CODES.has(code)) return true;
    const inner = (current as { errors?: unknown }).errors;
    if (Array.isArray(inner) && inner.length > 0 && inner.every((e) => NOT_SENT_CODES.has(errorCode(e) ?? ''))) return true;
    current = (current as { cause?: unknown }).cause;
  }
  return false;
}

/** True when the failure shows the API did not apply the request. */
export function failureProvesNotApplied(err: HcloudError): boolean {
  if (err.status === 429 || err.status === 503) return true;
  if (err.status === 409) return err.code === 'conflict';
  if (err.status === 0 && err.code === 'network_error') return networkFailureBeforeSend(err.cause);
  return false;
}

export function shouldRetry(err: HcloudError, replay: Replay): boolean {
  if (!err.retryable) return false;
  return replay === 'unsafe' ? failureProvesNotApplied(err) : true;
}

/** A sleep that ends early, rejecting with the signal's reason, when `signal` aborts. */
export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(
      () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      },
      Math.max(0, ms),
    );
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
