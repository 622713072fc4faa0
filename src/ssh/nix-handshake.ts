/**
 * The openings of Nix's two remote-store protocols on the wire, as NixOS/nix defines them
 * (2.8.x `src/libstore/{worker-protocol.hh,remote-store.cc,daemon.cc,serve-protocol.hh}`,
 * 2.26.x and 2.34.x `src/libstore/worker-protocol{,-connection}.cc`,
 * `serve-protocol-connection.cc`):
 *
 * Worker protocol (`nix-daemon --stdio`, `ssh-ng://`), with n = min(client's, daemon's version):
 *   1. client: WORKER_MAGIC_1 (Nix ≥ 2.23 sends its version in the same write);
 *      daemon: WORKER_MAGIC_2, its version; client: its version.
 *   2. from n ≥ 1.38: client: its feature set; daemon: its feature set (strings each).
 *      The negotiated features are the intersection.
 *   3. client: the obsolete CPU affinity word from 1.14 (and a second word when it is not 0),
 *      the obsolete reserveSpace word from 1.11; daemon: its Nix version string from 1.33, its
 *      trust status from 1.35 (0 unknown, 1 trusted, 2 not trusted), then its stderr stream up
 *      to STDERR_LAST (STDERR_ERROR there refuses the client).
 *   4. unless `disable-set-options` was negotiated: client: wopSetOptions (19), 12 words, from
 *      1.12 a list of (name, value) overrides; daemon: a stderr stream up to STDERR_LAST.
 *      Only clients of a daemon's socket send it: over ssh-ng (SSHStore) `setOptions` is empty
 *      (2.8, 2.26 and 2.34 `src/libstore/ssh-store.cc`), so the first op follows step 3 there.
 * Nix 2.8 gates each step on the peer's version and newer Nix on n: for the versions that meet
 * (the daemons of 2.8 onwards speak 1.34 or more) both give the same steps, so n gates them here.
 *
 * Serve protocol (`nix-store --serve --write`, `ssh://`): client: SERVE_MAGIC_1 and its version
 * in one write; server: SERVE_MAGIC_2 and its version. Nothing else is exchanged up to 2.7, the
 * version of every Nix from 2.8 to 2.35.
 *
 * Framing: every number a u64 little endian; a string its length then its bytes, padded with
 * zeros to a multiple of 8; a list of strings its count then the strings.
 */

export const WORKER_MAGIC_1 = 0x6e697863;
export const WORKER_MAGIC_2 = 0x6478696f;
export const SERVE_MAGIC_1 = 0x390c9deb;
export const SERVE_MAGIC_2 = 0x5452eecb;
export const WOP_SET_OPTIONS = 19;
/** The feature with which a client (Nix ≥ 2.33 with such a daemon) skips SetOptions. */
export const FEATURE_DISABLE_SET_OPTIONS = 'disable-set-options';

export const STDERR_NEXT = 0x6f6c6d67;
export const STDERR_READ = 0x64617461;
export const STDERR_WRITE = 0x64617416;
export const STDERR_LAST = 0x616c7473;
export const STDERR_ERROR = 0x63787470;
export const STDERR_START_ACTIVITY = 0x53545254;
export const STDERR_STOP_ACTIVITY = 0x53544f50;
export const STDERR_RESULT = 0x52534c54;

/** Strings of the opening are short (feature names, a version, settings); a longer one is not Nix. */
export const MAX_OPENING_STRING = 1024 * 1024;
/** Lists of the opening (features, overrides, fields, traces) are short too. */
export const MAX_OPENING_LIST = 65536;

/** "1.34" for the wire's 0x122: major in the high byte, minor in the low byte. */
export function formatVersion(version: number): string {
  return `${(version >> 8) & 0xff}.${version & 0xff}`;
}

export function minorOf(version: number): number {
  return version & 0xff;
}

/** The stream ended before the message did. */
export class WireEnd extends Error {
  override name = 'WireEnd';
}

/** Bytes that are not what the protocol says comes next. */
export class WireError extends Error {
  override name = 'WireError';
}

/**
 * Reads the protocol's framing from bytes that arrive in arbitrary pieces: `push` them as they
 * come, `end` at the end of the stream; each read waits until its bytes are there.
 */
export class WireReader {
  private chunks: Buffer[] = [];
  private available = 0;
  private ended = false;
  private wake: (() => void) | undefined;
  /** Bytes handed out by reads so far. */
  consumed = 0;

  push(chunk: Buffer): void {
    if (this.ended || chunk.length === 0) return;
    this.chunks.push(chunk);
    this.available += chunk.length;
    this.notify();
  }

