/**
 * Places Nix sessions on a pool's workers: the least loaded ready worker with a free slot, else a
 * booting one with room, else a new boot while fewer than maxWorkers exist, else a queue. Sessions
 * that arrive during a boot wait for that same boot: a burst creates one server, not one each.
 * The slot counts are session-slots.ts's, the idle timers and lifetime caps worker-lifetime.ts's.
 */
import type { PoolConfig } from '../core/config.js';
import { systemClock, type Clock } from './idle-timer.js';
import type { Logger } from '../core/log.js';
import type { AcquireOptions, SessionLease, SessionPool } from '../ssh/endpoint.js';
import type { HandshakeProtocol, HandshakeRecord } from '../ssh/nix-handshake.js';
import { isRecordOf, type WorkerRecord } from './state.js';
import { SessionSlots } from './session-slots.js';
import type { Worker } from './worker.js';
import { WorkerLifetimes } from './worker-lifetime.js';

/** What the pool uses of a worker: `Worker`, or a fake in the pool's unit tests. */
export type PoolWorker = Pick<
  Worker,
  | 'record'
  | 'phase'
  | 'connected'
  | 'markBusy'
  | 'markSessions'
  | 'markIdle'
  | 'markDeleting'
  | 'onProgress'
  | 'onConnectionLost'
  | 'boot'
  | 'cancelBoot'
  | 'destroy'
  | 'disconnect'
  | 'execNix'
>;

/** The endpoint's `SessionLease`, with the pool's own worker type. */
export interface PoolSessionLease<W extends PoolWorker = Worker> extends SessionLease {
  worker: W;
}

interface Waiter<W extends PoolWorker> extends AcquireOptions {
  resolve(lease: PoolSessionLease<W>): void;
  reject(err: Error): void;
}

export interface PoolDeps<W extends PoolWorker = Worker> {
  log: Logger;
  /** A new worker to boot (the daemon plans a `Worker`). */
  createWorker: () => W;
  /** Called when the pool's set of workers or their counts change (state file, status). */
  changed: () => void;
  /** Idle timers' and the lifetime caps' "now" (tests pass a fake one). */
  clock?: Clock;
  /** What this pool's workers answered in Nix's handshake (handshakes.ts); without it, no early answers. */
  handshakes?: { get(protocol: HandshakeProtocol): HandshakeRecord | undefined; set(record: HandshakeRecord): void };
  /** Why a boot would be refused now (the token, the budget); undefined when it would go ahead. */
  bootRefusal?: () => Promise<string | undefined>;
}

/** After a failed boot, sessions wait for the worker this long (Nix can fall back meanwhile). */
export const EARLY_HANDSHAKE_AFTER_FAILURE_MS = 10 * 60_000;

export class Pool<W extends PoolWorker = Worker> implements SessionPool {
  readonly workers: W[] = [];
  private readonly queue: Waiter<W>[] = [];
  private readonly slots = new SessionSlots<W>();
  private readonly lifetimes: WorkerLifetimes<W>;
  /** Boots in progress; waiters that join a boot attach to its promise. */
  private readonly boots = new Map<W, Promise<void>>();
  private readonly log: Logger;
  private readonly clock: Clock;
  private closed = false;
  /** When the last boot failed (a refused token and a spent budget fail it too); undefined after one succeeded. */
  private lastBootFailedAt: number | undefined;

  constructor(
    readonly config: PoolConfig,
    private readonly deps: PoolDeps<W>,
  ) {
    this.log = deps.log.child({ pool: config.name });
    this.clock = deps.clock ?? systemClock;
    this.lifetimes = new WorkerLifetimes(config, this.clock);
  }

  get records(): Readonly<WorkerRecord>[] {
    return this.workers.map((w) => w.record);
  }

  /** Waits for a slot on a ready worker, booting one when needed. */
  acquire(options: AcquireOptions): Promise<PoolSessionLease<W>> {
    if (this.closed) return Promise.reject(new Error(`pool ${this.config.name} is shutting down`));
    return new Promise((resolve, reject) => {
      const waiter: Waiter<W> = { ...options, resolve, reject };
      this.queue.push(waiter);
      options.signal.addEventListener('abort', () => this.abandon(waiter), { once: true });
      this.dispatch();
    });
  }

  /**
   * The handshake to answer a new session with before it has a worker: only when it would have
   * to wait for a boot and the pool is healthy (an early answer keeps Nix from falling back).
   */
  async earlyHandshake(protocol: HandshakeProtocol): Promise<HandshakeRecord | undefined> {
    if (!this.config.earlyHandshake || this.closed || this.leastLoaded('ready')) return undefined;
    if (this.lastBootFailedAt !== undefined && this.now() - this.lastBootFailedAt < EARLY_HANDSHAKE_AFTER_FAILURE_MS) return undefined;
    const record = this.deps.handshakes?.get(protocol);
    if (!record) return undefined;
    // A boot that would be refused fails the session: Nix must still be free to fall back.
    const refusal = await this.deps.bootRefusal?.().catch((err: unknown) => `cannot tell (${(err as Error).message})`);
    if (refusal === undefined) return record;
    this.log.info({ why: refusal }, 'not answering early: a boot would be refused');
    return undefined;
  }

