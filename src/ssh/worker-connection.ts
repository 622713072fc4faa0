/**
 * The upstream side: ssh2 client connections to a worker's sshd, always with the host key pinned
 * to the one we generated for that server. A different key is an error, never accepted.
 */
import { connect as netConnect, type Socket } from 'node:net';
import ssh2 from 'ssh2';
import type { ClientChannel, CompressionAlgorithm } from 'ssh2';
import type { WorkerCompression } from '../core/config.js';
import { publicKeyBlob } from './keys.js';
import { WORKER_SOCKET_HIGH_WATER, WriteGate } from './write-gate.js';

export type SshClient = ssh2.Client;

/** A channel running a command on the worker, and the bound on its connection's unsent bytes. */
export interface WorkerChannel {
  channel: ClientChannel;
  gate: WriteGate | undefined;
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
};

/** By default a keepalive every 10 s, and 3 missed ones end the connection: a dead worker is noticed in ≈ 30 s. */
export const KEEPALIVE_INTERVAL_MS = 10_000;
export const KEEPALIVE_COUNT_MAX = 3;

function tcpConnect(host: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = netConnect({ host, port });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`TCP connect to ${host}:${port} timed out`));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      // ssh2 never sets it; Nagle plus delayed ACKs cost ≈ 40 ms per round trip.
      sock.setNoDelay(true);
      resolve(sock);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
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

export async function connectWorker(target: WorkerSshTarget, timeoutMs: number): Promise<SshClient> {
  const expected = publicKeyBlob(target.hostPublicKey);
  const sock = await tcpConnect(target.host, target.port, timeoutMs);
  return new Promise((resolve, reject) => {
    const client = new ssh2.Client();
    let mismatch = false;
    const fail = (err: Error): void => {
      client.removeAllListeners('ready');
      client.end();
      sock.destroy();
      reject(mismatch ? new HostKeyMismatch(`the worker at ${target.host} presented a host key other than the one it was created with`) : err);
    };
    const closedEarly = (): void => fail(new Error(`connection to ${target.host}:${target.port} closed during the handshake`));
    client.once('ready', () => {
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
      privateKey: target.loginPrivateKey,
      readyTimeout: timeoutMs,
      keepaliveInterval: target.keepaliveIntervalMs ?? KEEPALIVE_INTERVAL_MS,
      keepaliveCountMax: KEEPALIVE_COUNT_MAX,
      algorithms: { compress: COMPRESS_OFFER[target.compression ?? 'none'] },
      hostVerifier: (key: Buffer) => {
        mismatch = !key.equals(expected);
        return !mismatch;
      },
    });
  });
}

/**
 * True when the worker's sshd refused to open another channel on this connection (OpenSSH's
 * MaxSessions): ssh2 gives such errors the SSH reason code as `reason`. Also true when ssh2 itself
 * has no free channel id left. Either way another connection can take the session.
 */
export function isChannelRefusal(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  return 'reason' in err || err.message === 'No free channels available';
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

/** Channels open on a worker connection (ssh2 keeps the count internally; used by tests and status). */
export function openChannelCount(client: SshClient): number {
  const manager = (client as unknown as { _chanMgr?: { _count?: number } })._chanMgr;
  return manager?._count ?? 0;
}
