/**
 * Volumes (block storage): create (adopting one whose answer was lost), get, list, update, attach,
 * detach, delete. Part of `HcloudClient`.
 */
import { isRecord, listQuery, type Transport } from '../transport.js';
import type { Action, CreateVolumeOptions, CreateVolumeResponse, ListVolumesQuery, UpdateVolumeRequest, Volume } from '../types.js';
import { ADOPT_CLOCK_MARGIN_MS, answerWasLost } from './adopt.js';

export abstract class VolumeCalls {
  /** Provided by `HcloudClient`: every call goes through it. */
  declare readonly transport: Transport;

  /**
   * `POST /volumes`: a volume in a location, detached, never automounted. Retried as
   * `unique_name` (volume names are unique per project, so a resend cannot make a second, billed
   * volume); after an unknown outcome answered `uniqueness_error`, the volume of that name is
   * adopted when its location, size and labels are the requested ones and it was created after
   * this call began (15 min margin), with its `create_volume` action and no `next_actions`.
   */
  async createVolume(opts: CreateVolumeOptions, signal?: AbortSignal): Promise<CreateVolumeResponse> {
    const startedAt = this.transport.now();
    const outcome = { unknown: false };
    const body = {
      name: opts.name,
      size: opts.size,
      location: opts.location,
      labels: opts.labels ?? {},
      ...(opts.format === undefined ? {} : { format: opts.format }),
    };
    try {
      const answer = await this.transport.request('create_volume', {
        method: 'POST',
        path: '/volumes',
        body,
        signal,
        replay: 'unique_name',
        outcome,
      });
      if (!isRecord(answer) || !isRecord(answer.volume) || !isRecord(answer.action))
        throw this.transport.invalid('POST', '/volumes', 201, 'answer lacks volume or action');
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
      const actions = await this.transport.paginate(
        'list_actions_for_volume',
        `/volumes/${found.id}/actions`,
        { sort: ['id:asc'] },
        (a) => a.actions,
        signal,
      );
      const create = actions.find((a) => a.command === 'create_volume');
      if (create === undefined) throw err;
      this.transport.log.warn(
        { volumeId: found.id, name: opts.name, code: err.code },
        'adopted the volume created by a create request whose answer was lost',
      );
      return { volume: found, action: create, next_actions: [] };
    }
  }

  /** `GET /volumes/{id}`; a missing volume throws `not_found`. */
  async getVolume(id: number, signal?: AbortSignal): Promise<Volume> {
    const path = `/volumes/${id}`;
    const answer = await this.transport.request('get_volume', { method: 'GET', path, signal });
    if (!isRecord(answer) || !isRecord(answer.volume)) throw this.transport.invalid('GET', path, 200, 'answer lacks volume');
    return answer.volume;
  }

  /** `GET /volumes`, following pagination to the end. */
  async listVolumes(q: ListVolumesQuery = {}, signal?: AbortSignal): Promise<Volume[]> {
    return this.transport.paginate('list_volumes', '/volumes', listQuery<'list_volumes'>(q), (a) => a.volumes, signal);
  }

  /** `PUT /volumes/{id}`: name and/or labels. Resent like a GET: the same body twice leaves the same volume. */
  async updateVolume(id: number, req: UpdateVolumeRequest, signal?: AbortSignal): Promise<Volume> {
    const path = `/volumes/${id}`;
    const answer = await this.transport.request('replace_volume', { method: 'PUT', path, body: req, signal, replay: 'idempotent' });
    if (!isRecord(answer) || !isRecord(answer.volume)) throw this.transport.invalid('PUT', path, 200, 'answer lacks volume');
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
    const answer = await this.transport.request('attach_volume_to_server', {
      method: 'POST',
      path,
      body: { server: serverId, automount },
      signal,
    });
    if (!isRecord(answer) || !isRecord(answer.action)) throw this.transport.invalid('POST', path, 201, 'answer lacks action');
    return answer.action;
  }

  /** `POST /volumes/{id}/actions/detach`, answering the `detach_volume` action. */
  async detachVolume(volumeId: number, signal?: AbortSignal): Promise<Action> {
    const path = `/volumes/${volumeId}/actions/detach`;
    const answer = await this.transport.request('detach_volume', { method: 'POST', path, signal });
    if (!isRecord(answer) || !isRecord(answer.action)) throw this.transport.invalid('POST', path, 201, 'answer lacks action');
    return answer.action;
  }

  /**
   * `DELETE /volumes/{id}`: its data is gone for good. Refused while attached (see
   * `isVolumeAttached`: detach first, or delete the server); a volume already gone throws `not_found`.
   */
  async deleteVolume(id: number, signal?: AbortSignal): Promise<void> {
    await this.transport.request('delete_volume', { method: 'DELETE', path: `/volumes/${id}`, signal });
  }
}
