/**
 * A link emulator: a userspace TCP relay with a rate per direction and a one-way delay, for
 * measuring over an uplink like a user's rather than over loopback (this kernel has no netem).
 *
 * Each direction is a serializer plus a timed queue, as in a router: a chunk read from one side
 * leaves the link's "wire" `bytes × 8 ÷ rate` after the previous one (a token bucket one packet
 * deep: no bursts above the rate) and arrives `delay` later. When the queue holds more than one
 * bandwidth-delay product plus a small buffer, the reading side is paused, so TCP's own
 * backpressure reaches the sender as it would behind a full router queue.
 *
 * "up" is client → target (the daemon or direct ssh towards the worker's sshd), "down" the way back.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

export interface LinkProfile {
  name: string;
  /** Bits per second from the client side to the target (the user's upload). */
  upBitsPerSecond: number;
  /** Bits per second from the target back to the client. */
  downBitsPerSecond: number;
  /** One-way delay in ms, in each direction. */
  delayMs: number;
}

/** A home uplink (cable or VDSL): slow up, faster down, a city or two away from the data centre. */
export const HOME: LinkProfile = { name: 'home', upBitsPerSecond: 40e6, downBitsPerSecond: 250e6, delayMs: 15 };
/** An office or data-centre uplink: fast both ways, close by. */
export const OFFICE: LinkProfile = { name: 'office', upBitsPerSecond: 1e9, downBitsPerSecond: 1e9, delayMs: 2 };
export const LINK_PROFILES: Record<string, LinkProfile> = { home: HOME, office: OFFICE };

/** Returns the named profile, or one written as `UP_MBIT/DOWN_MBIT/DELAY_MS` (e.g. `40/250/15`). */
export function linkProfile(spec: string): LinkProfile {
  const known = LINK_PROFILES[spec];
  if (known) return known;
  const m = /^(\d+(?:\.\d+)?)\/(\d+(?:\.\d+)?)\/(\d+(?:\.\d+)?)$/.exec(spec);
  if (!m)
    throw new Error(
      `link profile ${JSON.stringify(spec)}: expected ${Object.keys(LINK_PROFILES).join(', ')} or UP_MBIT/DOWN_MBIT/DELAY_MS`,
    );
  return { name: spec, upBitsPerSecond: Number(m[1]) * 1e6, downBitsPerSecond: Number(m[2]) * 1e6, delayMs: Number(m[3]) };
}

/** Bytes that crossed the link so far, per direction. */
export interface LinkBytes {
  up: number;
  down: number;
}

/** What one direction's queue did: its limit, the most it held, how often it paused its source. */
export interface LaneQueueStats {
  limit: number;
  peakQueued: number;
  pauses: number;
}

/** What a router queue holds beyond the bandwidth-delay product (and what absorbs timer jitter). */
const QUEUE_EXTRA_BYTES = 256 * 1024;
/** Chunks are cut to this size, so that one big read does not leave the wire as one lump. */
const SLICE_BYTES = 16 * 1024;

/** One direction of one connection: serializer, delay line and backpressure on its source. */
class Lane {
  private readonly queue: { at: number; data: Buffer }[] = [];
  private queued = 0;
  /** When the wire is free for the next byte (performance.now() ms). */
  private wireFreeAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private ended = false;
  private blocked = false;
  /** Most bytes inbound that should wait before the source is paused. */
  readonly limit: number;
  /** The most this lane ever held in its queue: what the emulator's memory costs at worst. */
  peakQueued = 0;
  /** How often the source was paused because the queue was full. */
  pauses = 0;

  constructor(
    private readonly from: Socket,
    private readonly to: Socket,
    private readonly bitsPerSecond: number,
    private readonly delayMs: number,
    private readonly count: (n: number) => void,
  ) {
    this.limit = Math.ceil((bitsPerSecond / 8) * (delayMs / 1000)) + QUEUE_EXTRA_BYTES;
    from.on('data', (chunk: Buffer) => this.push(chunk));
    from.on('end', () => {
      this.ended = true;
      this.flush();
    });
    to.on('drain', () => {
      this.blocked = false;
      this.flush();
    });
  }

