/**
 * The daemon's control socket (`<stateDir>/control.sock`, in the 0700 state folder): how `up`
 * asks a running daemon to boot workers ahead of a build. One JSON request line in; JSON lines
 * out: `{"line": "…"}` for progress, then `{"ok": true, …}` or `{"error": "…"}`.
 */
import { existsSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { UserError } from '../core/errors.js';

export interface UpRequest {
  command: 'up';
  /** Pools to warm; all when empty. */
  pools: string[];
  workers: number;
}

export type ControlReply = { line: string } | { ok: true; ready: Record<string, number> } | { error: string };

/** Why `up` got no answer: no daemon, or the daemon's own refusal (an unknown pool). */
export class ControlError extends UserError {
  override name = 'ControlError';
}

export function controlSocketPath(stateDir: string): string {
  return join(stateDir, 'control.sock');
}

export type UpHandler = (request: UpRequest, progress: (line: string) => void) => Promise<Record<string, number>>;

export function serveControl(stateDir: string, onUp: UpHandler): Promise<Server> {
  const path = controlSocketPath(stateDir);
  // A socket file left by a daemon that was killed: the state lock says we are the only daemon.
  if (existsSync(path)) rmSync(path);
  const server = createServer((socket) => {
    let buffer = '';
    const send = (reply: ControlReply): void => {
      if (!socket.destroyed) socket.write(`${JSON.stringify(reply)}\n`);
    };
    socket.on('error', () => undefined);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      const nl = buffer.indexOf('\n');
      if (nl < 0) {
        if (buffer.length > 4096) socket.destroy();
        return;
      }
      const line = buffer.slice(0, nl);
      socket.removeAllListeners('data');
      let request: UpRequest;
      try {
        request = JSON.parse(line) as UpRequest;
        if (request.command !== 'up' || !Array.isArray(request.pools) || !Number.isInteger(request.workers) || request.workers < 1)
          throw new Error('bad request');
      } catch {
        send({ error: 'bad request: expected {"command":"up","pools":[…],"workers":N}' });
        socket.end();
        return;
      }
      onUp(request, (l) => send({ line: l }))
        .then(
          (ready) => send({ ok: true, ready }),
          (err: unknown) => send({ error: (err as Error).message }),
        )
        .finally(() => socket.end());
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.removeListener('error', reject);
      resolve(server);
    });
  });
}

/** Sends one request to a running daemon; calls `onLine` for progress; resolves with the final reply. */
export function requestControl(stateDir: string, request: UpRequest, onLine: (line: string) => void): Promise<Record<string, number>> {
  const path = controlSocketPath(stateDir);
  return new Promise((resolve, reject) => {
    if (!existsSync(path)) {
      reject(
        new ControlError(`no daemon is running for the state folder ${stateDir} (no ${path}); start "nix-hcloud-builder serve" first`),
      );
      return;
    }
    const socket = createConnection(path);
    let buffer = '';
    let done = false;
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const reply = JSON.parse(buffer.slice(0, nl)) as ControlReply;
        buffer = buffer.slice(nl + 1);
        if ('line' in reply) onLine(reply.line);
        else {
          done = true;
          if ('error' in reply) reject(new ControlError(reply.error));
          else resolve(reply.ready);
        }
      }
    });
    socket.on('error', (err) => reject(new ControlError(`cannot reach the daemon at ${path}: ${err.message}`)));
    socket.on('close', () => {
      if (!done) reject(new ControlError('the daemon closed the control connection without an answer'));
    });
  });
}
