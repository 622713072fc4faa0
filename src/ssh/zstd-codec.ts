/**
 * The daemon's end of compression "zstd": one zstd stream each way per session, through
 * libzstd's streaming API (npm `zstd-napi`, loaded only when a pool uses zstd). The worker's end
 * is worker/zstd-relay.py (its contract: zstd-relay.ts). The Nix protocols are request and answer, so a message must never sit
 * in a compressor: the encoder is flushed whenever the client pauses (see session-pipe.ts),
 * which ends a zstd block but keeps the stream's history, so later data still refers back to it.
 */
import { createRequire } from 'node:module';
import type * as ZstdBinding from 'zstd-napi/binding.js';
import { UserError } from '../core/errors.js';
import { MAX_BLOCK, RAW_FRAME_HEADER, skippableAt } from './zstd-frames.js';

type Binding = typeof ZstdBinding;

let loaded: Binding | Error | undefined;

export class ZstdUnavailable extends UserError {
  override name = 'ZstdUnavailable';
}

/** libzstd through zstd-napi, or a ZstdUnavailable saying why not (a build without a compiler, say). */
export function zstdBinding(): Binding {
  if (loaded === undefined) {
    try {
      loaded = createRequire(import.meta.url)('zstd-napi/binding.js') as Binding;
    } catch (err) {
      loaded = err as Error;
    }
  }
  if (loaded instanceof Error) {
    throw new ZstdUnavailable(
      `compression "zstd" needs the npm package zstd-napi, which did not load (${loaded.message.split('\n')[0]}); reinstall with a C++ compiler, or use "zlib" or "none"`,
    );
  }
  return loaded;
}

/** Encoder settings: the level, and a long-distance window (2^windowLog bytes) when set. */
export interface ZstdEncoderOptions {
  level: number;
  /** Enables long-distance matching over a window of 2^windowLog bytes (memory: about that much per session). */
  longWindowLog?: number;
  /** zstd's window, 2^windowLog bytes, instead of the level's own (with longWindowLog unset). */
  windowLog?: number;
  /** Caps zstd's hash and chain tables at 2^tableLog entries each (4 bytes an entry). */
  tableLog?: number;
}

/**
 * From this level up, a fixed level's encoder also looks back 2^27 bytes (128 MiB) for repeats
 * (zstd's long-distance matching): store paths repeat across files (the same libraries, the same
 * headers), and the high levels are for slow uplinks, where bytes cost more than memory. A busy
 * session then holds up to ≈ 150 MB; the relay accepts windows up to 2^27.
 */
export const LONG_WINDOW_FROM_LEVEL = 9;
export const LONG_WINDOW_LOG = 27;

/** A fixed level's settings. */
export function fixedLevelOptions(level: number): ZstdEncoderOptions {
  return { level, ...(level >= LONG_WINDOW_FROM_LEVEL ? { longWindowLog: LONG_WINDOW_LOG } : {}) };
}

/** The window a setting asks for (zstd's largest default when it leaves it to the level). */
function windowLogOf(options: ZstdEncoderOptions): number {
  return options.longWindowLog ?? options.windowLog ?? 23;
}

const OUT_CHUNK = 128 * 1024;
/**
 * One output buffer for every context: the calls are synchronous and each copies out what it
 * wrote, so sessions need not hold 128 KiB each.
 */
let sharedOut: Buffer | undefined;
function outBuffer(): Buffer {
  sharedOut ??= Buffer.allocUnsafe(OUT_CHUNK);
  return sharedOut;
}
/** A flush or an end takes no input: one empty buffer for all of them (flushes are per event-loop turn). */
const NO_INPUT = Buffer.alloc(0);

/** The most a one-shot frame carries: its worst case (zstd's compress bound) fits the shared output buffer. */
const ONE_SHOT_MAX = 64 * 1024;
/** One context for every one-shot frame (the calls are synchronous): zstd sizes it to the input, not to a window. */
let sharedOneShot: InstanceType<Binding['CCtx']> | undefined;

/**
 * `data` as complete frames (at most 64 KiB each) at `level`, made without a context of the
 * caller's: each frame says its size, so zstd sizes its tables and the decoder's window to it. For
 * bytes whose compressibility is not known yet (see AdaptiveZstdEncoder's probe): they cost no
 * session memory, and data that compresses still goes compressed.
 */
