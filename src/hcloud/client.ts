/**
 * A small typed Hetzner Cloud API client on Node's global `fetch`, in the manner of hcloud-go:
 * typed requests and answers (from the generated `openapi.ts`), one error type (`HcloudError`),
 * one transport with one retry policy (`transport.ts`, `retry.ts`), one action waiter
 * (`actions.ts`), and one module per resource (`resources/`), all behind `HcloudClient`.
 */
import { ActionCalls } from './actions.js';
import { CatalogCalls } from './resources/catalog.js';
import { ImageCalls } from './resources/images.js';
import { ServerCalls } from './resources/servers.js';
import { SshKeyCalls } from './resources/ssh-keys.js';
import { VolumeCalls } from './resources/volumes.js';
import { Transport, type TransportOptions } from './transport.js';
import type { RetryPolicy } from './retry.js';

export { PER_PAGE } from './transport.js';
export type { WaitForActionsOptions } from './actions.js';

export interface HcloudClientOptions extends TransportOptions {
  /** Interval between polls in `waitForActions`; default 500 ms (as hcloud-go). */
  actionPollIntervalMs?: number;
}

/** The calls of every resource module, as methods of one client. */
const RESOURCE_CALLS = [ActionCalls, ServerCalls, ImageCalls, SshKeyCalls, VolumeCalls, CatalogCalls];

// Each resource module is a class of calls on `this.transport`; their methods are copied onto
// HcloudClient below (TypeScript's mixin pattern), so a caller sees one client with one name per call.
// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export interface HcloudClient extends ActionCalls, ServerCalls, ImageCalls, SshKeyCalls, VolumeCalls, CatalogCalls {}

// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export class HcloudClient {
  readonly transport: Transport;
  readonly actionPollIntervalMs: number;

  constructor(opts: HcloudClientOptions) {
    this.transport = new Transport(opts);
    this.actionPollIntervalMs = opts.actionPollIntervalMs ?? 500;
    if (!(this.actionPollIntervalMs > 0)) throw new RangeError('actionPollIntervalMs must be > 0');
  }

  get endpoint(): string {
    return this.transport.endpoint;
  }

  get retryPolicy(): RetryPolicy {
    return this.transport.retryPolicy;
  }

  get requestTimeoutMs(): number {
    return this.transport.requestTimeoutMs;
  }

  /** True when the API's last answer refused the token (401). */
  get tokenRefused(): boolean {
    return this.transport.tokenRefused;
  }

  /** Keeps the token out of `util.inspect`, `console.log` and JSON dumps of the client. */
  toJSON(): Record<string, unknown> {
    return { endpoint: this.endpoint };
  }
}

for (const calls of RESOURCE_CALLS) {
  for (const name of Object.getOwnPropertyNames(calls.prototype)) {
    if (name === 'constructor') continue;
    const descriptor = Object.getOwnPropertyDescriptor(calls.prototype, name);
    if (descriptor) Object.defineProperty(HcloudClient.prototype, name, descriptor);
  }
}
