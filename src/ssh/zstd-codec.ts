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
}

/**
 * From this level up, the encoder also looks back 2^27 bytes (128 MiB) for repeats (zstd's
 * long-distance matching): store paths repeat across files (the same libraries, the same
 * headers), and the high levels are for slow uplinks, where bytes cost more than memory. A busy
 * session then holds up to ≈ 150 MB; the relay accepts windows up to 2 GiB.
 */
export const LONG_WINDOW_FROM_LEVEL = 9;
export const LONG_WINDOW_LOG = 27;

/** The encoder for a pool's `compressionLevel`. */
export function zstdEncoderFor(level: number): ZstdEncoder {
  return new ZstdEncoder({ level, ...(level >= LONG_WINDOW_FROM_LEVEL ? { longWindowLog: LONG_WINDOW_LOG } : {}) });
}

const OUT_CHUNK = 128 * 1024;
/** A flush or an end takes no input: one empty buffer for all of them (flushes are per event-loop turn). */
const NO_INPUT = Buffer.alloc(0);

/** One zstd stream: `push` data, `flush` when the peer must see everything so far, `end` once. */
export class ZstdEncoder {
  private readonly binding = zstdBinding();
  private readonly cctx = new this.binding.CCtx();
  private readonly out = Buffer.allocUnsafe(OUT_CHUNK);

  constructor(options: ZstdEncoderOptions) {
    const p = this.binding.CParameter;
    this.cctx.setParameter(p.compressionLevel, options.level);
    if (options.longWindowLog !== undefined) {
      this.cctx.setParameter(p.enableLongDistanceMatching, 1);
      this.cctx.setParameter(p.windowLog, options.longWindowLog);
    }
  }

  push(chunk: Buffer): Buffer[] {
    return this.run(chunk, this.binding.EndDirective.continue);
  }

  flush(): Buffer[] {
    return this.run(NO_INPUT, this.binding.EndDirective.flush);
  }

  end(): Buffer[] {
    return this.run(NO_INPUT, this.binding.EndDirective.end);
  }

  private run(input: Buffer, directive: ZstdBinding.EndDirective): Buffer[] {
    const parts: Buffer[] = [];
    let src = input;
    for (;;) {
      const [left, written, read] = this.cctx.compressStream2(this.out, src, directive);
      if (written > 0) parts.push(Buffer.from(this.out.subarray(0, written)));
      src = src.subarray(read);
      // continue: done once the input is taken; flush and end: once nothing is left to write.
      if (src.length === 0 && (directive === this.binding.EndDirective.continue || left === 0)) return parts;
    }
  }
}

/**
 * The other side's zstd stream, decompressed as the reader takes it: `write` queues input, each
 * `read` hands out at most 128 KiB. A frame that inflates 1000:1 (a 2 GiB output of zeros)
 * waits as input, not as output in memory.
 */
export class ZstdDecoder {
  private readonly binding = zstdBinding();
  private readonly dctx = new this.binding.DCtx();
  private readonly out = Buffer.allocUnsafe(OUT_CHUNK);
  /** libzstd's last hint: 0 once a frame is complete (and all of it handed out). */
  private hint = 0;
  /** Input not decoded yet. */
  private readonly input: Buffer[] = [];
  /** The last call filled the output: libzstd may have more without new input. */
  private outFull = false;

  /**
   * Whether the stream so far stops inside a frame. At the end of the input that means it was
   * cut: a peer that ends its stream properly closes the frame. (No input at all is no frame.)
   */
  get midFrame(): boolean {
    return this.hint !== 0;
  }

  /** Whether a `read` may hand out more before the next `write`. */
  get pending(): boolean {
    return this.input.length > 0 || this.outFull;
  }

  write(chunk: Buffer): void {
    if (chunk.length > 0) this.input.push(chunk);
  }

  /** The next piece of output (at most 128 KiB), or undefined when the input so far is all decoded. */
  read(): Buffer | undefined {
    for (;;) {
      const src = this.input[0];
      if (!src && !this.outFull) return undefined;
      const [hint, written, read] = this.dctx.decompressStream(this.out, src ?? NO_INPUT);
      // A call that moved nothing (after a frame's end, the next frame's header size) says nothing new.
      if (read > 0 || written > 0) this.hint = hint;
      this.outFull = written === this.out.length;
      if (src && read === src.length) this.input.shift();
      else if (src) this.input[0] = src.subarray(read);
      if (written > 0) return Buffer.from(this.out.subarray(0, written));
    }
  }
}
