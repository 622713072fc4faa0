/**
 * A bound on what one SSH connection's socket holds unsent. ssh2 writes every packet to its socket
 * and ignores the return value, so when the kernel takes bytes slower than sessions produce them
 * they pile up in Node's write buffer, up to the peer's channel windows (2 MiB per session). The
 * session pipes write to a connection only while its gate is open, and wait for `drain` otherwise.
 */
import type { Socket } from 'node:net';

/** Unsent bytes towards a worker (one connection carries up to MaxSessions sessions). */
export const WORKER_SOCKET_HIGH_WATER = 1024 * 1024;
/** Unsent bytes towards a Nix client (one session per connection). */
export const CLIENT_SOCKET_HIGH_WATER = 256 * 1024;

export class WriteGate {
  private readonly waiters: (() => void)[] = [];

  constructor(
    private readonly socket: Pick<Socket, 'writableLength' | 'destroyed' | 'once'>,
    readonly highWater: number,
  ) {
    socket.once('close', () => this.release());
  }

  /** True while the socket holds less than `highWater` unsent bytes (or is gone: nothing to wait for). */
  get open(): boolean {
    return this.socket.destroyed || this.socket.writableLength < this.highWater;
  }

  /** Calls `then` once the gate is open: now, or at the socket's next `drain` (or `close`). */
  whenOpen(then: () => void): void {
    if (this.open) {
      then();
      return;
    }
    this.waiters.push(then);
    // One listener however many sessions wait. A socket holding more than its own 16 KiB
    // high-water mark has refused a write, so `drain` will come.
    if (this.waiters.length === 1) this.socket.once('drain', () => this.release());
  }

  private release(): void {
    for (const then of this.waiters.splice(0)) then();
  }
}
