/**
 * Servers: create (adopting one whose answer was lost), get, list, delete, and the server actions
 * (rescue, power, snapshot). Part of `HcloudClient`.
 */
import { isNotFound } from '../errors.js';
import { isRecord, listQuery, type Transport } from '../transport.js';
import type { WaitForActionsOptions } from '../actions.js';
import type {
  Action,
  CreateImageRequest,
  CreateImageResponse,
  CreateServerRequest,
  CreateServerResponse,
  EnableRescueRequest,
  EnableRescueResponse,
  Image,
  ListServersQuery,
  Server,
} from '../types.js';
import { ADOPT_CLOCK_MARGIN_MS, answerWasLost } from './adopt.js';

export abstract class ServerCalls {
  /** Provided by `HcloudClient`: every call goes through it. */
  declare readonly transport: Transport;

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
    const startedAt = this.transport.now();
    const outcome = { unknown: false };
    try {
      const answer = await this.transport.request('create_server', {
        method: 'POST',
        path: '/servers',
        body: req,
        signal,
        replay: 'unique_name',
        outcome,
      });
      if (!isRecord(answer) || !isRecord(answer.server) || !isRecord(answer.action)) {
        throw this.transport.invalid('POST', '/servers', 201, 'answer lacks server or action');
      }
      return answer;
    } catch (err) {
      if (!answerWasLost(err, outcome)) throw err;
      const adopted = await this.adoptServer(req, startedAt, signal);
      if (adopted === undefined) throw err;
      this.transport.log.warn(
        { serverId: adopted.server.id, name: req.name, code: err.code },
        'adopted the server created by a create request whose answer was lost',
      );
      return adopted;
    }
  }

  private async adoptServer(req: CreateServerRequest, startedAt: number, signal?: AbortSignal): Promise<CreateServerResponse | undefined> {
    const found = (await this.listServers({ name: req.name }, signal)).find((s) => s.name === req.name);
    if (found === undefined) return undefined;
    const labelsMatch = Object.entries(req.labels ?? {}).every(([k, v]) => found.labels[k] === v);
    const created = Date.parse(found.created);
    if (!labelsMatch || !(created >= startedAt - ADOPT_CLOCK_MARGIN_MS)) {
      this.transport.log.warn(
        { serverId: found.id, name: req.name, labelsMatch, created: found.created },
        'a server with this name exists but is not the one just requested',
      );
      return undefined;
    }
    const actions = await this.transport.paginate(
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
    const answer = await this.transport.request('get_server', { method: 'GET', path, signal });
    if (answer.server === undefined) throw this.transport.invalid('GET', path, 200, 'answer lacks server');
    return answer.server;
  }

  /** `GET /servers`, following pagination to the end. */
  async listServers(q: ListServersQuery = {}, signal?: AbortSignal): Promise<Server[]> {
    return this.transport.paginate('list_servers', '/servers', listQuery<'list_servers'>(q), (a) => a.servers, signal);
  }

  /**
   * `DELETE /servers/{id}`, answering the `delete_server` action. A server already gone throws
   * `not_found` (see `isNotFound`), which callers deleting servers can take as done.
   */
  async deleteServer(id: number, signal?: AbortSignal): Promise<Action> {
    const path = `/servers/${id}`;
    const answer = await this.transport.request('delete_server', { method: 'DELETE', path, signal });
    if (answer.action === undefined) throw this.transport.invalid('DELETE', path, 200, 'answer lacks action');
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

  // Server actions: each is a plain POST, so retried only when the failure proves it was not applied (`retry.ts`).

  /**
   * `POST /servers/{id}/actions/enable_rescue`: the next boot goes into the rescue system, with
   * the given project ssh keys (ids) authorized for root.
   */
  async enableRescue(serverId: number, req: EnableRescueRequest, signal?: AbortSignal): Promise<EnableRescueResponse & { action: Action }> {
    const path = `/servers/${serverId}/actions/enable_rescue`;
    const answer = await this.transport.request('enable_rescue_mode_for_server', { method: 'POST', path, body: req, signal });
    if (!isRecord(answer) || !isRecord(answer.action)) throw this.transport.invalid('POST', path, 201, 'answer lacks action');
    return answer as EnableRescueResponse & { action: Action };
  }

  /** `POST /servers/{id}/actions/poweron`. */
  async poweron(serverId: number, signal?: AbortSignal): Promise<Action> {
    const path = `/servers/${serverId}/actions/poweron`;
    const answer = await this.transport.request('power_on_server', { method: 'POST', path, signal });
    if (!isRecord(answer) || !isRecord(answer.action)) throw this.transport.invalid('POST', path, 201, 'answer lacks action');
    return answer.action;
  }

  /** `POST /servers/{id}/actions/shutdown`: an ACPI shutdown request (the OS must honour it). */
  async shutdown(serverId: number, signal?: AbortSignal): Promise<Action> {
    const path = `/servers/${serverId}/actions/shutdown`;
    const answer = await this.transport.request('shutdown_server', { method: 'POST', path, signal });
    if (!isRecord(answer) || !isRecord(answer.action)) throw this.transport.invalid('POST', path, 201, 'answer lacks action');
    return answer.action;
  }

  /** `POST /servers/{id}/actions/poweroff`: cuts the power at once. */
  async poweroff(serverId: number, signal?: AbortSignal): Promise<Action> {
    const path = `/servers/${serverId}/actions/poweroff`;
    const answer = await this.transport.request('power_off_server', { method: 'POST', path, signal });
    if (!isRecord(answer) || !isRecord(answer.action)) throw this.transport.invalid('POST', path, 201, 'answer lacks action');
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
    const answer = await this.transport.request('create_image_from_server', { method: 'POST', path, body: req, signal });
    if (!isRecord(answer) || !isRecord(answer.action) || !isRecord(answer.image))
      throw this.transport.invalid('POST', path, 201, 'answer lacks action or image');
    return answer as Required<CreateImageResponse>;
  }

  /** Provided by `HcloudClient` (`actions.ts`). */
  abstract waitForActions(actions: Action[], opts?: WaitForActionsOptions): Promise<Action[]>;
}