export function oneShotFrames(data: Buffer, level: number): Buffer[] {
  const binding = zstdBinding();
  const cctx = (sharedOneShot ??= new binding.CCtx());
  const out = outBuffer();
  const parts: Buffer[] = [];
  for (let at = 0; at < data.length; at += ONE_SHOT_MAX) {
    const written = cctx.compress(out, data.subarray(at, at + ONE_SHOT_MAX), level);
    parts.push(Buffer.from(out.subarray(0, written)));
  }
  return parts;
}

/**
 * zstd frames: `push` data, `flush` when the peer must see everything so far, `end` to close the
 * frame. After an end the next push starts a new frame, with the settings of the last `configure`
 * (one zstd stream: concatenated frames). libzstd's context is made at the first push.
 */
export class ZstdEncoder {
  private readonly binding = zstdBinding();
  private cctx: InstanceType<Binding['CCtx']> | undefined;
  private options: ZstdEncoderOptions;
  /** A frame is open: configure waits for its end. */
  private inFrame = false;
  private configured = false;

  constructor(options: ZstdEncoderOptions) {
    this.options = options;
  }

  /** Settings for the next frame (call between frames). */
  configure(options: ZstdEncoderOptions): void {
    if (this.inFrame) throw new Error('zstd: settings change only between frames');
    // libzstd keeps a context's memory for the largest settings it had: a smaller window gets a new one.
    if (windowLogOf(options) < windowLogOf(this.options)) this.release();
    this.options = options;
    this.configured = false;
  }

  /** Whether a libzstd context is held (made at the first push, let go by `release`). */
  get holdsContext(): boolean {
    return this.cctx !== undefined;
  }

  /** Lets the context go (its memory with the next GC) until the next push: for pass-through stretches. */
  release(): void {
    if (this.inFrame) throw new Error('zstd: a context is released only between frames');
    this.cctx = undefined;
    this.configured = false;
  }

  push(chunk: Buffer): Buffer[] {
    return this.run(chunk, this.binding.EndDirective.continue);
  }

  flush(): Buffer[] {
    return this.inFrame ? this.run(NO_INPUT, this.binding.EndDirective.flush) : [];
  }

  /** Ends the frame (a stream that had no data still gets an empty frame: the peer sees a proper end). */
  end(): Buffer[] {
    const parts = this.run(NO_INPUT, this.binding.EndDirective.end);
    this.inFrame = false;
    return parts;
  }

  private context(): InstanceType<Binding['CCtx']> {
    const cctx = (this.cctx ??= new this.binding.CCtx());
    if (!this.configured) {
      const p = this.binding.CParameter;
      const o = this.options;
      cctx.reset(this.binding.ResetDirective.sessionAndParameters);
      cctx.setParameter(p.compressionLevel, o.level);
      if (o.longWindowLog !== undefined) {
        cctx.setParameter(p.enableLongDistanceMatching, 1);
        cctx.setParameter(p.windowLog, o.longWindowLog);
      } else if (o.windowLog !== undefined) cctx.setParameter(p.windowLog, o.windowLog);
      if (o.tableLog !== undefined) {
        cctx.setParameter(p.hashLog, o.tableLog);
        cctx.setParameter(p.chainLog, o.tableLog);
      }
      this.configured = true;
    }
    return cctx;
  }

  private run(input: Buffer, directive: ZstdBinding.EndDirective): Buffer[] {
    const cctx = this.context();
    this.inFrame = true;
    const out = outBuffer();
    const parts: Buffer[] = [];
    let src = input;
    for (;;) {
      const [left, written, read] = cctx.compressStream2(out, src, directive);
      if (written > 0) parts.push(Buffer.from(out.subarray(0, written)));
      src = src.subarray(read);
      // continue: done once the input is taken; flush and end: once nothing is left to write.
      if (src.length === 0 && (directive === this.binding.EndDirective.continue || left === 0)) return parts;
    }
  }
}

