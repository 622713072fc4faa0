// The fake metadata service. The real one (http://169.254.169.254/hetzner/v1/...) knows the
// asking server by its address; here the server is in the path: /metadata/<id>/hetzner/v1/...,
// served by the API's HTTP server outside /v1 (no token, no rate limit, no OpenAPI check).

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Faults } from './faults.js';
import type { ResolvedOptions } from './options.js';
import type { ServerTable } from './server-record.js';

/** Base URL of the fake metadata service for one server of the API at `apiUrl`: append e.g. "/userdata". */
export function metadataBase(apiUrl: string, serverId: number): string {
  return `${apiUrl.replace(/\/v1$/, '')}/metadata/${serverId}/hetzner/v1`;
}

export class MetadataService {
  /** Requests to the fake metadata service (path below /hetzner/v1; status 0: dropped). */
  readonly requests: { server: number; path: string; status: number }[] = [];

  constructor(
    private readonly opts: ResolvedOptions,
    private readonly servers: ServerTable,
    private readonly faults: Faults,
  ) {}

  /**
   * The fake metadata service. The real one (http://169.254.169.254/hetzner/v1/...) knows the
   * asking server by its address; here the server is in the path: /metadata/<id>/hetzner/v1/...
   * Plain text, no token, no rate limit; 404 for unknown or deleted servers and other paths.
   */
  private metadataAnswer(id: number, path: string): { status: number; body: string; type: string } {
    const s = this.servers.get(id);
    const notFound = { status: 404, body: 'not found\n', type: 'text/plain' };
    if (!s || s.deleted) return notFound;
    const fields: Record<string, string> = {
      'availability-zone': s.datacenter.name,
      hostname: s.name,
      'instance-id': String(s.id),
      'public-ipv4': s.ipv4Enabled ? s.address : '',
      region: s.location.network_zone,
    };
    if (path === '/userdata') return { status: 200, body: s.userData ?? '', type: 'text/plain' };
    if (path === '/metadata') {
      const yaml = Object.entries(fields)
        .map(([k, v]) => `${k}: ${v === '' ? "''" : v}`)
        .join('\n');
      return { status: 200, body: `${yaml}\n`, type: 'text/yaml' };
    }
    const key = /^\/metadata\/([a-z0-9-]+)$/.exec(path)?.[1];
    if (key !== undefined && key in fields) return { status: 200, body: fields[key] ?? '', type: 'text/plain' };
    return notFound;
  }

  handle(req: IncomingMessage, res: ServerResponse, id: number, path: string): void {
    const method = (req.method ?? 'GET').toUpperCase();
    const record = (status: number) => {
      this.requests.push({ server: id, path, status });
      if (this.opts.logRequests) this.opts.log(`metadata of server ${id}: ${method} ${path} -> ${status === 0 ? 'network error' : status}`);
    };
    const fault = this.faults.takeMetadata(id, path);
    if (fault?.networkError) {
      record(0);
      req.socket.destroy();
      return;
    }
    const answer = fault
      ? { status: fault.status ?? 200, body: fault.body ?? '', type: 'text/plain' }
      : method === 'GET' || method === 'HEAD'
        ? this.metadataAnswer(id, path)
        : { status: 405, body: 'method not allowed\n', type: 'text/plain' };
    record(answer.status);
    res.writeHead(answer.status, { 'Content-Type': answer.type, 'Content-Length': String(Buffer.byteLength(answer.body)) });
    res.end(method === 'HEAD' ? undefined : answer.body);
  }
}
