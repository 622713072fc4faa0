/**
 * The upstream side: ssh2 client connections to a worker's sshd, always with the host key pinned
 * to the one we generated for that server. A different key is an error, never accepted.
 * `connectRoot` is the handshake itself; `image upload` uses it for the rescue system, whose host
 * key cannot be known in advance.
 */
import { connect as netConnect, type Socket } from 'node:net';
import ssh2 from 'ssh2';
import type { ClientChannel, CompressionAlgorithm } from 'ssh2';
import type { WorkerCompression } from '../core/config.js';
import { publicKeyBlob } from './keys.js';
import { WORKER_SOCKET_HIGH_WATER, WriteGate } from './write-gate.js';
import type { DirectionSummary } from './zstd-adapt.js';

export type SshClient = ssh2.Client;

/** A channel running a command on the worker, and the bound on its connection's unsent bytes. */
export interface WorkerChannel {
  channel: ClientChannel;
  gate: WriteGate | undefined;
  /** The session's streams are compressed (the relay runs on the worker): the daemon's ends. */
  codec?: SessionCodec;
}

/** The daemon's end of a session's compressed streams: stdin encoded, stdout decoded (stderr is plain). */
export interface SessionCodec {
  encoder: {
    push(chunk: Buffer): Buffer[];
    flush(): Buffer[];
    end(): Buffer[];
    /** The pipe held the upload this long because the link was full (the adaptive level's signal). */
    waited?(ms: number): void;
    /** What the upload settled on (see zstd-adapt.ts). */
    summary?(): DirectionSummary;
  };
  /** Input by `write`, output by `read` a bounded piece at a time (see ZstdDecoder). */
  decoder: {
    write(chunk: Buffer): void;
    read(): Buffer | undefined;
    readonly pending: boolean;
    readonly midFrame: boolean;
    /** The relay's last report (zstd-frames.ts). */
    readonly report?: Buffer | undefined;
  };
}

export class HostKeyMismatch extends Error {
  override name = 'HostKeyMismatch';
}

export interface WorkerSshTarget {
  host: string;
  port: number;
  hostPublicKey: string;
  loginPrivateKey: string;
  /** Keepalive every this many ms; KEEPALIVE_COUNT_MAX missed ones end the connection. */
  keepaliveIntervalMs?: number;
  /** Compression to ask for; the negotiated one is `negotiatedCompression(client)`. Default none. */
  compression?: WorkerCompression;
}

/**
 * What we offer per setting, in order of preference. zlib@openssh.com starts after login (what
 * OpenSSH's sshd offers by default); plain zlib and none follow, so that a worker whose sshd has
 * compression off still connects (uncompressed, which the connect log line shows).
 */
const COMPRESS_OFFER: Record<WorkerCompression, CompressionAlgorithm[]> = {
  none: ['none'],
  zlib: ['zlib@openssh.com', 'zlib', 'none'],
  // zstd is not SSH's: each session runs through the worker's relay (zstd-codec.ts).
  zstd: ['none'],
};

/** By default a keepalive every 10 s, and 3 missed ones end the connection: a dead worker is noticed in ≈ 30 s. */
export const KEEPALIVE_INTERVAL_MS = 10_000;
export const KEEPALIVE_COUNT_MAX = 3;

function tcpConnect(host: string, port: number, timeoutMs: number, signal?: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = netConnect({ host, port });
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    const timer = setTimeout(() => {
      done();
      sock.destroy();
      reject(new Error(`TCP connect to ${host}:${port} timed out`));
    }, timeoutMs);
    const onAbort = (): void => {
      done();
      sock.destroy();
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    sock.once('connect', () => {
      done();
      // ssh2 never sets it; Nagle plus delayed ACKs cost ≈ 40 ms per round trip.
      sock.setNoDelay(true);
      resolve(sock);
    });
    sock.once('error', (err) => {
      done();
      reject(err);
    });
  });
}

const writeGates = new WeakMap<SshClient, WriteGate>();
const compressions = new WeakMap<SshClient, string>();

/** The compression negotiated on a connection, e.g. "none" or "zlib@openssh.com". */
export function negotiatedCompression(client: SshClient): string | undefined {
  return compressions.get(client);
}

/** The bound on unsent bytes of a worker connection's socket, shared by its sessions. */
export function writeGateOf(client: SshClient): WriteGate | undefined {
  return writeGates.get(client);
}

/** A root login over ssh: where, with which key, and which host keys to accept. */
export interface RootLogin {
  host: string;
  port: number;
  privateKey: string;
  /** Sees the server's host key (the raw blob) during the handshake; false ends the connection. */
  hostVerifier: (key: Buffer) => boolean;
  keepaliveIntervalMs?: number;
  /** Compression to ask for (default none); the negotiated one is `negotiatedCompression(client)`. */
  compression?: WorkerCompression;
  /** Ends an attempt that is still connecting; it rejects with the signal's reason. */
  signal?: AbortSignal;
}

/**
 * Opens an ssh connection as root: TCP (with no-delay), the handshake, keepalives, and the bound
 * on the socket's unsent bytes (`writeGateOf`). Rejects when any of it fails or takes longer than
 * `timeoutMs`. Errors after the handshake are the caller's to listen for.
 */