/**
 * The other side's zstd stream, decompressed as the reader takes it: `write` queues input, each
 * `read` hands out at most 128 KiB. A frame that inflates 1000:1 (a 2 GiB output of zeros)
 * waits as input, not as output in memory. Our skippable frames between the frames are the
 * relay's reports (zstd-frames.ts): the last one is `report`. Our pass-through frames (those that
 * start with RAW_FRAME_HEADER) are read here block by block and handed out as they came, without
 * libzstd: a session sending data that does not compress holds no libzstd context.
 */
export class ZstdDecoder {
  private readonly binding = zstdBinding();
  /** Made at the first libzstd frame: a session whose worker sends nothing holds no window. */
  private dctx: InstanceType<Binding['DCtx']> | undefined;
  /** libzstd's last hint: 0 once a frame is complete (and all of it handed out). */
  private hint = 0;
  /** Input not decoded yet. */
  private readonly input: Buffer[] = [];
  /** The last call filled the output: libzstd may have more without new input. */
  private outFull = false;
  /** Inside one of our pass-through frames: the bytes of its current block still to hand out, and whether it is the last. */
  private raw: { left: number; last: boolean } | undefined;
  /** The input so far ends inside a report, a pass-through frame's header or a block's header: reading waits for its rest. */
  private short = false;
  /** The payload of the last report (a skippable frame of ours) in the stream. */
  report: Buffer | undefined;

  /**
   * Whether the stream so far stops inside a frame. At the end of the input that means it was
   * cut: a peer that ends its stream properly closes the frame. (No input at all is no frame.)
   */
  get midFrame(): boolean {
    return this.hint !== 0 || this.short || this.raw !== undefined;
  }

  /** Whether a `read` may hand out more before the next `write`. */
  get pending(): boolean {
    return (this.input.length > 0 && !this.short) || this.outFull;
  }

  /** Whether a libzstd context (and its buffers) is held now. */
  get holdsContext(): boolean {
    return this.dctx !== undefined;
  }

  write(chunk: Buffer): void {
    if (chunk.length > 0) this.input.push(chunk);
  }

  /** The next piece of output (at most 128 KiB), or undefined when the input so far is all decoded. */
  read(): Buffer | undefined {
    const out = outBuffer();
    for (;;) {
      if (this.raw) {
        const part = this.readRaw();
        if (part !== null) return part;
        continue;
      }
      if (this.hint === 0 && !this.outFull) {
        if (!this.takeReports()) return undefined;
        const ours = this.startRaw();
        if (ours === 'short') return undefined;
        if (ours) continue;
      }
      const src = this.input[0];
      if (!src && !this.outFull) return undefined;
      if (this.hint === 0 && src) this.sizeFor(src);
      this.dctx ??= new this.binding.DCtx();
      const [hint, written, read] = this.dctx.decompressStream(out, src ?? NO_INPUT);
      // A call that moved nothing (after a frame's end, the next frame's header size) says nothing new.
      if (read > 0 || written > 0) this.hint = hint;
      // Hint 0: the frame is whole and all of it handed out, even when it filled the buffer exactly.
      this.outFull = written === out.length && hint !== 0;
      if (src) this.drop(read);
      if (written > 0) return Buffer.from(out.subarray(0, written));
    }
  }

  /** The window of the current context's largest frame so far (bytes). */
  private window = 0;

  /**
   * Before a frame: libzstd keeps a context's buffers for the largest window it decoded, so a
   * frame with at most half that window (the worker's level went down) gets a new context, and
   * the old one's memory goes with the next GC.
   */
  private sizeFor(head: Buffer): void {
    const window = frameWindow(head);
    if (window === undefined) return;
    if (this.dctx && window * 2 <= this.window) this.dropContext();
    this.window = Math.max(this.window, window);
  }

  private dropContext(): void {
    this.dctx = undefined;
    this.window = 0;
  }

  /**
   * Between frames: whether one of our pass-through frames starts here (its header is then
   * taken off the input), or 'short' while the input is a part of its header. Its data needs no
   * context: the one held goes (the next libzstd frame makes a new one).
   */
  private startRaw(): boolean | 'short' {
    const head = this.peek(RAW_FRAME_HEADER.length);
    if (head.length === 0 || !head.equals(RAW_FRAME_HEADER.subarray(0, head.length))) return false;
    this.short = head.length < RAW_FRAME_HEADER.length;
    if (this.short) return 'short';
    this.drop(RAW_FRAME_HEADER.length);
    this.raw = { left: 0, last: false };
    this.dropContext();
    return true;
  }