  /** Whether sessions should be read through an early session (to answer early or to record). */
  get recordsHandshakes(): boolean {
    return this.config.earlyHandshake && this.deps.handshakes !== undefined;
  }

  /** Keeps what a worker answered, for the next early handshake. */
  handshakeSeen(record: HandshakeRecord): void {
    this.deps.handshakes?.set(record);
  }

  private abandon(waiter: Waiter<W>): void {
    const index = this.queue.indexOf(waiter);
    if (index >= 0) this.queue.splice(index, 1);
    waiter.reject(new Error('the client went away'));
  }

  /** Sessions running on `worker` plus sessions promised a slot there. */
  sessionsOn(worker: W): number {
    return this.slots.of(worker);
  }

  /** Gives a slot on `worker` back; answers how many remain. */
  private unreserve(worker: W): number {
    const left = this.slots.release(worker);
    worker.markSessions(left);
    return left;
  }

  private now(): number {
    return this.clock.now();
  }

  private leastLoaded(phase: W['phase']): W | undefined {
    let best: W | undefined;
    for (const w of this.workers) {
      if (w.phase !== phase || this.sessionsOn(w) >= this.config.jobsPerWorker) continue;
      if (phase === 'ready' && (!w.connected || this.lifetimes.draining(w))) continue;
      if (!best || this.sessionsOn(w) < this.sessionsOn(best)) best = w;
    }
    return best;
  }

  private dispatch(): void {
    while (this.queue.length > 0 && !this.closed) {
      const ready = this.leastLoaded('ready');
      if (ready) {
        this.lease(ready, this.queue.shift() as Waiter<W>);
        continue;
      }
      const booting = this.leastLoaded('booting') ?? this.leastLoaded('creating');
      if (booting) {
        this.joinBoot(booting, this.queue.shift() as Waiter<W>);
        continue;
      }
      if (this.workers.length < this.config.maxWorkers) {
        this.startBoot();
        continue;
      }
      break;
    }
  }

  /** Hands a slot to a waiter; `reserved` when the waiter already holds it (it joined a boot). */
  private lease(worker: W, waiter: Waiter<W>, reserved = false): void {
    if (!reserved) this.slots.reserve(worker);
    this.lifetimes.cancelIdle(worker);
    worker.markBusy(this.sessionsOn(worker));
    this.deps.changed();
    let released = false;
    waiter.resolve({
      worker,
      release: () => {
        if (released) return;
        released = true;
        this.release(worker);
      },
    });
  }

  private release(worker: W): void {
    if (this.unreserve(worker) === 0 && worker.phase === 'ready') this.becameIdle(worker);
    this.deps.changed();
    this.dispatch();
  }

  private becameIdle(worker: W): void {
    if (this.lifetimes.draining(worker)) {
      this.log.info({ worker: worker.record.name }, 'worker reached maxLifetime and is idle; deleting it');
      this.retireInBackground(worker, 'maxLifetime reached');
      return;
    }
    const delayMs = this.lifetimes.startIdle(worker, () => this.onIdle(worker));
    worker.markIdle(this.now());
    this.log.info(
      { worker: worker.record.name, idlePolicy: this.config.idlePolicy, deleteInMs: delayMs },
      'worker idle; idle timer started',
    );
  }

  /**
   * Lifetime caps, checked by the daemon's periodic sweep (the sweep rule): an idle worker past
   * maxLifetime is deleted; any worker past twice that is deleted even with sessions running.
   */
  enforceLifetime(): void {
    const ready = this.workers.filter((w) => w.phase === 'ready');
    for (const { subject: worker, reason } of this.lifetimes.overdue(ready, (w) => this.sessionsOn(w))) {
      if (reason === 'hard lifetime cap') {
        this.log.warn(
          { worker: worker.record.name, sessions: this.sessionsOn(worker) },
          'worker is past twice maxLifetime; deleting it with its sessions',
        );
      }
      this.retireInBackground(worker, reason);
    }
  }

  /** Whether this pool manages a server of that id or name (the sweep deletes what no pool knows). */
  knows(server: { id: number; name: string }): boolean {
    return this.workers.some((w) => isRecordOf(w.record, server));
  }

  /** A waiter takes a slot on a booting worker now and gets its lease when the boot ends. */
  private joinBoot(worker: W, waiter: Waiter<W>): void {
    this.slots.reserve(worker);
    const stopProgress = worker.onProgress(waiter.progress);
    // A client that leaves hears no more: its stderr is closed, and writing to it would fail.
    waiter.signal.addEventListener('abort', stopProgress, { once: true });
    const booted = this.boots.get(worker) as Promise<void>;
    booted.then(
      () => {
        stopProgress();
        if (waiter.signal.aborted) {
          waiter.reject(new Error('the client went away'));
          this.release(worker);
          return;
        }
        this.lease(worker, waiter, true);
      },
      (err: Error) => {
        stopProgress();
        waiter.reject(err);
      },
    );
  }

