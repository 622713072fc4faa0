/**
 * Pipes one Nix session between the client's channel (ssh2 server side) and the worker's channel
 * (ssh2 client side), byte for byte, with backpressure both ways. Handles ssh2's pitfalls:
 * - stdout and stderr of a server channel share one window, and ssh2 1.17 resumes only one of two
 *   pending writes when it reopens: so both go through one serial writer, one write at a time;
 * - ending the client channel before `exit()` drops the exit status: so drain, exit, then end;
 * - the worker channel's `close` can come before its stderr ended: wait for both.
 */
import { performance } from 'node:perf_hooks';
import { Duplex } from 'node:stream';
import type { ClientChannel, ServerChannel } from 'ssh2';
import { limitReadBuffer } from './ssh2-internals.js';
import type { SessionCodec } from './worker-connection.js';
import type { WriteGate } from './write-gate.js';

/**
 * Bytes queued per session, each way, before its source is paused. Well below ssh2's own 2 MiB
 * channel buffers: with many sessions streaming at once, per-session buffering is the daemon's memory.
 */
export const HIGH_WATER = 256 * 1024;

/**
 * What a paused channel may hold before ssh2 stops granting its peer more window. ssh2 grants
 * window while `push()` returns true, i.e. below the stream's high-water mark, which it sets to
 * 2 MiB: so a paused channel held up to 2 MiB plus the window granted meanwhile (2 MiB). With one
 * packet, a paused channel holds at most what its peer was already allowed to send. Set through
 * ssh2-internals.ts (`limitReadBuffer`).
 */
export const PAUSED_READ_BUFFER = 32 * 1024;

const SIGNALS = new Set(['ABRT', 'ALRM', 'FPE', 'HUP', 'ILL', 'INT', 'KILL', 'PIPE', 'QUIT', 'SEGV', 'TERM', 'USR1', 'USR2']);

export interface PipeResult {
  /** Exit status of the remote command; undefined if it never said. */
  code?: number;
  signal?: string;
  /** True when the client went away first (the normal end of a Nix session). */
  clientClosed: boolean;
  bytesUp: number;
  bytesDown: number;
  /** Bytes of stdin and stdout on the worker's channel: with a codec, what crossed the link compressed. */
  wireUp: number;
  wireDown: number;
}

/** Writes stdout and stderr chunks to a server channel strictly one after the other. */
export class SerialWriter {
  private readonly queue: { err: boolean; chunk: Buffer }[] = [];
  private writing = false;
  private queued = 0;
  /** Set while the source is paused; cleared (and the source resumed) once the queue drains below the mark. */
  private high = false;
  private idleWaiters: (() => void)[] = [];
  /** Bytes of the write in flight. */
  private inFlight = 0;

  constructor(
    private readonly channel: Pick<ServerChannel, 'write' | 'stderr'>,
    private readonly onLow: () => void,
    private readonly onHigh: () => void,
    /** The client connection's socket: a write counts as done once the socket takes it. */
    private readonly gate?: Pick<WriteGate, 'open' | 'whenOpen'>,
  ) {}

  push(err: boolean, chunk: Buffer): void {
    this.queue.push({ err, chunk });
    this.queued += chunk.length;
    if (!this.high && this.queued >= HIGH_WATER) {
      this.high = true;
      this.onHigh();
    }
    this.pump();
  }

  private pump(): void {
    if (this.writing) return;
    const next = this.queue.shift();
    if (!next) {
      for (const done of this.idleWaiters.splice(0)) done();
      return;
    }
    this.writing = true;
    this.inFlight = next.chunk.length;
    (next.err ? this.channel.stderr : this.channel).write(next.chunk, this.onChannelTook);
  }

  // Bound once: the pipe's hot path allocates no closure per write.
  private readonly onChannelTook = (): void => {
    if (this.gate && !this.gate.open) this.gate.whenOpen(this.written);
    else this.written();
  };

  private readonly written = (): void => {
    this.writing = false;
    // After discard() the count restarted at zero.
    this.queued = Math.max(0, this.queued - this.inFlight);
    if (this.high && this.queued < HIGH_WATER) {
      this.high = false;
      this.onLow();
    }
    this.pump();
  };

  /** Whether the source is paused: HIGH_WATER bytes wait. */
  get full(): boolean {
    return this.high;
  }

