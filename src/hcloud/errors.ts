/**
 * The one error type of the Hetzner Cloud client.
 *
 * - API errors carry the HTTP status and the API's `error.code` ("rate_limit_exceeded",
 *   "uniqueness_error", ...), its message and `details`.
 * - Failures with no HTTP answer have `status` 0 and a client code: "network_error", "timeout"
 *   (the per-request timeout fired), "aborted" (the caller's AbortSignal fired; the signal's
 *   reason is the `cause`), "invalid_response" (an answer that is not the JSON the spec promises),
 *   "action_wait_timeout" (`waitForActions` gave up).
 * - A failed action has `status` 0, the action's own error code and message, and `action` set.
 *
 * Messages and fields never contain the API token or request headers.
 */
import type { Action } from './types.js';
import { UserError } from '../core/errors.js';

export type ClientErrorCode = 'network_error' | 'timeout' | 'aborted' | 'invalid_response' | 'action_wait_timeout';

export interface HcloudErrorInit {
  status: number;
  code: string;
  message: string;
  details?: unknown;
  requestId?: string;
  method?: string;
  path?: string;
  action?: Action;
  cause?: unknown;
}

/** HTTP statuses worth trying again whatever the code says. */
const RETRYABLE_STATUS = new Set([429, 500, 502, 503, 504]);
const RETRYABLE_CLIENT_CODES = new Set(['network_error', 'timeout']);

export class HcloudError extends UserError {
  override readonly name = 'HcloudError';
  /** HTTP status; 0 when there was no answer (network error, timeout, abort) or for a failed action. */
  readonly status: number;
  /** API error code, client code (see above) or, for a failed action, the action's error code. */
  readonly code: string;
  readonly details?: unknown;
  /** The answer's `X-Correlation-Id`, to quote to Hetzner support. */
  readonly requestId?: string;
  readonly method?: string;
  /** Request path relative to the endpoint, without the query string. */
  readonly path?: string;
  /** Set when the error is a failed action: the action as last seen. */
  readonly action?: Action;

  constructor(init: HcloudErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.status = init.status;
    this.code = init.code;
    if (init.details !== undefined) this.details = init.details;
    if (init.requestId !== undefined) this.requestId = init.requestId;
    if (init.method !== undefined) this.method = init.method;
    if (init.path !== undefined) this.path = init.path;
    if (init.action !== undefined) this.action = init.action;
  }

  /**
   * Whether the same request may succeed if sent again later: rate limiting, `conflict` (the
   * resource changed during the request; not `uniqueness_error`), 5xx server trouble, network
   * errors and timeouts. Whether it is *safe* to resend a POST is a separate question, answered
   * by the retry rule in `retry.ts`.
   */
  get retryable(): boolean {
    if (this.action !== undefined) return false;
    if (this.status === 0) return RETRYABLE_CLIENT_CODES.has(this.code);
    if (this.status === 409) return this.code === 'conflict';
    return RETRYABLE_STATUS.has(this.status);
  }

  /** A plain object for structured logs. */
  toJSON(): Record<string, unknown> {
    return {
      name: this.name,
      message: this.message,
      status: this.status,
      code: this.code,
      details: this.details,
      requestId: this.requestId,
      method: this.method,
      path: this.path,
      action: this.action === undefined ? undefined : { id: this.action.id, command: this.action.command },
    };
  }
}

/**
 * True when the API said the resource does not exist: a 404 answer with the API's `not_found`
 * code, e.g. deleting or getting a server that is already gone. The one test of "gone" (a caller
 * deleting takes it as done). Not a 404 without the API's error body (a proxy's page, a wrong
 * endpoint), nor a failed action whose code is `not_found`: those prove nothing is gone.
 */
export function isNotFound(err: unknown): boolean {
  return err instanceof HcloudError && err.status === 404 && err.code === 'not_found';
}

/**
 * True when the API refused because a volume is attached: an attach of a volume attached
 * elsewhere (`volume_already_attached`), or a delete of an attached volume, which Hetzner answers
 * with the generic `service_error` and the message "volume with ID '…' is still attached to a
 * server" (the message is all that tells it from other service errors).
 */
export function isVolumeAttached(err: unknown): boolean {
  if (!(err instanceof HcloudError)) return false;
  return err.code === 'volume_already_attached' || (err.code === 'service_error' && /still attached/i.test(err.message));
}

/** The message of an API error answer, with a hint for the two token problems. */
export function apiErrorMessage(status: number, code: string, apiMessage: string, method: string, path: string): string {
  const where = `${method} ${path}`;
  const said = apiMessage ? `: ${apiMessage}` : '';
  if (status === 401) {
    return `Hetzner Cloud API rejected the token (401 ${code}${said}): the token is wrong, revoked or of another project (${where})`;
  }
  if (status === 403 && code === 'forbidden') {
    return `Hetzner Cloud API refused the request (403 forbidden${said}): the token may be read-only; a Read & Write token is needed (${where})`;
  }
  return `Hetzner Cloud API error on ${where}${said} (${status} ${code})`;
}
