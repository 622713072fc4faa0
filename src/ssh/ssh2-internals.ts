/**
 * Every access to ssh2's private fields, in one module. ssh2 has no public API for three things the
 * daemon needs: the window it grants a peer's channel (fixed at 2 MiB), the read buffer of a
 * channel (its stream's high-water mark, fixed at 2 MiB), the number of open channels of a
 * connection, and a failure reply to a request on a session that already runs a command. This module reaches them in ssh2 SSH2_VERSION (package.json pins it exactly) and
 * gives the rest of the code a typed surface; when a field is not there, each function says so
 * (false, undefined or an error) and its caller falls back to ssh2's own behaviour.
 *
 * `checkSsh2Internals` looks for the fields on a real connection over loopback, so that a
 * different ssh2 shows up as one warning at start instead of a silently larger window.
 */
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import ssh2 from 'ssh2';
import type { Client, Connection } from 'ssh2';
import type { Logger } from '../core/log.js';
import { generateKeyPair } from './keys.js';

/** The ssh2 version this module was written for (and package.json pins). */
export const SSH2_VERSION = '1.17.0';

/** ssh2's count of the bytes a peer may still send on a channel; a live field, written by ssh2 too. */
export interface WindowCounter {
  window: number;
}

/** A channel the peer opened, as ssh2 is about to confirm it. */
export interface OpeningChannel {
  /** The peer's id of the channel: the id window grants name. */
  readonly remote: number;
  /** ssh2's window counter of the channel (set to the window the confirm grants). */
  readonly incoming: WindowCounter;
  /** Called once when the channel closes. */
  onClose(listener: () => void): void;
}

/** Decides the windows ssh2 grants on a connection's incoming channels. */
export interface WindowGrantPolicy {
  /** The window to grant in the confirm of `channel`, where ssh2 would grant `initial`. */
  confirm(channel: OpeningChannel, initial: number): number;
  /**
   * ssh2 is about to grant `amount` more on the channel `remote` and has already added it to the
   * counter: the amount to send instead (0 sends nothing). The policy keeps the counter right.
   */
  adjust(remote: number, amount: number): number;
}

// Properties, not methods: hookWindowGrants keeps the originals and calls them on the protocol.
interface ProtocolInternals {
  channelOpenConfirm: (remote: number, local: number, window: number, packetSize: number) => void;
  channelWindowAdjust: (remote: number, amount: number) => void;
  channelFailure: (remote: number) => void;
}

interface ChanInfo {
  incoming?: Partial<WindowCounter>;
  outgoing?: { id?: unknown };
}

interface ChannelInternals {
  _chanInfo?: ChanInfo;
  once?: unknown;
}

interface ConnectionInternals {
  _protocol?: Partial<ProtocolInternals>;
  _chanMgr?: { get?: unknown; _count?: unknown };
}

interface StreamInternals {
  _readableState?: { highWaterMark?: unknown };
}

function protocolOf(connection: Connection | Client): ProtocolInternals | undefined {
  const protocol = (connection as unknown as ConnectionInternals)._protocol;
  if (typeof protocol?.channelOpenConfirm !== 'function' || typeof protocol.channelWindowAdjust !== 'function') return undefined;
  return protocol as ProtocolInternals;
}

function channelLookupOf(connection: Connection | Client): ((local: number) => unknown) | undefined {
  const manager = (connection as unknown as ConnectionInternals)._chanMgr;
  const get = manager?.get;
  if (typeof get !== 'function') return undefined;
  return (local) => (get as (local: number) => unknown).call(manager, local);
}

/** The channel ssh2 registered under `local`, if it is the peer's channel `remote` with a window counter. */
function openingChannel(lookup: (local: number) => unknown, local: number, remote: number): OpeningChannel | undefined {
  const channel = lookup(local) as ChannelInternals | undefined;
  const info = channel?._chanInfo;
  const incoming = info?.incoming;
  if (!channel || typeof incoming?.window !== 'number' || info?.outgoing?.id !== remote || typeof channel.once !== 'function')
    return undefined;
  const once = channel.once as (event: 'close', listener: () => void) => unknown;
  return { remote, incoming: incoming as WindowCounter, onClose: (listener) => void once.call(channel, 'close', listener) };
}

/**
 * Lets `policy` decide the windows of the channels the peer opens on `connection` from now on
 * (ssh2's confirm and its window top-ups both go through it). False, and nothing changed, when
 * ssh2's internals are not what this was written for: ssh2's 2 MiB window then applies.
 */