  /**
   * In a pass-through frame: the next piece of a block's data as it came (a part of an input
   * chunk, not a copy), undefined when the input so far ends before it, null when a block
   * header was taken (the caller goes on).
   */
  private readRaw(): Buffer | undefined | null {
    const raw = this.raw as { left: number; last: boolean };
    if (raw.left === 0) {
      const header = this.peek(BLOCK_HEADER_BYTES);
      this.short = header.length > 0 && header.length < BLOCK_HEADER_BYTES;
      if (header.length < BLOCK_HEADER_BYTES) return undefined;
      const value = header.readUIntLE(0, BLOCK_HEADER_BYTES);
      const size = value >>> 3;
      if ((value & 0b110) !== 0) throw new Error('zstd: a pass-through frame holds a block that is not raw');
      if (size > MAX_BLOCK) throw new Error(`zstd: a pass-through frame holds a block of ${size} bytes, more than ${MAX_BLOCK}`);
      this.drop(BLOCK_HEADER_BYTES);
      raw.left = size;
      raw.last = (value & 1) === 1;
      if (size === 0 && raw.last) this.raw = undefined;
      return null;
    }
    const src = this.input[0];
    if (!src) return undefined;
    const part = src.subarray(0, Math.min(raw.left, OUT_CHUNK));
    raw.left -= part.length;
    this.drop(part.length);
    // The last block handed out whole: the frame is over (as libzstd's hint is 0 with a frame's last output).
    if (raw.left === 0 && raw.last) this.raw = undefined;
    return part;
  }

  /** The first `bytes` of the input (fewer when it holds fewer), joined across chunks if need be. */
  private peek(bytes: number): Buffer {
    const head = this.input[0] ?? NO_INPUT;
    if (head.length >= bytes || this.input.length < 2) return head.subarray(0, bytes);
    const parts: Buffer[] = [];
    let length = 0;
    for (const chunk of this.input) {
      if (length === bytes) break;
      const part = chunk.subarray(0, bytes - length);
      parts.push(part);
      length += part.length;
    }
    return Buffer.concat(parts, length);
  }

  /** Takes `bytes` off the front of the input. */
  private drop(bytes: number): void {
    while (bytes > 0) {
      const head = this.input[0] as Buffer;
      if (bytes < head.length) {
        this.input[0] = head.subarray(bytes);
        return;
      }
      bytes -= head.length;
      this.input.shift();
    }
  }

  /** Between frames: takes the reports off the input; false while the input ends inside one. */
  private takeReports(): boolean {
    for (;;) {
      const head = this.input[0];
      this.short = false;
      if (!head) return true;
      const found = skippableAt(head);
      if (found === undefined) return true;
      if (found === 'short') {
        this.short = this.input.length < 2;
        if (this.short) return false;
        this.input.splice(0, 2, Buffer.concat([head, this.input[1] as Buffer]));
        continue;
      }
      this.report = Buffer.from(found.payload);
      this.drop(found.length);
    }
  }
}

/** A zstd block's header: last-block bit, type, size. */
const BLOCK_HEADER_BYTES = 3;

/** A zstd frame's window size from its header at the start of `head` (RFC 8878, 3.1.1.1), if there. */
export function frameWindow(head: Buffer): number | undefined {
  if (head.length < 6 || head.readUInt32LE(0) !== 0xfd2fb528) return undefined;
  const descriptor = head[4] as number;
  if (!(descriptor & 0x20)) {
    const windowByte = head[5] as number;
    const base = 2 ** (10 + (windowByte >> 3));
    return base + (base / 8) * (windowByte & 7);
  }
  // Single segment: the window is the content size, after the dictionary id.
  const dictionaryBytes = [0, 1, 2, 4][descriptor & 3] as number;
  const sizeBytes = [1, 2, 4, 8][descriptor >> 6] as number;
  const at = 5 + dictionaryBytes;
  if (head.length < at + sizeBytes) return undefined;
  if (sizeBytes === 1) return head[at];
  if (sizeBytes === 2) return head.readUInt16LE(at) + 256;
  if (sizeBytes === 4) return head.readUInt32LE(at);
  return Number(head.readBigUInt64LE(at));
}
