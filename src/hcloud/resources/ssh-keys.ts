/**
 * Project SSH keys: create (adopting one whose answer was lost), get, list, update, delete. Part of `HcloudClient`.
 */
import { isRecord, listQuery, type Transport } from '../transport.js';
import type { CreateSshKeyRequest, ListSshKeysQuery, SshKey, UpdateSshKeyRequest } from '../types.js';
import { answerWasLost } from './adopt.js';

export abstract class SshKeyCalls {
  /** Provided by `HcloudClient`: every call goes through it. */
  declare readonly transport: Transport;

  /**
   * `POST /ssh_keys`. Retried as `unique_name`: key names are unique per project, so a resend
   * cannot make a second key. When the resend is answered `uniqueness_error` after an unknown
   * outcome, the key of that name is adopted if it has the same public key.
   */
  async createSshKey(req: CreateSshKeyRequest, signal?: AbortSignal): Promise<SshKey> {
    const outcome = { unknown: false };
    try {
      const answer = await this.transport.request('create_ssh_key', {
        method: 'POST',
        path: '/ssh_keys',
        body: req,
        signal,
        replay: 'unique_name',
        outcome,
      });
      if (!isRecord(answer) || !isRecord(answer.ssh_key)) throw this.transport.invalid('POST', '/ssh_keys', 201, 'answer lacks ssh_key');
      return answer.ssh_key;
    } catch (err) {
      if (!answerWasLost(err, outcome)) throw err;
      const body = (line: string): string => line.trim().split(/\s+/).slice(0, 2).join(' ');
      const found = (await this.listSshKeys({ name: req.name }, signal)).find(
        (k) => k.name === req.name && body(k.public_key) === body(req.public_key),
      );
      if (found === undefined) throw err;
      this.transport.log.warn(
        { sshKeyId: found.id, name: req.name, code: err.code },
        'adopted the ssh key created by a request whose answer was lost',
      );
      return found;
    }
  }

  /** `GET /ssh_keys`, following pagination to the end. */
  async listSshKeys(q: ListSshKeysQuery = {}, signal?: AbortSignal): Promise<SshKey[]> {
    return this.transport.paginate('list_ssh_keys', '/ssh_keys', listQuery<'list_ssh_keys'>(q), (a) => a.ssh_keys, signal);
  }

  /** `GET /ssh_keys/{id}`; a missing key throws `not_found`. */
  async getSshKey(id: number, signal?: AbortSignal): Promise<SshKey> {
    const path = `/ssh_keys/${id}`;
    const answer = await this.transport.request('get_ssh_key', { method: 'GET', path, signal });
    if (!isRecord(answer) || !isRecord(answer.ssh_key)) throw this.transport.invalid('GET', path, 200, 'answer lacks ssh_key');
    return answer.ssh_key;
  }

  /** `PUT /ssh_keys/{id}`: name and/or labels (labels replace the old ones). Resent like a GET: the same body twice leaves the same key. */
  async updateSshKey(id: number, req: UpdateSshKeyRequest, signal?: AbortSignal): Promise<SshKey> {
    const path = `/ssh_keys/${id}`;
    const answer = await this.transport.request('replace_ssh_key', { method: 'PUT', path, body: req, signal, replay: 'idempotent' });
    if (!isRecord(answer) || !isRecord(answer.ssh_key)) throw this.transport.invalid('PUT', path, 200, 'answer lacks ssh_key');
    return answer.ssh_key;
  }

  /** `DELETE /ssh_keys/{id}`; a key already gone throws `not_found`. */
  async deleteSshKey(id: number, signal?: AbortSignal): Promise<void> {
    await this.transport.request('delete_ssh_key', { method: 'DELETE', path: `/ssh_keys/${id}`, signal });
  }
}