  /** Resolves when everything queued has been handed to the channel. */
  drained(): Promise<void> {
    if (!this.writing && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Drops what is queued (the client is gone). */
  discard(): void {
    this.queue.length = 0;
    this.queued = 0;
    this.high = false;
    for (const done of this.idleWaiters.splice(0)) done();
  }
}

/** The sockets of the two connections a session rides on (each shared with other sessions on the worker side). */
export interface SessionGates {
  toClient?: Pick<WriteGate, 'open' | 'whenOpen'> | undefined;
  toWorker?: Pick<WriteGate, 'open' | 'whenOpen'> | undefined;
}

/**
 * Runs before the pipe (an early session's splice): gets the worker's stream as the client's Nix
 * sees it (decoded, with a codec), and resolves with bytes of the worker's to give the client
 * first (ones read after the worker's stream ended), once both streams are paused after what it
 * read. A rejection ends the session: the worker's channel is closed, and pipeSession rejects.
 */
export type SessionOpening = (worker: Duplex) => Promise<Buffer | undefined>;

/**
 * With a codec (compression "zstd"), stdin is encoded on its way up and stdout decoded on its way
 * down; the encoder is flushed as soon as the client pauses (once per turn of the event loop), so
 * a protocol message never waits in it, while a bulk upload still makes full zstd blocks.
 */
export function pipeSession(
  client: ServerChannel,
  worker: ClientChannel,
  gates: SessionGates = {},
  codec?: SessionCodec,
  opening?: SessionOpening,
): Promise<PipeResult> {
  return new Promise((resolve, reject) => {
    const result: PipeResult = { clientClosed: false, bytesUp: 0, bytesDown: 0, wireUp: 0, wireDown: 0 };
    let stdoutEnded = false;
    let stderrEnded = false;
    let workerClosed = false;
    let finished = false;

    for (const stream of [client, worker, worker.stderr]) limitReadBuffer(stream, PAUSED_READ_BUFFER);

    const writer = new SerialWriter(
      client,
      () => {
        worker.stderr.resume();
        // What the decoder holds goes first; the worker's next bytes once it is all out.
        if (decodeDown()) worker.resume();
      },
      () => {
        worker.pause();
        worker.stderr.pause();
      },
      gates.toClient,
    );

    // Client → worker: stdin. Paused while HIGH_WATER bytes wait for the worker's window (pipe()
    // would wait for ssh2's 2 MiB buffer) or the worker connection's socket is full; the
    // client's EOF becomes the worker's EOF.
    const toWorker = gates.toWorker;
    let upPaused = false;
    let pausedAt = 0; // when the upload paused for the link: the adaptive encoder counts the wait
    let upWaitsForGate = false;
    const upBlocked = (): boolean => worker.writableLength >= HIGH_WATER || (toWorker !== undefined && !toWorker.open);
    const resumeUp = (): void => {
      upWaitsForGate = false;
      if (!upPaused || worker.writableLength >= HIGH_WATER) return; // the write callback comes back here
      if (toWorker !== undefined && !toWorker.open) {
        upWaitsForGate = true;
        toWorker.whenOpen(resumeUp);
        return;
      }
      upPaused = false;
      codec?.encoder.waited?.(performance.now() - pausedAt);
      client.resume();
    };
    const onUpWritten = (): void => {
      if (!upWaitsForGate) resumeUp();
    };
    const writeUp = (chunk: Buffer): void => {
      result.wireUp += chunk.length;
      worker.write(chunk, onUpWritten);
    };
    let flushScheduled: NodeJS.Immediate | undefined;
    const flushUp = (): void => {
      flushScheduled = undefined;
      if (!codec || workerClosed || !worker.writable) return;
      for (const part of codec.encoder.flush()) writeUp(part);
    };
    /** Ended by the opening (the client's EOF reached the worker through it). */
    let upEnded = false;
    const endUp = (): void => {
      if (upEnded || workerClosed) return;
      upEnded = true;
      if (codec && worker.writable) {
        if (flushScheduled) clearImmediate(flushScheduled);
        flushScheduled = undefined;
        for (const part of codec.encoder.end()) writeUp(part);
      }
      worker.end();
    };
    const sendUp = (chunk: Buffer): void => {
      if (workerClosed || !worker.writable) return;
      if (codec) {
        for (const part of codec.encoder.push(chunk)) writeUp(part);
        flushScheduled ??= setImmediate(flushUp);
      } else writeUp(chunk);
    };
    const startUp = (): void => {
      client.on('data', (chunk: Buffer) => {
        result.bytesUp += chunk.length;
        if (workerClosed || !worker.writable) return;
        sendUp(chunk);
        if (!upPaused && upBlocked()) {
          upPaused = true;
          pausedAt = performance.now();
          client.pause();
          if (worker.writableLength < HIGH_WATER && !upWaitsForGate) resumeUp();
        }
      });
      // The client may have ended during an opening (which passed its EOF on, or passes it now).
      if (client.readableEnded) endUp();
      else client.once('end', endUp);
      client.resume();
    };
    // A channel error (write after the worker closed, a dead connection) ends in 'close' below.
    worker.on('error', () => undefined);

    // Worker → client: stdout, through the opening's stream while it reads.
    let opened: Duplex | undefined;
    const down = (chunk: Buffer): void => {
      result.bytesDown += chunk.length;
      if (opened) opened.push(chunk);
      else writer.push(false, chunk);
    };
    let corrupt = false;
    /**
     * Hands the client the decoder's output while the writer takes it (128 KiB at a time, so a
     * frame that inflates 1000:1 never sits in memory whole); true once the decoder has no more.
     */
    const decodeDown = (): boolean => {
      if (!codec || corrupt) return true;
      while (opened || !writer.full) {
        let part: Buffer | undefined;
        try {
          part = codec.decoder.read();
        } catch (err) {
          // Not a zstd stream: nothing after this can be trusted; end the session with a reason.
          corrupt = true;
          writer.push(
            true,
            Buffer.from(`nix-hcloud-builder: the worker's zstd stream is corrupt (${(err as Error).message}); ending the session\n`),
          );
          worker.close();
          return true;
        }
        if (!part) {
          void maybeFinish();
          return true;
        }
        down(part);
      }
      return false;
    };
    worker.on('data', (chunk: Buffer) => {
      result.wireDown += chunk.length;
      if (!codec) {
        down(chunk);
        return;
      }
      if (corrupt) return;
      codec.decoder.write(chunk);
      // The writer's high mark paused the worker if the decoder could not hand out everything.
      decodeDown();
    });
    worker.stderr.on('data', (chunk: Buffer) => writer.push(true, chunk));
    worker.on('end', () => {
      opened?.push(null);
      stdoutEnded = true;
      void maybeFinish();
    });
    worker.stderr.on('end', () => {
      stderrEnded = true;
      void maybeFinish();
    });
    worker.on('exit', (code: number | null, signal?: string) => {
      if (typeof code === 'number') result.code = code;
      if (signal) result.signal = signal;
    });
    worker.on('close', () => {
      opened?.push(null);
      workerClosed = true;
      // Some servers close without ending both streams; closing is final either way.
      stdoutEnded = true;
      stderrEnded = true;
      void maybeFinish();
    });

    const finish = (): void => {
      if (finished) return;
      finished = true;
      resolve(result);
    };

    async function maybeFinish(): Promise<void> {
      if (finished || opened || !(stdoutEnded && stderrEnded && workerClosed)) return;
      // The decoder still holds output for the client: decodeDown comes back here once it is out.
      if (codec !== undefined && !corrupt && codec.decoder.pending) return;
      // A zstd stream cut inside a frame (the relay killed, the connection cut) lost its end:
      // what Nix read may look whole, so the session must not end as a success.
      const cut = codec !== undefined && !corrupt && !result.clientClosed && codec.decoder.midFrame;
      if (cut)
        writer.push(
          true,
          Buffer.from("nix-hcloud-builder: the worker's zstd stream ended inside a frame (cut off); its output is incomplete\n"),
        );
      await writer.drained();
      if (!result.clientClosed) {
        try {
          if (result.signal !== undefined) {
            const name = result.signal.replace(/^SIG/, '');
            if (SIGNALS.has(name)) client.exit(name, false, '');
            else client.exit(255);
          } else client.exit(cut && !result.code ? 1 : (result.code ?? 255));
        } catch {
          // The channel may have closed meanwhile; nothing to report to.
        }
        client.end();
      }
      finish();
    }

    client.on('close', () => {
      if (flushScheduled) clearImmediate(flushScheduled);
      if (finished) return;
      // Nix SIGKILLs its ssh when done: the normal end. Stop the remote command's channel too.
      result.clientClosed = true;
      writer.discard();
      if (!workerClosed) {
        worker.close();
        worker.once('close', finish);
        // If the worker never confirms the close (connection dead), do not wait forever.
        setTimeout(finish, 5000).unref();
      } else finish();
    });

    if (!opening) {
      startUp();
      return;
    }
    const link = new Duplex({
      read: () => undefined,
      write: (chunk: Buffer, _encoding, done) => {
        sendUp(chunk);
        done();
      },
      final: (done) => {
        endUp();
        done();
      },
    });
    link.on('error', () => undefined);
    opened = link;
    if (stdoutEnded) link.push(null);
    opening(link).then(
      (first) => {
        opened = undefined;
        // Counted in bytesDown already, when they came through the opening's stream.
        if (first && first.length > 0) writer.push(false, first);
        for (let rest = link.read() as Buffer | null; rest !== null; rest = link.read() as Buffer | null) writer.push(false, rest);
        if (finished) return;
        startUp();
        void maybeFinish();
      },
      (err: unknown) => {
        opened = undefined;
        if (!workerClosed) worker.close();
        if (finished) return;
        finished = true;
        reject(err);
      },
    );
  });
}
