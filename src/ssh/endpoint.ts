/**
 * The SSH endpoint Nix logs in to. Public-key auth against the authorized keys; the user name
 * picks the pool; only the Nix remote-store commands run, each piped to a worker of that pool.
 * Everything else is refused with one line on stderr, and the daemon keeps serving.
 */
import { timingSafeEqual } from 'node:crypto';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import ssh2 from 'ssh2';
import type { AuthContext, Connection, ServerChannel, Session } from 'ssh2';
import type { Logger } from '../core/log.js';
import { keyRefusal, type AuthorizedKey } from './authorized-keys.js';
import { limitChannelWindows } from './channel-window.js';
import { replyChannelFailure } from './ssh2-internals.js';
import { watchIdentLine } from './ident-line.js';
import { NixSessions, refuse, type Login, type SessionPool } from './nix-session.js';
import { CLIENT_SOCKET_HIGH_WATER, WriteGate } from './write-gate.js';

type ParsedKey = ssh2.ParsedKey;

export { parseAuthorizedKeys } from './authorized-keys.js';
export type { AcquireOptions, SessionLease, SessionPool } from './nix-session.js';

export interface EndpointOptions {
  hostKey: string;
  authorizedKeys: AuthorizedKey[];
  pools: Map<string, SessionPool>;
  log: Logger;
  /** A connection that has not authenticated by then is dropped. */
  loginGraceMs: number;
  /** Open connections allowed from one source address; more are dropped at once. */
  maxConnectionsPerSource: number;
  /** Connections not yet logged in, from all addresses together (sshd's MaxStartups); more are dropped at once. */
  maxStartups: number;
  /** Failed login attempts allowed on one connection (sshd's MaxAuthTries); then it is dropped. */
  maxAuthTries: number;
}

function keyMatches(ctx: AuthContext & { method: 'publickey' }, allowed: ParsedKey): boolean {
  const blob = allowed.getPublicSSH();
  if (ctx.key.algo !== allowed.type || ctx.key.data.length !== blob.length || !timingSafeEqual(ctx.key.data, blob)) return false;
  // Without a signature the client only asks whether this key would do; with one, verify it.
  if (!ctx.signature || !ctx.blob) return true;
  return allowed.verify(ctx.blob, ctx.signature, ctx.hashAlgo) === true;
}

/**
 * A channel's streams, once its client is gone, fail every write with an `error` event
 * (ERR_STREAM_WRITE_AFTER_END); unheard, that event would end the daemon and every session in it.
 */
function quietOnClientGone(channel: ServerChannel, log: Logger): ServerChannel {
  const onError = (err: Error): void => log.debug({ err: err.message }, 'write to a closed client channel');
  channel.on('error', onError);
  channel.stderr.on('error', onError);
  return channel;
}

export class Endpoint {
  readonly server: ssh2.Server;
  private readonly log: Logger;
  /** Open client connections, for shutdown and for tests that count leaks. */
  readonly connections = new Set<Connection>();
  private readonly perSource = new Map<string, number>();
  /** "ip:port" of connections that logged in (the login grace timer spares them). */
  private readonly authenticated = new Set<string>();
  /** "ip:port" of open connections that have not logged in yet (counted against maxStartups). */
  private readonly preLogin = new Set<string>();
  /** The write gate of each open client socket, by peer ("ip:port"): ssh2 does not expose the socket. */
  private readonly gates = new Map<string, WriteGate>();
  private readonly tcp: Server = createServer((socket) => this.onSocket(socket));
  private readonly sessions: NixSessions;

  constructor(private readonly options: EndpointOptions) {
    this.log = options.log.child({ component: 'endpoint' });
    this.sessions = new NixSessions(options.pools);
    this.server = new ssh2.Server({ hostKeys: [options.hostKey], ident: 'nix-hcloud-builder' }, (client, info) =>
      this.onConnection(client, info),
    );
    this.server.on('error', (err: Error) => this.log.error({ err }, 'endpoint error'));
  }

