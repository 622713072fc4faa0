/**
 * One Nix session on the endpoint, from its command to its end: the command checked (or the key's
 * forced command), a slot on a worker of the pool the user name picks, waited for with the boot's
 * progress for the user, the early handshake while a record allows it (early-session.ts), then the
 * byte pipe. A refused command gets one line on stderr, and the daemon keeps serving.
 */
import type { Connection, ServerChannel } from 'ssh2';
import type { Logger } from '../core/log.js';
import { CommandRefused, parseNixCommand, type NixCommand } from './nix-command.js';
import { readShellBootstrap, SHELL_BOOTSTRAP_COMMAND } from './shell-bootstrap.js';
import { pipeSession, type SessionOpening } from './session-pipe.js';
import { EarlySession, HandshakeMismatch } from './early-session.js';
import type { HandshakeProtocol, HandshakeRecord } from './nix-handshake.js';
import type { WorkerChannel } from './worker-connection.js';
import { parseRelayReport, settledLevels, type SettledLevels } from './zstd-adapt.js';
import type { WriteGate } from './write-gate.js';

/** What a session needs of its pool (the daemon's Pool): a slot on a worker, waited for if need be. */
export interface SessionPool {
  acquire(options: AcquireOptions): Promise<SessionLease>;
  /** The recorded handshake to answer a session with while it waits for a boot; undefined: it waits unanswered. */
  earlyHandshake?(protocol: HandshakeProtocol): Promise<HandshakeRecord | undefined>;
  /** True when sessions' openings are read (and recorded through `handshakeSeen`). */
  readonly recordsHandshakes?: boolean;
  handshakeSeen?(record: HandshakeRecord): void;
}

export interface AcquireOptions {
  /** Progress lines for the user (boot steps): the session's stderr, or Nix log messages after an early answer (early-session.ts). */
  progress: (line: string) => void;
  /** Aborted when the client goes away while waiting. */
  signal: AbortSignal;
}

/** A logged-in connection, as its sessions see it. */
export interface Login {
  client: Connection;
  user: string;
  log: Logger;
  /** The client socket's write gate. */
  clientGate: WriteGate | undefined;
  /** The `command="…"` of the authorized key the client logged in with. */
  forcedCommand: NixCommand | undefined;
}

/** A slot on a worker, held for one session. */
export interface SessionLease {
  worker: {
    readonly record: { readonly name: string };
    /** Runs the checked Nix command for a session (rendered for the worker's shell by the worker). */
    execNix(command: NixCommand): Promise<WorkerChannel>;
    /** What a compressed session's directions settled on (for `status`). */
    noteCompression?(levels: SettledLevels): void;
  };
  /** Gives the slot back; safe to call more than once. */
  release(): void;
}

/** Refuses a request on an accepted channel with one line on stderr and exit status 1. */
export function refuse(channel: ServerChannel, message: string): void {
  channel.stderr.write(`nix-hcloud-builder: ${message}\n`);
  channel.exit(1);
  channel.end();
}

/**
 * Calls `gone` once the client closes `channel` or drops the connection, while the channel is
 * paused. A paused channel emits no 'close': ssh2 waits for its 'end', which waits for the
 * buffered stdin to be read. ssh2 ends the channel's writable side at the client's close, though
 * (with no stdout write pending, 'finish' follows), and a dropped connection emits 'close'.
 * Returns the function that stops watching.
 */
function onClientGone(client: Connection, channel: ServerChannel, gone: () => void): () => void {
  let called = false;
  const once = (): void => {
    if (called) return;
    called = true;
    gone();
  };
  channel.once('close', once);
  channel.once('finish', once);
  client.once('close', once);
  return () => {
    channel.removeListener('close', once);
    channel.removeListener('finish', once);
    client.removeListener('close', once);
  };
}

/** The Nix sessions of one endpoint. */
export class NixSessions {
  /** Sessions between their command and their end. */
  active = 0;

  constructor(private readonly pools: Map<string, SessionPool>) {}