  end(): void {
    this.ended = true;
    this.notify();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private tapped: Buffer[] | undefined;

  /** Keeps every byte read from now on; the function returned stops that and gives them. */
  tap(): () => Buffer {
    const taken: Buffer[] = [];
    this.tapped = taken;
    return () => {
      if (this.tapped === taken) this.tapped = undefined;
      return Buffer.concat(taken);
    };
  }

  /** Bytes pushed and not read yet, taken out of the reader. */
  rest(): Buffer {
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.available = 0;
    return rest;
  }

  async bytes(n: number): Promise<Buffer> {
    while (this.available < n) {
      if (this.ended) throw new WireEnd(`the stream ended ${n - this.available} bytes short of a message`);
      if (this.wake) throw new Error('WireReader: two reads at once');
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    let first = this.chunks[0] ?? Buffer.alloc(0);
    if (first.length < n) {
      first = Buffer.concat(this.chunks);
      this.chunks = [first];
    }
    const out = first.subarray(0, n);
    if (first.length > n) this.chunks[0] = first.subarray(n);
    else this.chunks.shift();
    this.available -= n;
    this.consumed += n;
    this.tapped?.push(out);
    return out;
  }

  async u64(): Promise<number> {
    const value = (await this.bytes(8)).readBigUInt64LE(0);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new WireError(`a number too large for the opening (${value})`);
    return Number(value);
  }

  async string(limit = MAX_OPENING_STRING): Promise<string> {
    const length = await this.u64();
    if (length > limit) throw new WireError(`a string of ${length} bytes, more than ${limit}`);
    const padded = length + ((8 - (length % 8)) % 8);
    return (await this.bytes(padded)).subarray(0, length).toString('utf8');
  }

  async strings(): Promise<string[]> {
    const count = await this.u64();
    if (count > MAX_OPENING_LIST) throw new WireError(`a list of ${count} strings, more than ${MAX_OPENING_LIST}`);
    const out: string[] = [];
    for (let i = 0; i < count; i++) out.push(await this.string());
    return out;
  }
}

export function encodeU64(...values: number[]): Buffer {
  const out = Buffer.alloc(8 * values.length);
  values.forEach((value, i) => out.writeBigUInt64LE(BigInt(value), 8 * i));
  return out;
}

export function encodeString(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  return Buffer.concat([encodeU64(bytes.length), bytes, Buffer.alloc((8 - (bytes.length % 8)) % 8)]);
}

export function encodeStrings(list: readonly string[]): Buffer {
  return Buffer.concat([encodeU64(list.length), ...list.map(encodeString)]);
}

export async function expectMagic(reader: WireReader, magic: number, what: string): Promise<void> {
  const got = await reader.u64();
  if (got !== magic) throw new WireError(`${what}: expected magic 0x${magic.toString(16)}, got 0x${got.toString(16)}`);
}

/** The client's obsolete CPU-affinity and reserveSpace words (step 3). */
export async function readClientPostHandshake(reader: WireReader, negotiated: number): Promise<void> {
  if (minorOf(negotiated) >= 14 && (await reader.u64()) !== 0) await reader.u64();
  if (minorOf(negotiated) >= 11) await reader.u64();
}

/** The rest of a wopSetOptions message (step 4), after its op word. */
export async function readSetOptionsBody(reader: WireReader, negotiated: number): Promise<void> {
  // keepFailed … useSubstitutes: 12 words.
  for (let i = 0; i < 12; i++) await reader.u64();
  if (minorOf(negotiated) >= 12) {
    const count = await reader.u64();
    if (count > MAX_OPENING_LIST) throw new WireError(`SetOptions with ${count} overrides`);
    for (let i = 0; i < 2 * count; i++) await reader.string();
  }
}

/** What a daemon said in one stderr stream: its log lines, and its error if it refused. */
export interface StderrOutcome {
  messages: string[];
  error?: string;
}

async function skipFields(reader: WireReader): Promise<void> {
  const count = await reader.u64();
  if (count > MAX_OPENING_LIST) throw new WireError(`a log entry with ${count} fields`);
  for (let i = 0; i < count; i++) {
    const type = await reader.u64();
    if (type === 0) await reader.u64();
    else if (type === 1) await reader.string();
    else throw new WireError(`a log field of type ${type}`);
  }
}

/** Reads a daemon's stderr stream up to STDERR_LAST or STDERR_ERROR (which ends it too). */
export async function readStderrStream(reader: WireReader, negotiated: number): Promise<StderrOutcome> {
  const messages: string[] = [];
  for (;;) {
    const type = await reader.u64();
    switch (type) {
      case STDERR_LAST:
        return { messages };
      case STDERR_NEXT:
        messages.push(await reader.string());
        break;
      case STDERR_ERROR: {
        if (minorOf(negotiated) < 26) {
          const error = await reader.string();
          await reader.u64(); // exit status
          return { messages, error };
        }
        await reader.string(); // "Error"
        await reader.u64(); // level
        await reader.string(); // name, unused
        const error = await reader.string();
        await reader.u64(); // havePos, always 0
        const traces = await reader.u64();
        for (let i = 0; i < Math.min(traces, MAX_OPENING_LIST); i++) {
          await reader.u64();
          await reader.string();
        }
        return { messages, error };
      }
      case STDERR_START_ACTIVITY:
        for (let i = 0; i < 3; i++) await reader.u64(); // id, level, type
        await reader.string();
        await skipFields(reader);
        await reader.u64(); // parent
        break;
      case STDERR_STOP_ACTIVITY:
        await reader.u64();
        break;
      case STDERR_RESULT:
        await reader.u64();
        await reader.u64();
        await skipFields(reader);
        break;
      default:
        // STDERR_READ and STDERR_WRITE ask the client for data: never part of an opening.
        throw new WireError(`stderr message 0x${type.toString(16)} in the opening`);
    }
  }
}

/** A daemon's refusal of the operation the client sends next, as `readStderrStream` reads it. */
export function encodeStderrError(message: string, negotiated: number): Buffer {
  if (minorOf(negotiated) < 26) return Buffer.concat([encodeU64(STDERR_ERROR), encodeString(message), encodeU64(1)]);
  // "Error", its level (0: error), its name (unused), the message, no position, no traces.
  return Buffer.concat([
    encodeU64(STDERR_ERROR),
    encodeString('Error'),
    encodeU64(0),
    encodeString('Error'),
    encodeString(message),
    encodeU64(0, 0),
  ]);
}

/** One log message of the daemon's stderr stream (printed by the client as an error-level line). */
export function encodeStderrNext(message: string): Buffer {
  return Buffer.concat([encodeU64(STDERR_NEXT), encodeString(message)]);
}

export function encodeStderrLast(messages: readonly string[] = []): Buffer {
  return Buffer.concat([...messages.map(encodeStderrNext), encodeU64(STDERR_LAST)]);
}

/**
 * What a worker answered in a session's opening, kept to answer the next client the same way.
 * JSON as it is (the daemon's state file).
 */
export interface WorkerHandshakeRecord {
  protocol: 'worker';
  /** The daemon's protocol version word: 0x122 (1.34) for Nix 2.8–2.14, 0x126 (1.38) for 2.24 on. */
  version: number;
  /** Its feature set; null when the recording session negotiated less than 1.38 and so never saw it. */
  features: string[] | null;
  /** Its Nix version string; null when below 1.33. */
  nixVersion: string | null;
  /** Its trust in us (0 unknown, 1 trusted, 2 not trusted); null when below 1.35. */
  trust: number | null;
  /** The log lines it sent before its first STDERR_LAST. */
  startupMessages: string[];
}

export interface ServeHandshakeRecord {
  protocol: 'serve';
  /** The server's version word: 0x207 (2.7) for Nix 2.8–2.35. */
  version: number;
}

export type HandshakeRecord = WorkerHandshakeRecord | ServeHandshakeRecord;
export type HandshakeProtocol = HandshakeRecord['protocol'];

export function intersectFeatures(a: readonly string[], b: readonly string[]): string[] {
  return a.filter((f) => b.includes(f)).sort();
}

/**
 * A fresh record over an older one: what the fresh session did not see (features below 1.38, say)
 * is kept from the older one while the worker still speaks the same version.
 */
export function mergeRecords(previous: HandshakeRecord | undefined, fresh: HandshakeRecord): HandshakeRecord {
  if (
    !previous ||
    previous.protocol !== fresh.protocol ||
    previous.version !== fresh.version ||
    fresh.protocol === 'serve' ||
    previous.protocol === 'serve'
  )
    return fresh;
  return {
    ...fresh,
    features: fresh.features ?? previous.features,
    nixVersion: fresh.nixVersion ?? previous.nixVersion,
    trust: fresh.trust ?? previous.trust,
  };
}

/** A record read back from the state file, or undefined when it is not one (an older daemon's file). */
export function parseHandshakeRecord(value: unknown): HandshakeRecord | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const v = value as Record<string, unknown>;
  const isVersion = typeof v['version'] === 'number' && Number.isInteger(v['version']) && v['version'] >= 0 && v['version'] <= 0xffff;
  if (!isVersion) return undefined;
  if (v['protocol'] === 'serve') return { protocol: 'serve', version: v['version'] as number };
  if (v['protocol'] !== 'worker') return undefined;
  const strings = (x: unknown): x is string[] => Array.isArray(x) && x.every((s) => typeof s === 'string');
  const features = v['features'];
  const nixVersion = v['nixVersion'];
  const trust = v['trust'];
  const startup = v['startupMessages'];
  if (!(features === null || strings(features))) return undefined;
  if (!(nixVersion === null || typeof nixVersion === 'string')) return undefined;
  if (!(trust === null || trust === 0 || trust === 1 || trust === 2)) return undefined;
  if (!strings(startup)) return undefined;
  return { protocol: 'worker', version: v['version'] as number, features, nixVersion, trust, startupMessages: startup };
}
