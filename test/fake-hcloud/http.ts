// The fake API's HTTP side: the routes (openapi.json's path templates, each with the room's
// handler), and the answering of one request: token, rate limit, injected faults, errors as the
// API writes them, and every JSON answer checked against openapi.json for the API's day.
// Requests to the metadata service (`/metadata/<id>/hetzner/v1/...`) go to its own handler.

import type { IncomingMessage, ServerResponse } from 'node:http';
import { ApiError } from './api.js';
import { faultAnswer, type Fault, type Faults } from './faults.js';
import { checkResponse, checkSchema, withoutRemoved } from './openapi.js';
import type { ResolvedOptions } from './options.js';
import type { RateLimit } from './rate-limit.js';
import type { Answer, RequestContext } from './request.js';
import type { Timers } from './timers.js';

type Handler = (ctx: RequestContext) => Answer | Promise<Answer>;

interface Route {
  method: string;
  template: string;
  re: RegExp;
  names: string[];
  handler: Handler;
}

export class Router {
  private readonly routes: Route[] = [];

  /** `template` as openapi.json writes it, e.g. "/servers/{id}/actions/{action_id}" (ids are numbers). */
  add(method: string, template: string, handler: Handler): void {
    const names: string[] = [];
    const re = new RegExp(
      '^' +
        template.replace(/\{(\w+)\}/g, (_m, n: string) => {
          names.push(n);
          return '(\\d+)';
        }) +
        '$',
    );
    this.routes.push({ method, template, re, names, handler });
  }

  /** The route of this request, with its template and ids put into `ctx`; null when none. */
  match(method: string, path: string, ctx: RequestContext): Route | null {
    for (const r of this.routes) {
      if (r.method !== method) continue;
      const m = r.re.exec(path);
      if (!m) continue;
      ctx.template = r.template;
      r.names.forEach((n, i) => (ctx.params[n] = Number(m[i + 1])));
      return r;
    }
    return null;
  }

  operations(): { method: string; template: string }[] {
    return this.routes.map(({ method, template }) => ({ method, template }));
  }
}

/** Answers a metadata request of server `id` (`path` below /hetzner/v1). */
type MetadataHandler = (req: IncomingMessage, res: ServerResponse, id: number, path: string) => void;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class HttpApi {
  readonly requests: { method: string; path: string; status: number }[] = [];
  readonly schemaErrors: string[] = [];

  constructor(
    private readonly opts: ResolvedOptions,
    private readonly timers: Timers,
    private readonly router: Router,
    private readonly faults: Faults,
    private readonly rateLimit: RateLimit,
    private readonly metadata: MetadataHandler,
  ) {}

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = Date.now();
    const url = new URL(req.url ?? '/', 'http://fake');
    const method = (req.method ?? 'GET').toUpperCase();
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString('utf8');
    const meta = /^\/metadata\/(\d+)\/hetzner\/v1(\/.*)$/.exec(url.pathname);
    if (meta) {
      if (this.timers.stopping) res.destroy();
      else this.metadata(req, res, Number(meta[1]), meta[2] as string);
      return;
    }
    const inApi = url.pathname === '/v1' || url.pathname.startsWith('/v1/');
    const path = inApi ? url.pathname.slice(3) || '/' : url.pathname;
    const ctx: RequestContext = { method, path, query: url.searchParams, body, template: null, params: {} };
    const route = inApi ? this.router.match(method, path, ctx) : null;

    const record = (status: number) => {
      this.requests.push({ method, path, status });
      if (this.opts.logRequests) {
        const q = url.search ? url.search : '';
        this.opts.log(`${method} /v1${path}${q} -> ${status === 0 ? 'network error' : status} (${Date.now() - started} ms)`);
      }
    };

    const fault = inApi ? this.faults.takeApi(method, path) : null;
    if (fault?.delayMs) await sleep(fault.delayMs);
    if (this.timers.stopping) {
      res.destroy();
      return;
    }
    if (fault && !fault.afterHandling && this.answerWithFault(fault, req, res, ctx, record)) return;

    let answer: Answer;
    try {
      if (!inApi) throw new ApiError(404, 'not_found', `${path} not found`);
      if (req.headers.authorization !== `Bearer ${this.opts.token}`) {
        throw new ApiError(401, 'unauthorized', 'unable to authenticate');
      }
      if (!this.rateLimit.take()) throw new ApiError(429, 'rate_limit_exceeded', 'limit of requests per hour reached');
      if (!route) throw new ApiError(404, 'not_found', `${method} /v1${path} not found`);
      answer = await route.handler(ctx);
    } catch (e) {
      if (!(e instanceof ApiError)) {
        this.opts.log(`internal error on ${method} ${path}: ${(e as Error).stack ?? String(e)}`);
      }
      const err = e instanceof ApiError ? e : new ApiError(500, 'server_error', 'internal server error');
      answer = { status: err.status, body: { error: { code: err.code, message: err.message, details: err.details } } };
    }

    if (fault?.afterHandling && this.answerWithFault(fault, req, res, ctx, record)) return;
    this.send(res, ctx, answer, fault?.headers ?? {}, record);
  }

  /** Answers with the fault (a dropped connection or an error) when it has one; false when it only delays. */
  private answerWithFault(
    fault: Fault,
    req: IncomingMessage,
    res: ServerResponse,
    ctx: RequestContext,
    record: (s: number) => void,
  ): boolean {
    if (fault.networkError) {
      record(0);
      req.socket.destroy();
      return true;
    }
    if (fault.status !== undefined) {
      this.send(res, ctx, faultAnswer(fault), fault.headers ?? {}, record);
      return true;
    }
    return false;
  }

  private send(
    res: ServerResponse,
    ctx: RequestContext,
    answer: Answer,
    extraHeaders: Record<string, string>,
    record: (s: number) => void,
  ): void {
    // The API of the fake's day: what it no longer sends is left out.
    const body =
      ctx.template === null || answer.status === 204
        ? answer.body
        : withoutRemoved(ctx.method, ctx.template, answer.status, answer.body, this.opts.apiDate);
    if (this.opts.validateResponses) {
      const problem =
        ctx.template !== null
          ? checkResponse(ctx.method, ctx.template, answer.status, answer.status === 204 ? undefined : body, this.opts.apiDate)
          : checkSchema('error_response', body, this.opts.apiDate);
      if (problem !== null) {
        this.schemaErrors.push(problem);
        this.opts.log(`schema mismatch: ${problem}`);
      }
    }
    if (answer.status === 204) {
      record(204);
      res.writeHead(204, { ...this.rateLimit.headers(), ...(answer.headers ?? {}), ...extraHeaders });
      res.end();
      return;
    }
    const text = JSON.stringify(body);
    const headers: Record<string, string> = {
      'Content-Type': 'application/json',
      'Content-Length': String(Buffer.byteLength(text)),
      ...this.rateLimit.headers(),
      ...(answer.headers ?? {}),
      ...extraHeaders,
    };
    record(answer.status);
    res.writeHead(answer.status, headers);
    res.end(text);
  }
}