  async run(login: Login, channel: ServerChannel, raw: string): Promise<void> {
    const { client, user, log, clientGate, forcedCommand } = login;
    const pool = this.pools.get(user);
    if (!pool) {
      log.warn({ user }, 'refused: unknown pool');
      return refuse(channel, `unknown pool ${JSON.stringify(user.slice(0, 64))}: log in as one of ${[...this.pools.keys()].join(', ')}`);
    }
    let command: NixCommand;
    try {
      // Lix 2.93.0 execs `bash` and writes the command on stdin (see shell-bootstrap.ts).
      // A key's command="…" runs instead of what the client asked for, as in sshd.
      if (forcedCommand) command = forcedCommand;
      else command = raw === SHELL_BOOTSTRAP_COMMAND ? await readShellBootstrap(channel) : parseNixCommand(raw);
    } catch (err) {
      if (!(err instanceof CommandRefused)) throw err;
      log.warn({ user, command: raw.slice(0, 200), reason: err.message }, 'refused: command');
      try {
        return refuse(channel, `command refused (${err.message}); only "nix-daemon --stdio" and "nix-store --serve [--write]" are allowed`);
      } catch {
        return; // The client is gone already (it closed during the shell lines).
      }
    }
    // The Nix side's stdin stays buffered (by the SSH window) until the worker is ready, unless
    // an early session answers its opening meanwhile (see early-session.ts).
    channel.pause();
    const abort = new AbortController();
    const stopWatching = onClientGone(client, channel, () => abort.abort());
    const protocol: HandshakeProtocol = command.mode === 'daemon' ? 'worker' : 'serve';
    const record = await pool.earlyHandshake?.(protocol);
    const early = pool.recordsHandshakes || record ? new EarlySession(channel, protocol, record) : undefined;
    if (record) {
      channel.resume();
      void early?.answered.then((whole) => whole && log.info({ user, protocol }, 'answered early'));
    }
    this.active++;
    let lease: SessionLease | undefined;
    const started = Date.now();
    try {
      const toStderr = (line: string): void => {
        if (channel.stderr.writable) channel.stderr.write(`${line}\n`);
      };
      const progress = early ? early.progressSink(toStderr) : toStderr;
      lease = await pool.acquire({ signal: abort.signal, progress });
      if (abort.signal.aborted) return;
      const upstream = await lease.worker.execNix(command);
      // The client may have gone while the channel opened: then nobody would close it, and its
      // slot would keep the worker from ever idling.
      if (abort.signal.aborted) {
        upstream.channel.close();
        return;
      }
      stopWatching();
      const waitedMs = Date.now() - started;
      log.info({ user, worker: lease.worker.record.name, command: command.mode, waitedMs }, 'session started');
      const result = await pipeSession(
        channel,
        upstream.channel,
        { toClient: clientGate, toWorker: upstream.gate },
        upstream.codec,
        early && this.splice(early, pool, log),
      );
      const zstd = upstream.codec && settledLevels(upstream.codec.encoder.summary?.(), parseRelayReport(upstream.codec.decoder.report));
      if (zstd && (zstd.up || zstd.down)) lease.worker.noteCompression?.(zstd);
      log.info(
        {
          user,
          worker: lease.worker.record.name,
          up: result.bytesUp,
          down: result.bytesDown,
          ...(upstream.codec ? { wireUp: result.wireUp, wireDown: result.wireDown, zstd } : {}),
          code: result.code,
          clientClosed: result.clientClosed,
          ms: Date.now() - started,
        },
        'session ended',
      );
    } catch (err) {
      if (err instanceof HandshakeMismatch) pool.handshakeSeen?.(err.record);
      if (!abort.signal.aborted) {
        // Nix was told all is well already: this line is what the build's failure says.
        const message =
          record && !lease
            ? `the worker's boot failed after its handshake was answered early: ${(err as Error).message}`
            : (err as Error).message;
        log.warn({ user, err: message }, 'session failed');
        try {
          early?.refuseNextOperation(`nix-hcloud-builder: ${message}`);
          refuse(channel, message);
        } catch {
          // The client is gone already.
        }
      }
    } finally {
      this.active--;
      stopWatching();
      lease?.release();
    }
  }

  /** The early session's opening hook: joins the worker in, and keeps what it answered. */
  private splice(early: EarlySession, pool: SessionPool, log: Logger): SessionOpening {
    return async (worker) => {
      const spliced = await early.splice(worker);
      if (spliced.changed && spliced.record) {
        pool.handshakeSeen?.(spliced.record);
        log.info({ protocol: spliced.record.protocol, version: spliced.record.version }, "recorded the worker's handshake");
      }
      if (early.stoppedBecause) log.debug({ why: early.stoppedBecause }, 'opening not answered whole before the worker came');
      if (spliced.messages.length > 0) log.debug({ messages: spliced.messages }, "the worker's messages in the opening");
      return spliced.leftover;
    };
  }
}