  /**
   * `up`: boots workers until the pool has `count` (at most maxWorkers), and waits until they are
   * ready. Each then idles like any other worker until sessions come.
   */
  async warm(count: number, progress: (line: string) => void): Promise<number> {
    const target = Math.min(count, this.config.maxWorkers);
    while (this.workers.filter((w) => w.phase !== 'deleting').length < target) this.startBoot();
    const boots = [...this.boots.entries()];
    const stops = boots.map(([worker]) => worker.onProgress(progress));
    try {
      await Promise.all(boots.map(([, boot]) => boot));
    } finally {
      for (const stop of stops) stop();
    }
    return this.workers.filter((w) => w.phase === 'ready').length;
  }

  private startBoot(): void {
    const worker = this.deps.createWorker();
    this.workers.push(worker);
    this.deps.changed();
    this.log.info({ worker: worker.record.name, waiting: this.queue.length }, 'booting a new worker');
    const boot = worker.boot().then(
      () => {
        this.boots.delete(worker);
        this.lastBootFailedAt = undefined;
        this.watch(worker);
        this.deps.changed();
        this.dispatch();
        // Booted with nobody waiting (pre-warmed, or every waiter left): idle from now.
        if (this.sessionsOn(worker) === 0) this.becameIdle(worker);
      },
      (err: Error) => {
        this.boots.delete(worker);
        this.lastBootFailedAt = this.now();
        // Deleted in the background (with retries); the waiters fail now, not after the delete.
        this.retireInBackground(worker, 'boot failed');
        throw err;
      },
    );
    // Waiters attach to `boot`; this catch only keeps a failure with no waiter from being unhandled.
    boot.catch(() => undefined);
    this.boots.set(worker, boot);
  }

  /** Adds a worker found running after a restart; it gets an idle timer like any idle worker. */
  adopt(worker: W): void {
    this.workers.push(worker);
    this.watch(worker);
    this.becameIdle(worker);
    this.deps.changed();
  }

  private watch(worker: W): void {
    worker.onConnectionLost((why) => {
      this.log.warn({ worker: worker.record.name, why }, 'lost the connection to the worker; deleting it');
      this.retireInBackground(worker, `connection lost: ${why}`);
    });
  }

  private onIdle(worker: W): void {
    if (this.sessionsOn(worker) > 0 || worker.phase !== 'ready') return;
    this.log.info({ worker: worker.record.name }, 'idle timeout reached; deleting the worker');
    this.retireInBackground(worker, 'idle timeout');
  }

  private remove(worker: W): void {
    const index = this.workers.indexOf(worker);
    if (index >= 0) this.workers.splice(index, 1);
    this.lifetimes.forget(worker);
    this.slots.forget(worker);
    this.deps.changed();
  }

  private readonly retiring = new Map<W, Promise<void>>();

  /**
   * Deletes a worker's server; the record stays (phase "deleting", counted against maxWorkers)
   * until the server is gone. The worker's delete is retried until then by the daemon's deletion
   * queue; it fails only when the queue stopped (the daemon stops), and then the record stays in
   * the state for the next start. Called twice for one worker, both callers get the same promise.
   */
  retire(worker: W, reason: string): Promise<void> {
    let retiring = this.retiring.get(worker);
    if (!retiring) {
      retiring = this.deleteWorker(worker, reason).finally(() => this.retiring.delete(worker));
      this.retiring.set(worker, retiring);
    }
    return retiring;
  }

  /** `retire` for callers that do not wait: a delete cut short by a stop is handled here, not unhandled. */
  private retireInBackground(worker: W, reason: string): void {
    this.retire(worker, reason).catch((err: unknown) =>
      this.log.warn(
        { worker: worker.record.name, err: (err as Error).message },
        "the worker's delete was cut short; the next start goes on with it",
      ),
    );
  }

  private async deleteWorker(worker: W, reason: string): Promise<void> {
    this.lifetimes.cancelIdle(worker);
    worker.markDeleting();
    this.deps.changed();
    await worker.destroy(reason);
    this.remove(worker);
    this.dispatch();
  }

  /** Fails waiters, stops timers, and deletes every worker (unless `keep`). */
  async close(keep: boolean): Promise<void> {
    this.closed = true;
    for (const waiter of this.queue.splice(0)) waiter.reject(new Error('the daemon is shutting down'));
    this.lifetimes.cancelAll();
    for (const worker of this.boots.keys()) worker.cancelBoot('the daemon is shutting down');
    await Promise.allSettled([...this.boots.values()]);
    if (keep) {
      for (const w of this.workers) w.disconnect();
      return;
    }
    await Promise.all([...this.workers].map((w) => this.retire(w, 'daemon stopped')));
  }
}