  private push(chunk: Buffer): void {
    const now = performance.now();
    for (let offset = 0; offset < chunk.length; offset += SLICE_BYTES) {
      const data = chunk.subarray(offset, offset + SLICE_BYTES);
      const start = Math.max(now, this.wireFreeAt);
      this.wireFreeAt = start + (data.length * 8 * 1000) / this.bitsPerSecond;
      this.queue.push({ at: this.wireFreeAt + this.delayMs, data });
      this.queued += data.length;
    }
    this.peakQueued = Math.max(this.peakQueued, this.queued);
    if (this.queued > this.limit && !this.from.isPaused()) {
      this.from.pause();
      this.pauses++;
    }
    this.schedule();
  }

  /** Delivers what has arrived; resumes the source once the queue is below its limit again. */
  private flush(): void {
    this.timer = undefined;
    // Half a millisecond early: timers fire late more often than not.
    const now = performance.now() + 0.5;
    while (!this.blocked && this.queue.length > 0 && (this.queue[0] as { at: number }).at <= now) {
      const { data } = this.queue.shift() as { at: number; data: Buffer };
      this.queued -= data.length;
      this.count(data.length);
      if (!this.to.write(data)) this.blocked = true;
    }
    if (this.queued <= this.limit && this.from.isPaused() && !this.from.destroyed) this.from.resume();
    if (this.queue.length === 0 && this.ended && !this.blocked) {
      this.to.end();
      return;
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.timer || this.blocked) return;
    const head = this.queue[0];
    if (!head) return;
    this.timer = setTimeout(() => this.flush(), Math.max(0, head.at - performance.now()));
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.queue.length = 0;
  }
}

export interface LinkRelayOptions {
  listenHost: string;
  listenPort: number;
  targetHost: string;
  targetPort: number;
  profile: LinkProfile;
}

/** Listens on one address and relays each connection to the target through an emulated link. */
export class LinkRelay {
  readonly bytes: LinkBytes = { up: 0, down: 0 };
  /** Per direction, the queue of every connection so far (a lane's figures outlive its connection). */
  readonly queues: { up: LaneQueueStats[]; down: LaneQueueStats[] } = { up: [], down: [] };
  private readonly sockets = new Set<Socket>();
  private readonly lanes = new Set<Lane>();

  private constructor(
    private readonly server: Server,
    readonly options: LinkRelayOptions,
  ) {
    server.on('connection', (client) => this.accept(client));
  }

  static async start(options: LinkRelayOptions): Promise<LinkRelay> {
    // Half-open allowed on both sides: a FIN must wait behind the data still queued in the other direction.
    const server = createServer({ pauseOnConnect: true, allowHalfOpen: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: options.listenHost, port: options.listenPort, exclusive: true }, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    return new LinkRelay(server, options);
  }

  get port(): number {
    const address = this.server.address();
    if (address === null || typeof address === 'string') throw new Error('the link relay is not listening');
    return address.port;
  }

  private accept(client: Socket): void {
    const { targetHost, targetPort, profile } = this.options;
    const target = connect({ host: targetHost, port: targetPort, allowHalfOpen: true });
    for (const s of [client, target]) {
      // The relay stands for a wire: it must not add Nagle's delays of its own.
      s.setNoDelay(true);
      this.sockets.add(s);
      s.on('error', () => undefined);
    }
    const lanes: Lane[] = [];
    const close = (): void => {
      for (const lane of lanes) {
        lane.stop();
        this.lanes.delete(lane);
      }
      for (const s of [client, target]) {
        s.destroy();
        this.sockets.delete(s);
      }
    };
    target.once('connect', () => {
      const up = new Lane(client, target, profile.upBitsPerSecond, profile.delayMs, (n) => (this.bytes.up += n));
      const down = new Lane(target, client, profile.downBitsPerSecond, profile.delayMs, (n) => (this.bytes.down += n));
      lanes.push(up, down);
      this.queues.up.push(up);
      this.queues.down.push(down);
      for (const lane of lanes) this.lanes.add(lane);
      client.resume();
    });
    // The connection ends when both directions have ended, or at once when either side fails.
    let ends = 0;
    for (const s of [client, target]) {
      s.once('close', close);
      s.once('finish', () => {
        if (++ends === 2) close();
      });
    }
  }

  async stop(): Promise<void> {
    for (const lane of this.lanes) lane.stop();
    this.lanes.clear();
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