export async function connectRoot(login: RootLogin, timeoutMs: number): Promise<SshClient> {
  const { signal } = login;
  signal?.throwIfAborted();
  const sock = await tcpConnect(login.host, login.port, timeoutMs, signal);
  return new Promise((resolve, reject) => {
    const client = new ssh2.Client();
    const fail = (err: unknown): void => {
      signal?.removeEventListener('abort', onAbort);
      client.removeAllListeners('ready');
      client.end();
      sock.destroy();
      reject(err);
    };
    const onAbort = (): void => fail(signal?.reason);
    const closedEarly = (): void => fail(new Error(`connection to ${login.host}:${login.port} closed during the handshake`));
    signal?.addEventListener('abort', onAbort, { once: true });
    client.once('ready', () => {
      signal?.removeEventListener('abort', onAbort);
      client.removeListener('error', fail);
      client.removeListener('close', closedEarly);
      writeGates.set(client, new WriteGate(sock, WORKER_SOCKET_HIGH_WATER));
      resolve(client);
    });
    client.once('error', fail);
    client.once('close', closedEarly);
    client.once('handshake', (negotiated) => {
      // Both sides get the same offer, so both directions agree; name both should they differ.
      const { cs, sc } = negotiated;
      compressions.set(client, cs.compress === sc.compress ? cs.compress : `${cs.compress} up, ${sc.compress} down`);
    });
    client.connect({
      sock,
      username: 'root',
      privateKey: login.privateKey,
      readyTimeout: timeoutMs,
      keepaliveInterval: login.keepaliveIntervalMs ?? KEEPALIVE_INTERVAL_MS,
      keepaliveCountMax: KEEPALIVE_COUNT_MAX,
      algorithms: { compress: COMPRESS_OFFER[login.compression ?? 'none'] },
      hostVerifier: login.hostVerifier,
    });
  });
}

/** A connection to a worker, its host key pinned to the one it was created with. */
export async function connectWorker(target: WorkerSshTarget, timeoutMs: number): Promise<SshClient> {
  const expected = publicKeyBlob(target.hostPublicKey);
  let mismatch = false;
  try {
    return await connectRoot(
      {
        host: target.host,
        port: target.port,
        privateKey: target.loginPrivateKey,
        ...(target.keepaliveIntervalMs === undefined ? {} : { keepaliveIntervalMs: target.keepaliveIntervalMs }),
        ...(target.compression === undefined ? {} : { compression: target.compression }),
        hostVerifier: (key: Buffer) => {
          mismatch = !key.equals(expected);
          return !mismatch;
        },
      },
      timeoutMs,
    );
  } catch (err) {
    if (mismatch) throw new HostKeyMismatch(`the worker at ${target.host} presented a host key other than the one it was created with`);
    throw err;
  }
}

/**
 * The SSH_MSG_CHANNEL_OPEN_FAILURE reason codes (RFC 4254 5.1) that mean "not on this
 * connection": OpenSSH's MaxSessions answers CONNECT_FAILED (older releases
 * ADMINISTRATIVELY_PROHIBITED), other servers RESOURCE_SHORTAGE. UNKNOWN_CHANNEL_TYPE would be
 * the same on any connection.
 */
const REFUSAL_REASONS: ReadonlySet<number> = new Set([
  1, // SSH_OPEN_ADMINISTRATIVELY_PROHIBITED
  2, // SSH_OPEN_CONNECT_FAILED
  4, // SSH_OPEN_RESOURCE_SHORTAGE
]);

/**
 * True when the worker's sshd refused to open another channel on this connection, so that another
 * connection can take the session. ssh2 puts the peer's numeric reason code in `reason`; it sets
 * `reason` to '' when the channel closed instead of opening (the connection died), which is no
 * refusal.
 */
export function isChannelRefusal(err: unknown): boolean {
  if (!(err instanceof Error) || !('reason' in err)) return false;
  return typeof err.reason === 'number' && REFUSAL_REASONS.has(err.reason);
}

export function execChannel(client: SshClient, command: string): Promise<ClientChannel> {
  return new Promise((resolve, reject) => {
    client.exec(command, (err, channel) => (err ? reject(err) : resolve(channel)));
  });
}

export interface CommandResult {
  code: number | null;
  signal?: string;
  stdout: string;
  stderr: string;
}

/** Runs a short command on the worker and collects its output (bounded to 64 KiB each). */
export async function runCommand(client: SshClient, command: string, timeoutMs: number): Promise<CommandResult> {
  const channel = await execChannel(client, command);
  return new Promise((resolve, reject) => {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outLen = 0;
    let errLen = 0;
    const limit = 64 * 1024;
    let code: number | null = null;
    let signal: string | undefined;
    const timer = setTimeout(() => {
      channel.close();
      reject(new Error(`command timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    channel.on('data', (chunk: Buffer) => {
      if (outLen < limit) out.push(chunk);
      outLen += chunk.length;
    });
    channel.stderr.on('data', (chunk: Buffer) => {
      if (errLen < limit) err.push(chunk);
      errLen += chunk.length;
    });
    channel.on('exit', (c: number | null, s?: string) => {
      code = c;
      signal = s;
    });
    channel.on('close', () => {
      clearTimeout(timer);
      const result: CommandResult = { code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
      if (signal) result.signal = signal;
      resolve(result);
    });
  });
}
