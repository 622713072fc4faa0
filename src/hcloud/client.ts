/**
 * A small typed Hetzner Cloud API client on Node's global `fetch`, in the manner of hcloud-go:
 * typed requests and answers (from the generated `openapi.ts`), one error type (`HcloudError`),
 * one retry policy (`retry.ts`) and one action waiter (`waitForActions`).
 */
import { insecureEndpointReason } from '../core/loopback.js';
import type { operations } from './openapi.js';
import { HcloudError, apiErrorMessage, isNotFound } from './errors.js';
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
import type {
  Action,
  CreateImageRequest,
  CreateImageResponse,
  CreateServerRequest,
  CreateServerResponse,
  CreateSshKeyRequest,
  CreateVolumeOptions,
  CreateVolumeResponse,
  EnableRescueRequest,
  EnableRescueResponse,
  Image,
  ListImagesQuery,
  ListMeta,
  ListServersQuery,
  ListSshKeysQuery,
  ListVolumesQuery,
  Location,
  Logger,
  OkAnswer,
  Pricing,
  QueryOf,
  Server,
  ServerType,
  SshKey,
  UpdateImageRequest,
  UpdateVolumeRequest,
  Volume,
} from './types.js';

export interface HcloudClientOptions {
  /** API base, e.g. `https://api.hetzner.cloud/v1`. */
  endpoint: string;
  token: string;
  retry?: Partial<RetryPolicy>;
  /** Interval between polls in `waitForActions`; default 500 ms (as hcloud-go). */
  actionPollIntervalMs?: number;
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

export interface WaitForActionsOptions {
  signal?: AbortSignal;
  /** Give up (code `action_wait_timeout`) when the actions are not done by then. No limit by default. */
  timeoutMs?: number;
  /** Called with an action each time a poll shows its status or progress changed. */
  onProgress?: (action: Action) => void;
}

/** Entries per page when listing (the API's maximum). */
export const PER_PAGE = 50;
/** Action ids per `GET /actions` poll (the API's default page size, so one page always suffices). */
const ACTION_IDS_PER_POLL = 25;
/**
 * How far before our first create attempt a server found by name may have been created and still
 * be taken for the one that attempt created (covers clock skew between us and the API).
 */
const ADOPT_CLOCK_MARGIN_MS = 15 * 60_000;
const DEFAULT_USER_AGENT = 'nix-hcloud-builder';
/**
 * Answers are read up to this size (a page of 50 servers is ≈ 200 KB): a broken proxy or a
 * hostile endpoint must not fill the daemon's memory.
 */
export const MAX_ANSWER_BYTES = 8 * 1024 * 1024;

class AnswerTooLarge extends Error {
  override name = 'AnswerTooLarge';
}

/** The body as text, refused once it passes `limit` bytes (by its Content-Length, or as it streams). */
async function readLimited(res: Response, limit: number): Promise<string> {
  const tooLarge = (): AnswerTooLarge => new AnswerTooLarge(`answer is larger than ${limit} bytes`);
  const declared = Number(res.headers.get('content-length') ?? 0);
  if (declared > limit) {
    await res.body?.cancel().catch(() => undefined);
    throw tooLarge();
  }
  if (!res.body) return '';
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > limit) {
      await reader.cancel().catch(() => undefined);
      throw tooLarge();
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';

type BodyOf<Op extends keyof operations> = operations[Op]['requestBody'] extends infer B
  ? B extends { content: { 'application/json': infer J } }
    ? J
    : never
  : never;

interface RequestSpec<Op extends keyof operations> {
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

type AttemptResult<T> =
  | { ok: true; data: T }
  | { ok: false; error: HcloudError; rateLimitReset: string | null };

const noopLogger: Logger = { debug() {}, info() {}, warn() {} };

function isRecord(value: unknown): value is Record<string, unknown> {
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

function asArray<T>(value: T | T[] | undefined): T[] | undefined {
  if (value === undefined) return undefined;
  return Array.isArray(value) ? value : [value];
}

/**
 * Whether a failed create of a uniquely named resource may have created it all the same: a resend
 * after an unknown outcome was refused as a duplicate name, or a 2xx answer could not be read.
 */
function answerWasLost(err: unknown, outcome: { unknown: boolean }): err is HcloudError {
  return (
    err instanceof HcloudError &&
    ((err.code === 'uniqueness_error' && outcome.unknown) || (err.code === 'invalid_response' && err.status >= 200 && err.status < 300))
  );
}

function sameProgress(a: Action, b: Action): boolean {
  return a.status === b.status && a.progress === b.progress;
}

export class HcloudClient {
  readonly endpoint: string;
  readonly retryPolicy: RetryPolicy;
  readonly actionPollIntervalMs: number;
  readonly requestTimeoutMs: number;
  readonly maxAnswerBytes: number;
  readonly #token: string;
  readonly #userAgent: string;
  readonly #log: Logger;
  readonly #sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  readonly #now: () => number;

  constructor(opts: HcloudClientOptions) {
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
    this.actionPollIntervalMs = opts.actionPollIntervalMs ?? 500;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 30_000;
    this.maxAnswerBytes = opts.maxAnswerBytes ?? MAX_ANSWER_BYTES;
    if (!(this.actionPollIntervalMs > 0)) throw new RangeError('actionPollIntervalMs must be > 0');
    if (!(this.requestTimeoutMs > 0)) throw new RangeError('requestTimeoutMs must be > 0');
    this.#userAgent = opts.userAgent ?? DEFAULT_USER_AGENT;
    this.#log = opts.logger ?? noopLogger;
    this.#sleep = opts.sleep ?? abortableSleep;
    this.#now = opts.now ?? Date.now;
  }

  /** Keeps the token out of `util.inspect`, `console.log` and JSON dumps of the client. */
  toJSON(): Record<string, unknown> {
    return { endpoint: this.endpoint };
  }

  // ---------------------------------------------------------------- servers

  /**
   * `POST /servers`. Retried as `unique_name` (see `retry.ts`): names are unique per project, so
   * resending after an unknown outcome (500/502/504, reset connection, timeout) cannot create a
   * second server. If the resend is answered `uniqueness_error`, the server was most likely made
   * by the lost attempt: it is looked up by name and adopted when its labels include the
   * request's labels and it was created after this call began (15 min margin for clock skew).
   * The adopted answer has the server's real `create_server` action, its later actions as
   * `next_actions`, and `root_password: null`. The same recovery applies to a 201 whose body
   * cannot be read. When no such server is found, the original error is thrown.
   */
  async createServer(req: CreateServerRequest, signal?: AbortSignal): Promise<CreateServerResponse> {
    const startedAt = this.#now();
    const outcome = { unknown: false };
    try {
      const answer = await this.#request('create_server', { method: 'POST', path: '/servers', body: req, signal, replay: 'unique_name', outcome });
      if (!isRecord(answer) || !isRecord(answer.server) || !isRecord(answer.action)) {
        throw this.#invalid('POST', '/servers', 201, 'answer lacks server or action');
      }
      return answer;
    } catch (err) {
      if (!answerWasLost(err, outcome)) throw err;
      const adopted = await this.#adoptServer(req, startedAt, signal);
      if (adopted === undefined) throw err;
      this.#log.warn(
        { serverId: adopted.server.id, name: req.name, code: err.code },
        'adopted the server created by a create request whose answer was lost',
      );
      return adopted;
    }
  }

  async #adoptServer(req: CreateServerRequest, startedAt: number, signal?: AbortSignal): Promise<CreateServerResponse | undefined> {
    const found = (await this.listServers({ name: req.name }, signal)).find((s) => s.name === req.name);
    if (found === undefined) return undefined;
    const labelsMatch = Object.entries(req.labels ?? {}).every(([k, v]) => found.labels[k] === v);
    const created = Date.parse(found.created);
    if (!labelsMatch || !(created >= startedAt - ADOPT_CLOCK_MARGIN_MS)) {
      this.#log.warn({ serverId: found.id, name: req.name, labelsMatch, created: found.created }, 'a server with this name exists but is not the one just requested');
      return undefined;
    }
    const actions = await this.#paginate(
      'list_actions_for_server',
      `/servers/${found.id}/actions`,
      { sort: ['id:asc'] },
      (a) => a.actions,
      signal,
    );
    const create = actions.find((a) => a.command === 'create_server');
    if (create === undefined) return undefined;
    return { server: found, action: create, next_actions: actions.filter((a) => a.id > create.id), root_password: null };
  }

  /** `GET /servers/{id}`; a missing server throws `HcloudError` with code `not_found` (status 404). */
  async getServer(id: number, signal?: AbortSignal): Promise<Server> {
    const path = `/servers/${id}`;
    const answer = await this.#request('get_server', { method: 'GET', path, signal });
    if (answer.server === undefined) throw this.#invalid('GET', path, 200, 'answer lacks server');
    return answer.server;
  }

  /** `GET /servers`, following pagination to the end. */
  async listServers(q: ListServersQuery = {}, signal?: AbortSignal): Promise<Server[]> {
    const query: QueryOf<'list_servers'> = {};
    if (q.labelSelector !== undefined) query.label_selector = q.labelSelector;
    if (q.name !== undefined) query.name = q.name;
    if (q.status !== undefined) query.status = q.status;
    const sort = asArray(q.sort);
    if (sort !== undefined) query.sort = sort;
    return this.#paginate('list_servers', '/servers', query, (a) => a.servers, signal);
  }

  /**
   * `DELETE /servers/{id}`, answering the `delete_server` action. A server already gone throws
   * `not_found` (see `isNotFound`), which callers deleting servers can take as done.
   */
  async deleteServer(id: number, signal?: AbortSignal): Promise<Action> {
    const path = `/servers/${id}`;
    const answer = await this.#request('delete_server', { method: 'DELETE', path, signal });
    if (answer.action === undefined) throw this.#invalid('DELETE', path, 200, 'answer lacks action');
    return answer.action;
  }

  /**
   * Deletes a server and waits for the delete action. Resolves `false` when the server was
   * already gone (404), which for a caller that wants it gone is success too.
   */
  async deleteServerAndWait(id: number, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<boolean> {
    try {
      const action = await this.deleteServer(id, opts.signal);
      await this.waitForActions([action], { timeoutMs: opts.timeoutMs ?? 120_000, ...(opts.signal ? { signal: opts.signal } : {}) });
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  // ---------------------------------------------------------------- actions

  async getAction(id: number, signal?: AbortSignal): Promise<Action> {
    const path = `/actions/${id}`;
    const answer = await this.#request('get_action', { method: 'GET', path, signal });
    if (!isRecord(answer.action)) throw this.#invalid('GET', path, 200, 'answer lacks action');
    return answer.action;
  }

  /**
   * Waits until every action is `success`, polling `GET /actions?id=..&id=..` every
   * `actionPollIntervalMs`. The first action seen in status `error` throws `HcloudError` with the
   * action's error code and message, `status` 0, `action` set and `details`
   * `{actionId, command, resources}`. Answers the actions in their final state, in the given order.
   */
  async waitForActions(actions: Action[], opts: WaitForActionsOptions = {}): Promise<Action[]> {
    const { signal, timeoutMs, onProgress } = opts;
    const deadline = timeoutMs === undefined ? undefined : this.#now() + timeoutMs;
    const latest = new Map<number, Action>();
    for (const action of actions) {
      latest.set(action.id, action);
      this.#throwIfFailed(action);
    }
    const running = (): number[] => [...latest.values()].filter((a) => a.status === 'running').map((a) => a.id);

    for (let ids = running(); ids.length > 0; ids = running()) {
      let wait = this.actionPollIntervalMs;
      if (deadline !== undefined) {
        const left = deadline - this.#now();
        if (left <= 0) {
          throw new HcloudError({
            status: 0,
            code: 'action_wait_timeout',
            message: `actions ${ids.join(', ')} still running after ${timeoutMs} ms`,
            details: { actionIds: ids, commands: ids.map((id) => latest.get(id)?.command) },
          });
        }
        wait = Math.min(wait, left);
      }
      await this.#pause(wait, signal, 'GET', '/actions');
      for (let i = 0; i < ids.length; i += ACTION_IDS_PER_POLL) {
        const chunk = ids.slice(i, i + ACTION_IDS_PER_POLL);
        const answer = await this.#request('get_multiple_actions', { method: 'GET', path: '/actions', query: { id: chunk }, signal });
        if (!Array.isArray(answer.actions)) throw this.#invalid('GET', '/actions', 200, 'answer lacks actions');
        for (const id of chunk) {
          const fresh = answer.actions.find((a) => a.id === id);
          if (fresh === undefined) throw this.#invalid('GET', '/actions', 200, `action ${id} is missing from the answer`);
          const before = latest.get(id);
          latest.set(id, fresh);
          if (before === undefined || !sameProgress(before, fresh)) onProgress?.(fresh);
          this.#throwIfFailed(fresh);
        }
      }
    }
    return actions.map((a) => latest.get(a.id) ?? a);
  }

  #throwIfFailed(action: Action): void {
    if (action.status !== 'error') return;
    throw new HcloudError({
      status: 0,
      code: action.error?.code ?? 'action_failed',
      message: action.error?.message ?? `action ${action.id} (${action.command}) failed`,
      details: { actionId: action.id, command: action.command, resources: action.resources },
      action,
    });
  }

  // ---------------------------------------------------------------- catalogue

  async listServerTypes(signal?: AbortSignal): Promise<ServerType[]> {
    return this.#paginate('list_server_types', '/server_types', {}, (a) => a.server_types, signal);
  }

  async listLocations(signal?: AbortSignal): Promise<Location[]> {
    return this.#paginate('list_locations', '/locations', {}, (a) => a.locations, signal);
  }

  async listImages(q: ListImagesQuery = {}, signal?: AbortSignal): Promise<Image[]> {
    const query: QueryOf<'list_images'> = {};
    const type = asArray(q.type);
    if (type !== undefined) query.type = type;
    const status = asArray(q.status);
    if (status !== undefined) query.status = status;
    if (q.name !== undefined) query.name = q.name;
    if (q.architecture !== undefined) query.architecture = q.architecture;
    if (q.labelSelector !== undefined) query.label_selector = q.labelSelector;
    const sort = asArray(q.sort);
    if (sort !== undefined) query.sort = sort;
    if (q.includeDeprecated !== undefined) query.include_deprecated = q.includeDeprecated;
    return this.#paginate('list_images', '/images', query, (a) => a.images, signal);
  }

  // ---------------------------------------------------------------- server actions
  // Each is a plain POST, so retried only when the failure proves it was not applied (`retry.ts`).

  /**
   * `POST /servers/{id}/actions/enable_rescue`: the next boot goes into the rescue system, with
   * the given project ssh keys (ids) authorized for root.
   */
  async enableRescue(serverId: number, req: EnableRescueRequest, signal?: AbortSignal): Promise<EnableRescueResponse & { action: Action }> {
    const path = `/servers/${serverId}/actions/enable_rescue`;
    const answer = await this.#request('enable_rescue_mode_for_server', { method: 'POST', path, body: req, signal });
    if (!isRecord(answer) || !isRecord(answer.action)) throw this.#invalid('POST', path, 201, 'answer lacks action');
    return answer as EnableRescueResponse & { action: Action };
  }

  /** `POST /servers/{id}/actions/poweron`. */
  async poweron(serverId: number, signal?: AbortSignal): Promise<Action> {
    const path = `/servers/${serverId}/actions/poweron`;
    const answer = await this.#request('power_on_server', { method: 'POST', path, signal });
    if (!isRecord(answer) || !isRecord(answer.action)) throw this.#invalid('POST', path, 201, 'answer lacks action');
    return answer.action;
  }

  /** `POST /servers/{id}/actions/shutdown`: an ACPI shutdown request (the OS must honour it). */
  async shutdown(serverId: number, signal?: AbortSignal): Promise<Action> {
    const path = `/servers/${serverId}/actions/shutdown`;
    const answer = await this.#request('shutdown_server', { method: 'POST', path, signal });
    if (!isRecord(answer) || !isRecord(answer.action)) throw this.#invalid('POST', path, 201, 'answer lacks action');
    return answer.action;
  }

  /** `POST /servers/{id}/actions/poweroff`: cuts the power at once. */
  async poweroff(serverId: number, signal?: AbortSignal): Promise<Action> {
    const path = `/servers/${serverId}/actions/poweroff`;
    const answer = await this.#request('power_off_server', { method: 'POST', path, signal });
    if (!isRecord(answer) || !isRecord(answer.action)) throw this.#invalid('POST', path, 201, 'answer lacks action');
    return answer.action;
  }

  /**
   * `POST /servers/{id}/actions/create_image`. Resent only after a failure that proves it was not
   * applied (429, 409 `conflict`, 503, a connection that never carried it); never after an unknown
   * outcome (500, 502, 504, a connection lost after sending, a timeout): a second request would be
   * a second, billed snapshot. After such a failure the caller has to look for the snapshot
   * itself, e.g. by a label unique to the request (as `image upload` does).
   */
  async createImage(serverId: number, req: CreateImageRequest, signal?: AbortSignal): Promise<{ action: Action; image: Image }> {
    const path = `/servers/${serverId}/actions/create_image`;
    const answer = await this.#request('create_image_from_server', { method: 'POST', path, body: req, signal });
    if (!isRecord(answer) || !isRecord(answer.action) || !isRecord(answer.image)) throw this.#invalid('POST', path, 201, 'answer lacks action or image');
    return answer as Required<CreateImageResponse>;
  }

  // ---------------------------------------------------------------- images

  /** `GET /images/{id}`; a missing image throws `not_found`. */
  async getImage(id: number, signal?: AbortSignal): Promise<Image> {
    const path = `/images/${id}`;
    const answer = await this.#request('get_image', { method: 'GET', path, signal });
    if (!isRecord(answer) || !isRecord(answer.image)) throw this.#invalid('GET', path, 200, 'answer lacks image');
    return answer.image;
  }

  /**
   * `PUT /images/{id}`: sets the description and/or the labels (the labels given replace all of
   * the image's labels). Resent like a GET: the same body applied twice leaves the same image.
   */
  async updateImage(id: number, req: UpdateImageRequest, signal?: AbortSignal): Promise<Image> {
    const path = `/images/${id}`;
    const answer = await this.#request('replace_image', { method: 'PUT', path, body: req, signal, replay: 'idempotent' });
    if (!isRecord(answer) || !isRecord(answer.image)) throw this.#invalid('PUT', path, 200, 'answer lacks image');
    return answer.image;
  }

  /** `DELETE /images/{id}` (snapshots and backups); an image already gone throws `not_found`. */
  async deleteImage(id: number, signal?: AbortSignal): Promise<void> {
    await this.#request('delete_image', { method: 'DELETE', path: `/images/${id}`, signal });
  }

  // ---------------------------------------------------------------- ssh keys

  /**
   * `POST /ssh_keys`. Retried as `unique_name`: key names are unique per project, so a resend
   * cannot make a second key. When the resend is answered `uniqueness_error` after an unknown
   * outcome, the key of that name is adopted if it has the same public key.
   */
  async createSshKey(req: CreateSshKeyRequest, signal?: AbortSignal): Promise<SshKey> {
    const outcome = { unknown: false };
    try {
      const answer = await this.#request('create_ssh_key', { method: 'POST', path: '/ssh_keys', body: req, signal, replay: 'unique_name', outcome });
      if (!isRecord(answer) || !isRecord(answer.ssh_key)) throw this.#invalid('POST', '/ssh_keys', 201, 'answer lacks ssh_key');
      return answer.ssh_key;
    } catch (err) {
      if (!answerWasLost(err, outcome)) throw err;
      const body = (line: string): string => line.trim().split(/\s+/).slice(0, 2).join(' ');
      const found = (await this.listSshKeys({ name: req.name }, signal)).find((k) => k.name === req.name && body(k.public_key) === body(req.public_key));
      if (found === undefined) throw err;
      this.#log.warn({ sshKeyId: found.id, name: req.name, code: err.code }, 'adopted the ssh key created by a request whose answer was lost');
      return found;
    }
  }

  /** `GET /ssh_keys`, following pagination to the end. */
  async listSshKeys(q: ListSshKeysQuery = {}, signal?: AbortSignal): Promise<SshKey[]> {
    const query: QueryOf<'list_ssh_keys'> = {};
    if (q.labelSelector !== undefined) query.label_selector = q.labelSelector;
    if (q.name !== undefined) query.name = q.name;
    if (q.fingerprint !== undefined) query.fingerprint = q.fingerprint;
    const sort = asArray(q.sort);
    if (sort !== undefined) query.sort = sort;
    return this.#paginate('list_ssh_keys', '/ssh_keys', query, (a) => a.ssh_keys, signal);
  }

  /** `DELETE /ssh_keys/{id}`; a key already gone throws `not_found`. */
  async deleteSshKey(id: number, signal?: AbortSignal): Promise<void> {
    await this.#request('delete_ssh_key', { method: 'DELETE', path: `/ssh_keys/${id}`, signal });
  }

  // ---------------------------------------------------------------- volumes

  /**
   * `POST /volumes`: a volume in a location, detached, never automounted. Retried as
   * `unique_name` (volume names are unique per project, so a resend cannot make a second, billed
   * volume); after an unknown outcome answered `uniqueness_error`, the volume of that name is
   * adopted when its location, size and labels are the requested ones and it was created after
   * this call began (15 min margin), with its `create_volume` action and no `next_actions`.
   */
  async createVolume(opts: CreateVolumeOptions, signal?: AbortSignal): Promise<CreateVolumeResponse> {
    const startedAt = this.#now();
    const outcome = { unknown: false };
    const body = {
      name: opts.name,
      size: opts.size,
      location: opts.location,
      labels: opts.labels ?? {},
      ...(opts.format === undefined ? {} : { format: opts.format }),
    };
    try {
      const answer = await this.#request('create_volume', { method: 'POST', path: '/volumes', body, signal, replay: 'unique_name', outcome });
      if (!isRecord(answer) || !isRecord(answer.volume) || !isRecord(answer.action)) throw this.#invalid('POST', '/volumes', 201, 'answer lacks volume or action');
      return answer;
    } catch (err) {
      if (!answerWasLost(err, outcome)) throw err;
      const found = (await this.listVolumes({ name: opts.name }, signal)).find((v) => v.name === opts.name);
      const labelsMatch = found !== undefined && Object.entries(body.labels).every(([k, v]) => found.labels[k] === v);
      const fits =
        found !== undefined &&
        labelsMatch &&
        found.size === opts.size &&
        (found.location.name === opts.location || String(found.location.id) === opts.location) &&
        Date.parse(found.created) >= startedAt - ADOPT_CLOCK_MARGIN_MS;
      if (!fits) throw err;
      const actions = await this.#paginate('list_actions_for_volume', `/volumes/${found.id}/actions`, { sort: ['id:asc'] }, (a) => a.actions, signal);
      const create = actions.find((a) => a.command === 'create_volume');
      if (create === undefined) throw err;
      this.#log.warn({ volumeId: found.id, name: opts.name, code: err.code }, 'adopted the volume created by a create request whose answer was lost');
      return { volume: found, action: create, next_actions: [] };
    }
  }

  /** `GET /volumes/{id}`; a missing volume throws `not_found`. */
  async getVolume(id: number, signal?: AbortSignal): Promise<Volume> {
    const path = `/volumes/${id}`;
    const answer = await this.#request('get_volume', { method: 'GET', path, signal });
    if (!isRecord(answer) || !isRecord(answer.volume)) throw this.#invalid('GET', path, 200, 'answer lacks volume');
    return answer.volume;
  }

  /** `GET /volumes`, following pagination to the end. */
  async listVolumes(q: ListVolumesQuery = {}, signal?: AbortSignal): Promise<Volume[]> {
    const query: QueryOf<'list_volumes'> = {};
    if (q.labelSelector !== undefined) query.label_selector = q.labelSelector;
    if (q.name !== undefined) query.name = q.name;
    if (q.status !== undefined) query.status = q.status;
    const sort = asArray(q.sort);
    if (sort !== undefined) query.sort = sort;
    return this.#paginate('list_volumes', '/volumes', query, (a) => a.volumes, signal);
  }

  /** `PUT /volumes/{id}`: name and/or labels. Resent like a GET: the same body twice leaves the same volume. */
  async updateVolume(id: number, req: UpdateVolumeRequest, signal?: AbortSignal): Promise<Volume> {
    const path = `/volumes/${id}`;
    const answer = await this.#request('replace_volume', { method: 'PUT', path, body: req, signal, replay: 'idempotent' });
    if (!isRecord(answer) || !isRecord(answer.volume)) throw this.#invalid('PUT', path, 200, 'answer lacks volume');
    return answer.volume;
  }

  /**
   * `POST /volumes/{id}/actions/attach`, answering the `attach_volume` action. The server must be
   * in the volume's location (`invalid_input`), the volume attached nowhere (`volume_already_attached`,
   * see `isVolumeAttached`) and idle (423 `locked`). A plain POST: resent only when the failure
   * proves it was not applied.
   */
  async attachVolume(volumeId: number, serverId: number, automount = false, signal?: AbortSignal): Promise<Action> {
    const path = `/volumes/${volumeId}/actions/attach`;
    const answer = await this.#request('attach_volume_to_server', { method: 'POST', path, body: { server: serverId, automount }, signal });
    if (!isRecord(answer) || !isRecord(answer.action)) throw this.#invalid('POST', path, 201, 'answer lacks action');
    return answer.action;
  }

  /** `POST /volumes/{id}/actions/detach`, answering the `detach_volume` action. */
  async detachVolume(volumeId: number, signal?: AbortSignal): Promise<Action> {
    const path = `/volumes/${volumeId}/actions/detach`;
    const answer = await this.#request('detach_volume', { method: 'POST', path, signal });
    if (!isRecord(answer) || !isRecord(answer.action)) throw this.#invalid('POST', path, 201, 'answer lacks action');
    return answer.action;
  }

  /**
   * `DELETE /volumes/{id}`: its data is gone for good. Refused while attached (see
   * `isVolumeAttached`: detach first, or delete the server); a volume already gone throws `not_found`.
   */
  async deleteVolume(id: number, signal?: AbortSignal): Promise<void> {
    await this.#request('delete_volume', { method: 'DELETE', path: `/volumes/${id}`, signal });
  }

  // ---------------------------------------------------------------- pricing

  /**
   * `GET /pricing`: the project's prices (net and gross, its currency and VAT), among them
   * `volume.price_per_gb_month` and `image.price_per_gb_month`.
   */
  async getPricing(signal?: AbortSignal): Promise<Pricing> {
    const answer = await this.#request('list_prices', { method: 'GET', path: '/pricing', signal });
    if (!isRecord(answer) || !isRecord(answer.pricing)) throw this.#invalid('GET', '/pricing', 200, 'answer lacks pricing');
    return answer.pricing;
  }

  // ---------------------------------------------------------------- transport

  async #paginate<Op extends keyof operations, T>(
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
      const answer = await this.#request(op, { method: 'GET', path, query, page, signal });
      const got: unknown = pick(answer);
      if (!Array.isArray(got)) throw this.#invalid('GET', path, 200, `page ${page} lacks its list`);
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
  async #request<Op extends keyof operations>(op: Op, spec: RequestSpec<Op>): Promise<OkAnswer<Op>> {
    const replay = spec.replay ?? replayForMethod(spec.method);
    const policy = this.retryPolicy;
    for (let retry = 0; ; retry++) {
      const result = await this.#attempt<OkAnswer<Op>>(op, spec);
      if (result.ok) return result.data;
      const err = result.error;
      // A retryable failure that does not prove the request was refused may have been applied.
      if (spec.outcome !== undefined && err.retryable && !failureProvesNotApplied(err)) spec.outcome.unknown = true;
      if (retry >= policy.maxRetries || !shouldRetry(err, replay)) throw err;
      const fromHeader = err.status === 429 ? rateLimitDelay(result.rateLimitReset, this.#now(), policy) : undefined;
      const delayMs = fromHeader ?? backoffDelay(policy, retry);
      this.#log.warn(
        { op, method: spec.method, path: spec.path, status: err.status, code: err.code, requestId: err.requestId, retry: retry + 1, delayMs },
        'Hetzner Cloud API request failed, retrying',
      );
      await this.#pause(delayMs, spec.signal, spec.method, spec.path);
    }
  }

  async #attempt<T>(op: keyof operations, spec: RequestSpec<keyof operations>): Promise<AttemptResult<T>> {
    const { method, path } = spec;
    const userSignal = spec.signal;
    if (userSignal?.aborted) return { ok: false, error: this.#aborted(method, path, userSignal), rateLimitReset: null };

    const params = new URLSearchParams();
    if (spec.query !== undefined) {
      for (const [key, value] of Object.entries(spec.query as object)) {
        for (const item of asArray<unknown>(value) ?? []) {
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
    const started = this.#now();
    let status = 0;
    let requestId: string | undefined;
    let rateLimitReset: string | null = null;
    let text: string;
    try {
      const res = await fetch(url, { method, headers, body: body ?? null, signal });
      status = res.status;
      requestId = res.headers.get('x-correlation-id') ?? undefined;
      rateLimitReset = res.headers.get('ratelimit-reset');
      this.#log.debug(
        { op, method, path, status, requestId, ms: this.#now() - started, rateLimitRemaining: res.headers.get('ratelimit-remaining') ?? undefined },
        'Hetzner Cloud API answer',
      );
      text = await readLimited(res, this.maxAnswerBytes);
    } catch (cause) {
      let error: HcloudError;
      if (cause instanceof AnswerTooLarge) {
        error = this.#invalid(method, path, status, cause.message, requestId);
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
      const error = this.#invalid(method, path, status, 'answer is not JSON', requestId, cause);
      return { ok: false, error, rateLimitReset: null };
    }
  }

  /** Sleeps between attempts or polls; an abort turns into `HcloudError` code `aborted`. */
  async #pause(ms: number, signal: AbortSignal | undefined, method: string, path: string): Promise<void> {
    try {
      await this.#sleep(ms, signal);
    } catch (err) {
      if (signal?.aborted) throw this.#aborted(method, path, signal);
      throw err;
    }
    if (signal?.aborted) throw this.#aborted(method, path, signal);
  }

  #aborted(method: string, path: string, signal: AbortSignal): HcloudError {
    return new HcloudError({ status: 0, code: 'aborted', message: `Hetzner Cloud API request aborted (${method} ${path})`, method, path, cause: signal.reason });
  }

  #invalid(method: string, path: string, status: number, why: string, requestId?: string, cause?: unknown): HcloudError {
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
