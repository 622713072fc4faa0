// The project's SSH keys (`/ssh_keys`): the keys a rescue system lets in.

import { createHash } from 'node:crypto';
import ssh2, { type ParsedKey } from 'ssh2';
import type { components } from '../../src/hcloud/openapi.js';
import { ApiError, invalidInput, iso } from './api.js';
import type { Router } from './http.js';
import { checkLabels, byId, jsonBody, paginate, selector, sorter, type Answer, type RequestContext } from './request.js';

type Schemas = components['schemas'];
export type SshKey = Schemas['ssh_key'];

export class SshKeys {
  private readonly keys = new Map<number, SshKey>();
  private nextId = 9_000_001;

  constructor(private readonly apiDate: Date) {}

  get(id: number): SshKey | undefined {
    return this.keys.get(id);
  }

  /** The project's ssh keys, as the API lists them. */
  all(): SshKey[] {
    return [...this.keys.values()].map((k) => ({ ...k, labels: { ...k.labels } }));
  }

  routes(router: Router): void {
    router.add('GET', '/ssh_keys', (c) => this.listRoute(c));
    router.add('POST', '/ssh_keys', (c) => this.createRoute(c));
    router.add('GET', '/ssh_keys/{id}', (c) => ({ status: 200, body: { ssh_key: byId([...this.keys.values()], c, 'SSH key') } }));
    router.add('PUT', '/ssh_keys/{id}', (c) => this.updateRoute(c));
    router.add('DELETE', '/ssh_keys/{id}', (c) => {
      const key = byId([...this.keys.values()], c, 'SSH key');
      this.keys.delete(key.id);
      return { status: 204, body: null };
    });
  }

  private listRoute(c: RequestContext): Answer {
    const name = c.query.get('name');
    const fingerprint = c.query.get('fingerprint');
    const sel = selector(c.query);
    const items = [...this.keys.values()]
      .filter(
        (k) =>
          (name === null || k.name === name) && (fingerprint === null || k.fingerprint === fingerprint) && (sel === null || sel(k.labels)),
      )
      .sort(sorter(c.query, ['id', 'name']));
    const p = paginate(items, c.query);
    return { status: 200, body: { ssh_keys: p.items, meta: p.meta } };
  }

  /** `PUT /ssh_keys/{id}`: name and/or labels (labels replaced as a whole, as the API does). */
  private updateRoute(c: RequestContext): Answer {
    const key = byId([...this.keys.values()], c, 'SSH key');
    const req = jsonBody(c, this.apiDate) as Schemas['replace_ssh_key_request'];
    if (req.labels !== undefined) {
      checkLabels(req.labels);
    }
    if (req.name !== undefined && req.name !== key.name && [...this.keys.values()].some((k) => k.name === req.name)) {
      throw new ApiError(409, 'uniqueness_error', 'SSH key with the same name already exists', { fields: [{ name: 'name' }] });
    }
    if (req.name !== undefined) key.name = req.name;
    if (req.labels !== undefined) key.labels = { ...req.labels };
    return { status: 200, body: { ssh_key: key } };
  }

  private createRoute(c: RequestContext): Answer {
    const req = jsonBody(c, this.apiDate) as Schemas['create_ssh_key_request'];
    const parsed = ssh2.utils.parseKey(req.public_key);
    const key = Array.isArray(parsed) ? (parsed[0] as ParsedKey | undefined) : parsed;
    if (key === undefined || key instanceof Error || key.isPrivateKey()) {
      throw invalidInput(`invalid input in field 'public_key'`, [{ name: 'public_key', messages: ['is not a valid SSH public key'] }]);
    }
    const labels = req.labels ?? {};
    checkLabels(labels);
    const fingerprint = (createHash('md5').update(key.getPublicSSH()).digest('hex').match(/../g) ?? []).join(':');
    for (const k of this.keys.values()) {
      if (k.name === req.name)
        throw new ApiError(409, 'uniqueness_error', 'SSH key with the same name already exists', { fields: [{ name: 'name' }] });
      if (k.fingerprint === fingerprint) {
        throw new ApiError(409, 'uniqueness_error', 'SSH key with the same fingerprint already exists', {
          fields: [{ name: 'public_key' }],
        });
      }
    }
    const sshKey: SshKey = {
      id: this.nextId++,
      name: req.name,
      fingerprint,
      public_key: req.public_key.trim(),
      labels: { ...labels },
      created: iso(new Date()),
    };
    this.keys.set(sshKey.id, sshKey);
    return { status: 201, body: { ssh_key: sshKey } };
  }
}