  /**
   * Listens with our own TCP server and hands accepted sockets to ssh2: limits apply from the
   * first byte (ssh2 reports a connection only after the client's banner, so a client that never
   * speaks would otherwise be held forever, and one that sends no valid banner up to 8 KiB).
   */
  listen(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.tcp.once('error', reject);
      this.tcp.listen(port, host, () => {
        this.tcp.removeListener('error', reject);
        this.tcp.on('error', (err: Error) => this.log.error({ err }, 'endpoint error'));
        resolve((this.tcp.address() as AddressInfo).port);
      });
    });
  }

  /** Stops accepting connections; resolves when every open connection has ended. */
  stopListening(): Promise<void> {
    return new Promise((resolve) => this.tcp.close(() => resolve()));
  }

  private onSocket(socket: Socket): void {
    const ip = socket.remoteAddress ?? '?';
    const peer = `${ip}:${socket.remotePort ?? 0}`;
    // ssh2 never sets it; Nagle plus delayed ACKs cost ≈ 40 ms per round trip.
    socket.setNoDelay(true);
    const fromSource = (this.perSource.get(ip) ?? 0) + 1;
    this.perSource.set(ip, fromSource);
    socket.once('close', () => {
      const left = (this.perSource.get(ip) ?? 1) - 1;
      if (left > 0) this.perSource.set(ip, left);
      else this.perSource.delete(ip);
      this.authenticated.delete(peer);
      this.preLogin.delete(peer);
      this.gates.delete(peer);
    });
    socket.on('error', () => undefined);
    if (fromSource > this.options.maxConnectionsPerSource) {
      this.log.warn(
        { peer, open: fromSource - 1, max: this.options.maxConnectionsPerSource },
        'refused: too many connections from this address',
      );
      socket.destroy();
      return;
    }
    if (this.preLogin.size >= this.options.maxStartups) {
      this.log.warn(
        { peer, notLoggedIn: this.preLogin.size, max: this.options.maxStartups },
        'refused: too many connections not logged in yet (limits.maxStartups)',
      );
      socket.destroy();
      return;
    }
    this.preLogin.add(peer);
    const loginTimer = setTimeout(() => {
      if (this.authenticated.has(peer)) return;
      this.log.warn({ peer }, 'dropped: no login within the login grace time');
      socket.destroy();
    }, this.options.loginGraceMs);
    loginTimer.unref();
    socket.once('close', () => clearTimeout(loginTimer));
    this.gates.set(peer, new WriteGate(socket, CLIENT_SOCKET_HIGH_WATER));
    this.server.injectSocket(socket);
    // Not an SSH client: drop it now, as sshd does, rather than at the login grace time.
    watchIdentLine(socket, (why) => {
      this.log.warn({ peer, why }, 'dropped: not an SSH identification line');
      socket.destroy();
    });
  }

  /** Nix sessions between their command and their end. */
  get activeSessions(): number {
    return this.sessions.active;
  }

  /** Client sockets the endpoint still tracks (for their write gates); 0 once all are closed. */
  get trackedSockets(): number {
    return this.gates.size;
  }

  closeAll(): void {
    for (const c of this.connections) c.end();
  }

  private onConnection(client: Connection, info: ssh2.ClientInfo): void {
    const log = this.log.child({ peer: `${info.ip}:${info.port}` });
    this.connections.add(client);
    if (!limitChannelWindows(client)) log.debug('ssh2 internals not as expected: client channels keep the 2 MiB window');
    client.on('close', () => this.connections.delete(client));
    // Errors (garbage instead of an SSH banner, resets) end that connection only.
    client.on('error', (err: Error) => log.debug({ err: err.message }, 'client connection error'));
    let user = '';
    /** The authorized_keys entry the client logged in with (its forced command, if any). */
    let loggedInWith: AuthorizedKey | undefined;
    let failures = 0;
    let firstRequest = true;

    client.on('authentication', (ctx) => {
      user = ctx.username;
      // As sshd: the client's opening "none" request (which asks for the methods) is no attempt.
      const counts = !(firstRequest && ctx.method === 'none');
      firstRequest = false;
      const reject = (): void => {
        if (counts) failures++;
        if (failures >= this.options.maxAuthTries) {
          log.warn(
            { user, attempts: failures, max: this.options.maxAuthTries },
            'dropped: too many failed login attempts (limits.maxAuthTries)',
          );
          client.end();
          return;
        }
        ctx.reject(['publickey']);
      };
      if (ctx.method !== 'publickey') return reject();
      const match = this.options.authorizedKeys.find((entry) => keyMatches(ctx, entry.key));
      if (!match) {
        if (ctx.signature) log.warn({ user, keyType: ctx.key.algo }, 'refused: public key not authorized');
        return reject();
      }
      const refusal = keyRefusal(match, info.ip, Date.now());
      if (refusal) {
        // Logged at the query too: a client told no does not go on to sign.
        log.warn({ user, keyType: ctx.key.algo, why: refusal }, 'refused: public key not authorized now');
        return reject();
      }
      if (ctx.signature) loggedInWith = match;
      ctx.accept();
    });
    client.on('ready', () => {
      this.authenticated.add(`${info.ip}:${info.port}`);
      this.preLogin.delete(`${info.ip}:${info.port}`);
      log.debug({ user }, 'authenticated');
      const gate = this.gates.get(`${info.ip}:${info.port}`);
      const login: Login = { client, user, log, clientGate: gate, forcedCommand: loggedInWith?.command };
      client.on('session', (accept) => this.onSession(login, accept()));
      client.on('tcpip', (_accept, reject) => {
        log.warn({ user }, 'refused: port forwarding');
        reject();
      });
      client.on('openssh.streamlocal', (_accept, reject) => {
        log.warn({ user }, 'refused: unix socket forwarding');
        reject();
      });
    });
    client.on('request', (accept, reject, name) => {
      log.warn({ user, request: name }, 'refused: forwarding request');
      reject?.();
    });
  }

  private onSession(login: Login, session: Session): void {
    const { client, user, log } = login;
    // One command per session, as in OpenSSH: a second exec, shell or subsystem request is
    // answered with a failure (ssh2's accept() would return nothing), and the running command goes on.
    let started = false;
    const start = (
      request: string,
      accept: () => ServerChannel | undefined,
      reject: (() => void) | undefined,
    ): ServerChannel | undefined => {
      if (started) {
        log.warn({ user, request }, 'refused: a second command on one session');
        // ssh2 passes reject only when the client wants a reply, and it no longer sends one itself.
        if (reject && !replyChannelFailure(client, session)) log.debug('ssh2 internals not as expected: no failure reply sent');
        return undefined;
      }
      started = true;
      // Accept at once: a late accept() after the client's EOF returns nothing.
      const channel = accept();
      return channel && quietOnClientGone(channel, log);
    };
    session.on('env', (accept) => accept?.());
    session.on('pty', (_accept, reject) => {
      log.warn({ user }, 'refused: pty');
      reject?.();
    });
    session.on('auth-agent', (_accept, reject) => {
      log.warn({ user }, 'refused: agent forwarding');
      reject?.();
    });
    session.on('x11', (_accept, reject) => {
      log.warn({ user }, 'refused: X11 forwarding');
      reject?.();
    });
    session.on('window-change', (accept) => accept?.());
    session.on('signal', (accept) => accept?.());
    session.on('shell', (accept, reject) => {
      const channel = start('shell', accept, reject);
      if (!channel) return;
      log.warn({ user }, 'refused: shell');
      refuse(channel, 'this endpoint runs Nix remote builds only (nix-daemon --stdio, nix-store --serve); no shell');
    });
    session.on('subsystem', (accept, reject, info) => {
      const channel = start('subsystem', accept, reject);
      if (!channel) return;
      log.warn({ user, subsystem: info.name }, 'refused: subsystem');
      refuse(channel, `subsystem ${JSON.stringify(info.name)} is not available; this endpoint runs Nix remote builds only`);
    });
    session.on('exec', (accept, reject, info) => {
      const channel = start('exec', accept, reject);
      if (channel) void this.sessions.run(login, channel, info.command);
    });
  }
}
