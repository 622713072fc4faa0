/**
 * What an early session answers from a record, and how the worker's own answers are held against
 * it: the phases of the opening, what a session learns in each, the answer to the `info` phase,
 * the one difference that matters per phase, and the record a session leaves behind.
 */
import {
  encodeStderrLast,
  encodeString,
  encodeU64,
  formatVersion,
  intersectFeatures,
  minorOf,
  type HandshakeProtocol,
  type HandshakeRecord,
  type ServeHandshakeRecord,
  type WorkerHandshakeRecord,
} from './nix-handshake.js';

export type Phase = 'hello' | 'features' | 'info' | 'set-options';

/** A worker whose answers differ from what the client was told early. */
export class HandshakeMismatch extends Error {
  override name = 'HandshakeMismatch';
  constructor(
    message: string,
    /** What the worker said, to answer the next session with. */
    readonly record: HandshakeRecord,
  ) {
    super(message);
  }
}

/** The worker failed the session in its opening after the client was told all was well. */
export class WorkerRefused extends Error {
  override name = 'WorkerRefused';
}

/** What a session found out, phase by phase, from the client and from the worker. */
export interface Facts {
  clientVersion?: number;
  clientFeatures?: string[];
  version?: number;
  features?: string[] | null;
  nixVersion?: string | null;
  trust?: number | null;
  startupMessages?: string[];
}

/** The daemon's version string, trust and first STDERR_LAST, from the record; undefined when it lacks what `negotiated` needs. */
export function infoAnswer(record: WorkerHandshakeRecord, negotiated: number): Buffer | undefined {
  const minor = minorOf(negotiated);
  if ((minor >= 33 && record.nixVersion === null) || (minor >= 35 && record.trust === null)) return undefined;
  return Buffer.concat([
    ...(minor >= 33 ? [encodeString(record.nixVersion as string)] : []),
    ...(minor >= 35 ? [encodeU64(record.trust as number)] : []),
    encodeStderrLast(record.startupMessages),
  ]);
}

/**
 * How the worker's answer to a phase said early differs from what the client was told, as far as
 * this client can tell (a version or feature it does not share does not matter); undefined: alike.
 */
export function answerDifference(
  phase: Phase,
  told: HandshakeRecord,
  worker: Facts,
  client: Facts,
  negotiated: number,
): string | undefined {
  if (phase === 'hello') {
    const version = worker.version as number;
    const clientVersion = client.clientVersion;
    const same =
      clientVersion === undefined ? version === told.version : Math.min(version, clientVersion) === Math.min(told.version, clientVersion);
    return same ? undefined : `protocol ${formatVersion(version)}, not ${formatVersion(told.version)}`;
  }
  if (told.protocol !== 'worker') return undefined;
  if (phase === 'features') {
    const clientFeatures = client.clientFeatures ?? [];
    const now = intersectFeatures(clientFeatures, worker.features ?? []);
    const then = intersectFeatures(clientFeatures, told.features ?? []);
    return now.join(',') === then.join(',') ? undefined : `features [${now.join(', ')}], not [${then.join(', ')}]`;
  }
  if (phase === 'info' && minorOf(negotiated) >= 35 && worker.trust !== told.trust)
    return `trust status ${worker.trust}, not ${told.trust}`;
  return undefined;
}

/** The record of what a worker said, as far as a session saw it. */
export function recordOf(protocol: HandshakeProtocol, worker: Facts): HandshakeRecord {
  const version = worker.version as number;
  if (protocol === 'serve') return { protocol: 'serve', version } satisfies ServeHandshakeRecord;
  return {
    protocol: 'worker',
    version,
    features: worker.features ?? null,
    nixVersion: worker.nixVersion ?? null,
    trust: worker.trust ?? null,
    startupMessages: worker.startupMessages ?? [],
  } satisfies WorkerHandshakeRecord;
}
