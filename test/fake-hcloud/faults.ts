// Faults on demand: errors the API answers instead of the real answer (`inject`), the same for the
// metadata service (`injectMetadata`), and how the next servers behave (`behaveNext`).

/**
 * "This answer from the metadata service for the next N matching requests": an HTTP status
 * and body instead of the real answer, or a dropped connection.
 */
export interface MetadataFault {
  /** Only requests of this server; any server when absent. */
  server?: number;
  /** Path below /hetzner/v1, e.g. "/userdata"; any when absent. */
  path?: string | RegExp;
  /** How many matching requests get the fault, default 1 (Infinity: all). */
  times?: number;
  /** Default 200. */
  status?: number;
  /** Default: empty. */
  body?: string;
  /** Destroy the socket instead of answering. */
  networkError?: boolean;
}

/** "A given error for the next N matching requests." */
export interface Fault {
  /** Request method; any when absent. */
  method?: string;
  /** Path relative to /v1 without the query, e.g. "/servers" or /^\/servers\/\d+$/. */
  path: string | RegExp;
  /** How many matching requests get the fault, default 1. */
  times?: number;
  status?: number;
  code?: string;
  message?: string;
  details?: unknown;
  headers?: Record<string, string>;
  /** Destroy the socket instead of answering. */
  networkError?: boolean;
  /** Answer late (with the real answer, unless status is given). */
  delayMs?: number;
  /** Carry the request out first, then replace its answer by the fault (an answer lost on the way back). */
  afterHandling?: boolean;
}

/** `ignores-shutdown`: the OS ignores ACPI; `shutdown` succeeds at once (request delivered) and the server keeps running. */
export type ServerBehaviour =
  'normal' | 'never-running' | 'no-sshd' | 'wrong-host-key' | 'never-ready' | 'action-error' | 'ignores-shutdown';

const DEFAULT_ERROR_CODES: Record<number, string> = {
  400: 'invalid_input',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  409: 'conflict',
  412: 'resource_unavailable',
  422: 'invalid_input',
  423: 'locked',
  429: 'rate_limit_exceeded',
  500: 'server_error',
  502: 'server_error',
  503: 'unavailable',
  504: 'timeout',
};

/** The error answer of a fault that has a status: its code, or the usual one for the status. */
export function faultAnswer(fault: Fault): { status: number; body: unknown } {
  const status = fault.status ?? 500;
  const body = {
    error: {
      code: fault.code ?? DEFAULT_ERROR_CODES[status] ?? (status >= 500 ? 'server_error' : 'invalid_input'),
      message: fault.message ?? `injected ${status}`,
      details: fault.details === undefined ? null : fault.details,
    },
  };
  return { status, body };
}

export class Faults {
  private readonly api: (Fault & { left: number })[] = [];
  private readonly metadata: (MetadataFault & { left: number })[] = [];
  private readonly behaviours: ServerBehaviour[] = [];

  /** Adds a fault; returns a function that withdraws what is left of it. */
  inject(fault: Fault): () => void {
    const entry = { ...fault, left: fault.times ?? 1 };
    this.api.push(entry);
    return () => {
      entry.left = 0;
    };
  }

  /** The fault for this API request, if one is left (it counts as used). */
  takeApi(method: string, path: string): Fault | null {
    for (const f of this.api) {
      if (f.left <= 0) continue;
      if (f.method && f.method.toUpperCase() !== method) continue;
      if (typeof f.path === 'string' ? f.path !== path : !f.path.test(path)) continue;
      f.left--;
      return f;
    }
    return null;
  }

  injectMetadata(fault: MetadataFault): void {
    this.metadata.push({ ...fault, left: fault.times ?? 1 });
  }

  /** The fault for this metadata request of server `id`, if one is left (it counts as used). */
  takeMetadata(id: number, path: string): MetadataFault | null {
    const fault = this.metadata.find(
      (f) =>
        f.left > 0 &&
        (f.server === undefined || f.server === id) &&
        (f.path === undefined || (typeof f.path === 'string' ? f.path === path : f.path.test(path))),
    );
    if (fault) fault.left--;
    return fault ?? null;
  }

  behaveNext(behaviour: ServerBehaviour, count: number): void {
    for (let i = 0; i < count; i++) this.behaviours.push(behaviour);
  }

  /** How the server being created behaves. */
  nextBehaviour(): ServerBehaviour {
    return this.behaviours.shift() ?? 'normal';
  }
}