export function hookWindowGrants(connection: Connection, policy: WindowGrantPolicy): boolean {
  const protocol = protocolOf(connection);
  const lookup = channelLookupOf(connection);
  if (!protocol || !lookup) return false;
  const confirm = protocol.channelOpenConfirm;
  const adjust = protocol.channelWindowAdjust;
  // ssh2 registers the accepted channel, then confirms it: the policy sets its counter in the same
  // step, so the peer and ssh2 never disagree. A channel that does not look as expected keeps ssh2's window.
  protocol.channelOpenConfirm = (remote, local, initial, packetSize) => {
    const channel = openingChannel(lookup, local, remote);
    if (!channel) return confirm.call(protocol, remote, local, initial, packetSize);
    const window = policy.confirm(channel, initial);
    channel.incoming.window = window;
    return confirm.call(protocol, remote, local, window, packetSize);
  };
  protocol.channelWindowAdjust = (remote, amount) => {
    const send = policy.adjust(remote, amount);
    if (send > 0) adjust.call(protocol, remote, send);
  };
  return true;
}

/**
 * Answers the last request on `session` with SSH_MSG_CHANNEL_FAILURE. ssh2's own reject() does
 * nothing once the session runs a command, so a second exec, shell or subsystem request that wants
 * a reply would wait for one forever. False when ssh2's fields are not there (no reply is sent).
 */
export function replyChannelFailure(connection: Connection, session: unknown): boolean {
  const protocol = (connection as unknown as ConnectionInternals)._protocol;
  const remote = (session as ChannelInternals)._chanInfo?.outgoing?.id;
  if (typeof protocol?.channelFailure !== 'function' || typeof remote !== 'number') return false;
  protocol.channelFailure(remote);
  return true;
}

/**
 * Lowers a stream's read high-water mark: ssh2 creates its channels with 2 MiB and Node has no
 * setter. False when the stream has no such field (the mark stays).
 */
export function limitReadBuffer(stream: Readable, bytes: number): boolean {
  const state = (stream as unknown as StreamInternals)._readableState;
  if (!state || typeof state.highWaterMark !== 'number') return false;
  state.highWaterMark = bytes;
  return true;
}

/** Thrown when a count ssh2 keeps privately cannot be read: a count of 0 would be a lie. */
export class Ssh2InternalsMissing extends Error {
  override name = 'Ssh2InternalsMissing';
}

/** Channels open on an ssh2 connection (client or server side). Throws Ssh2InternalsMissing when ssh2 does not keep the count where expected. */
export function openChannelCount(connection: Client | Connection): number {
  const count = (connection as unknown as ConnectionInternals)._chanMgr?._count;
  if (typeof count !== 'number')
    throw new Ssh2InternalsMissing(
      `cannot count open channels: ssh2 ${installedSsh2Version() ?? '(unknown version)'} has no numeric _chanMgr._count (written for ${SSH2_VERSION})`,
    );
  return count;
}

/** The installed ssh2's version, from its package.json. */
export function installedSsh2Version(): string | undefined {
  try {
    const pkg = createRequire(import.meta.url)('ssh2/package.json') as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : undefined;
  } catch {
    return undefined;
  }
}

/** What relies on which internals, as the warning names it. */
export const FEATURES = {
  window: "the 1 MiB window of client session channels (ssh2's 2 MiB applies instead)",
  readBuffer: "the 32 KiB read buffer of paused session channels (ssh2's 2 MiB applies instead)",
  channelCount: 'the open channel count of a connection (checks for leaked channels fail)',
  requestFailure: 'the failure reply to a second command on one session (such a client waits for a reply)',
} as const;

export type Feature = keyof typeof FEATURES;

export interface Ssh2InternalsReport {
  installedVersion: string | undefined;
  /** One line per field that is not as expected, e.g. "Connection._protocol.channelWindowAdjust: not a function". */
  missing: string[];
  /** The features those fields turn off. */
  off: Feature[];
}

/** The problems of one object: each expected field that is absent or of another type. */
function expect(problems: string[], where: string, value: unknown, type: 'function' | 'number' | 'object'): void {
  const actual = value === null ? 'null' : typeof value;
  if (actual !== type) problems.push(`${where}: ${actual === 'undefined' ? 'missing' : actual}, expected ${type}`);
}

function connectionProblems(side: 'Connection' | 'Client', connection: Connection | Client): string[] {
  const internals = connection as unknown as ConnectionInternals;
  const problems: string[] = [];
  expect(problems, `${side}._protocol`, internals._protocol, 'object');
  expect(problems, `${side}._protocol.channelOpenConfirm`, internals._protocol?.channelOpenConfirm, 'function');
  expect(problems, `${side}._protocol.channelWindowAdjust`, internals._protocol?.channelWindowAdjust, 'function');
  expect(problems, `${side}._chanMgr.get`, internals._chanMgr?.get, 'function');
  return problems;
}

function countProblems(side: 'Connection' | 'Client', connection: Connection | Client): string[] {
  const problems: string[] = [];
  expect(problems, `${side}._chanMgr._count`, (connection as unknown as ConnectionInternals)._chanMgr?._count, 'number');
  return problems;
}

function sessionProblems(session: unknown): string[] {
  const info = (session as ChannelInternals)._chanInfo;
  const problems: string[] = [];
  expect(problems, 'Session._chanInfo.incoming.window', info?.incoming?.window, 'number');
  expect(problems, 'Session._chanInfo.outgoing.id', info?.outgoing?.id, 'number');
  return problems;
}

function requestFailureProblems(connection: Connection, session: unknown): string[] {
  const problems: string[] = [];
  expect(
    problems,
    'Connection._protocol.channelFailure',
    (connection as unknown as ConnectionInternals)._protocol?.channelFailure,
    'function',
  );
  expect(problems, 'Session._chanInfo.outgoing.id', (session as ChannelInternals)._chanInfo?.outgoing?.id, 'number');
  return problems;
}

function readBufferProblems(side: 'ServerChannel' | 'ClientChannel', stream: unknown): string[] {
  const problems: string[] = [];
  expect(problems, `${side}._readableState.highWaterMark`, (stream as StreamInternals)._readableState?.highWaterMark, 'number');
  return problems;
}

/** The problems found on each object of a real connection, by the feature they turn off. */
type Findings = Record<Feature, string[]>;

/** Opens an ssh2 connection to itself over loopback, runs one command, and looks at each object on the way. */
async function inspectLiveConnection(timeoutMs: number): Promise<Findings> {
  const found: Findings = { window: [], readBuffer: [], channelCount: [], requestFailure: [] };
  const hostKey = generateKeyPair('ssh2-internals-check').privateKey;
  let hooked = false;
  let server: ssh2.Server | undefined;
  const client = new ssh2.Client();
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no exec over loopback within ${timeoutMs} ms`)), timeoutMs);
      const finish = (err?: Error): void => {
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      server = new ssh2.Server({ hostKeys: [hostKey] }, (conn) => {
        found.window.push(...connectionProblems('Connection', conn));
        found.channelCount.push(...countProblems('Connection', conn));
        // The policy grants what ssh2 would: only whether ssh2 calls it matters here.
        hookWindowGrants(conn, { confirm: (_channel, initial) => ((hooked = true), initial), adjust: (_remote, amount) => amount });
        conn.on('error', finish);
        conn.on('authentication', (ctx) => ctx.accept());
        conn.on('ready', () => {
          conn.on('session', (accept) => {
            const session = accept();
            found.window.push(...sessionProblems(session));
            found.requestFailure.push(...requestFailureProblems(conn, session));
            session.on('exec', (acceptExec) => {
              const channel = acceptExec();
              found.readBuffer.push(...readBufferProblems('ServerChannel', channel));
              channel.exit(0);
              channel.end();
            });
          });
        });
      });
      server.on('error', finish);
      server.listen(0, '127.0.0.1', () => {
        const { port } = server?.address() as AddressInfo;
        client.once('error', finish);
        client.once('ready', () => {
          found.channelCount.push(...countProblems('Client', client));
          client.exec('check', (err, channel) => {
            if (err) return finish(err);
            found.readBuffer.push(...readBufferProblems('ClientChannel', channel));
            channel.on('close', () => finish()).resume();
          });
        });
        client.connect({ host: '127.0.0.1', port, username: 'check', password: 'check', readyTimeout: timeoutMs });
      });
    });
  } finally {
    client.end();
    server?.close();
  }
  if (found.window.length === 0 && !hooked)
    found.window.push('Connection._protocol.channelOpenConfirm: not called when ssh2 confirmed a session channel');
  return found;
}

/** Checks that the installed ssh2 is the version this module was written for and has the fields it uses. */
export async function checkSsh2Internals(timeoutMs = 10_000): Promise<Ssh2InternalsReport> {
  const installedVersion = installedSsh2Version();
  const missing: string[] = [];
  if (installedVersion !== SSH2_VERSION) missing.push(`ssh2 version: ${installedVersion ?? 'unknown'}, written for ${SSH2_VERSION}`);
  let found: Findings;
  try {
    found = await inspectLiveConnection(timeoutMs);
  } catch (err) {
    const problem = `an ssh2 connection over loopback failed: ${(err as Error).message}`;
    found = { window: [problem], readBuffer: [problem], channelCount: [problem], requestFailure: [problem] };
  }
  const off: Feature[] = [];
  for (const feature of Object.keys(found) as Feature[]) {
    if (found[feature].length === 0) continue;
    off.push(feature);
    for (const problem of found[feature]) if (!missing.includes(problem)) missing.push(problem);
  }
  return { installedVersion, missing, off };
}

/** Runs the check and logs one warning naming what is missing and what is off; silent when all is as expected. */
export async function warnIfSsh2InternalsDiffer(log: Logger): Promise<Ssh2InternalsReport> {
  const report = await checkSsh2Internals();
  if (report.missing.length > 0) {
    log.warn(
      {
        ssh2: report.installedVersion,
        writtenFor: SSH2_VERSION,
        missing: report.missing,
        off: report.off.map((feature) => FEATURES[feature]),
      },
      report.off.length > 0
        ? `ssh2 internals are not what this daemon was written for; turned off: ${report.off.map((feature) => FEATURES[feature]).join('; ')}`
        : `ssh2 ${report.installedVersion ?? '(unknown version)'} is not the version this daemon was written for (${SSH2_VERSION}); its internals look as expected`,
    );
  }
  return report;
}
