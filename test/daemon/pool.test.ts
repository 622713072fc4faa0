/**
 * Pool on its own: fake workers whose boots and deletes the test settles by hand, and a fake clock
 * for idle timers, lifetimes and delete retries. No network, no real timers.
 */
import t from 'tap';
import { parseConfig, type PoolConfig } from '../../src/core/config.js';
import { createLogger } from '../../src/core/log.js';
import { EARLY_HANDSHAKE_AFTER_FAILURE_MS, Pool, type PoolSessionLease, type PoolWorker } from '../../src/daemon/pool.js';
import type { HandshakeRecord } from '../../src/ssh/nix-handshake.js';
import type { WorkerRecord } from '../../src/daemon/state.js';
import type { WorkerChannel } from '../../src/ssh/worker-connection.js';
import { FakeClock } from './fake-clock.js';

const START = Date.parse('2025-01-01T00:00:00Z');
const MINUTE = 60_000;

/** Runs every pending promise callback (microtasks drain before setImmediate's phase). */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

class FakeWorker implements PoolWorker {
  readonly record: WorkerRecord;
  connected = false;
  /** Clock times of delete attempts. */
  readonly deletes: number[] = [];
  /** Deletes stay pending (as the deletion queue's do while the API fails) until `endDeletes`. */
  holdDeletes = false;
  private held: { resolve: () => void; reject: (err: Error) => void }[] = [];
  disconnects = 0;
  private bootDone: { resolve: () => void; reject: (err: Error) => void } | undefined;
  private lost: ((why: string) => void) | undefined;

  constructor(
    private readonly clock: FakeClock,
    name: string,
    phase: WorkerRecord['phase'] = 'creating',
  ) {
    this.record = {
      id: 0,
      name,
      pool: 'x86_64',
      serverType: 'cx23',
      location: 'fsn1',
      phase,
      sshPort: 22,
      hostPublicKey: '',
      loginPrivateKey: '',
      createdAt: new Date(clock.now()).toISOString(),
      activeSessions: 0,
    };
    this.connected = phase === 'ready';
  }

  get phase(): WorkerRecord['phase'] {
    return this.record.phase;
  }

  markBusy(active: number): void {
    this.record.activeSessions = active;
    delete this.record.idleSince;
  }

  markSessions(active: number): void {
    this.record.activeSessions = active;
  }

  markIdle(now: number): void {
    this.record.idleSince = new Date(now).toISOString();
  }

  markDeleting(): void {
    this.record.phase = 'deleting';
  }

  /** Listeners of boot progress lines (the waiting sessions' stderr). */
  readonly progressListeners = new Set<(line: string) => void>();

  onProgress(listener: (line: string) => void): () => boolean {
    this.progressListeners.add(listener);
    return () => this.progressListeners.delete(listener);
  }

  onConnectionLost(listener: (why: string) => void): void {
    this.lost = listener;
  }

  /** The kept connection breaks. */
  loseConnection(why: string): void {
    if (!this.connected) return;
    this.connected = false;
    this.lost?.(why);
  }

  boot(): Promise<void> {
    this.record.phase = 'booting';
    return new Promise<void>((resolve, reject) => {
      this.bootDone = { resolve, reject };
    });
  }

  /** Ends the boot: ready and connected, or failed. */
  finishBoot(err?: Error): void {
    if (err) return this.bootDone?.reject(err);
    this.record.phase = 'ready';
    this.connected = true;
    this.bootDone?.resolve();
  }

  cancelBoot(reason: string): void {
    this.bootDone?.reject(new Error(reason));
  }

  async destroy(): Promise<void> {
    this.record.phase = 'deleting';
    this.connected = false;
    this.deletes.push(this.clock.now());
    if (this.holdDeletes) await new Promise<void>((resolve, reject) => this.held.push({ resolve, reject }));
  }

  /** The held deletes end: the server is gone, or (with an error) the queue was stopped first. */
  endDeletes(err?: Error): void {
    for (const d of this.held.splice(0)) {
      if (err) d.reject(err);
      else d.resolve();
    }
  }

  disconnect(): void {
    this.connected = false;
    this.disconnects++;
  }

  execNix(): Promise<WorkerChannel> {
    return Promise.reject(new Error('no channels in unit tests'));
  }
}

function poolConfig(overrides: Partial<PoolConfig>): PoolConfig {
  const config = parseConfig({ pools: { x86_64: { serverTypes: ['cx23'] } } }, '/').pools.x86_64 as PoolConfig;
  return { ...config, idleTimeoutMs: 10 * MINUTE, maxLifetimeMs: 60 * MINUTE, ...overrides };
}

function setup(overrides: Partial<PoolConfig> = {}) {
  const clock = new FakeClock(START);
  const created: FakeWorker[] = [];
  const handshakes = new Map<string, HandshakeRecord>();
  /** What the daemon would say of a boot now (token, budget). */
  const bootCheck: { refusal: string | undefined } = { refusal: undefined };
  const pool = new Pool<FakeWorker>(poolConfig(overrides), {
    handshakes: { get: (protocol) => handshakes.get(protocol), set: (record) => handshakes.set(record.protocol, record) },
    bootRefusal: () => Promise.resolve(bootCheck.refusal),
    log: createLogger({ level: 'silent' }),
    createWorker: () => {
      const worker = new FakeWorker(clock, `w${created.length + 1}`);
      created.push(worker);
      return worker;
    },
    changed: () => undefined,
    clock,
  });
  /** A worker already up (as after a restart), idle. */
  const readyWorker = (name: string): FakeWorker => {
    const worker = new FakeWorker(clock, name, 'ready');
    pool.adopt(worker);
    return worker;
  };
  const acquire = (): { lease: Promise<PoolSessionLease<FakeWorker>>; abort: AbortController } => {
    const abort = new AbortController();
    return { lease: pool.acquire({ signal: abort.signal, progress: () => undefined }), abort };
  };
  /** Which worker a lease went to, or "waiting" if it has none yet. */
  const holder = async (lease: Promise<PoolSessionLease<FakeWorker>>): Promise<string> => {
    await settle();
    return Promise.race([lease.then((l) => l.worker.record.name), settle().then(() => 'waiting')]);
  };
  return { clock, pool, created, readyWorker, acquire, holder, bootCheck };
}

const SERVE_2_7: HandshakeRecord = { protocol: 'serve', version: 0x207 };

t.test('early handshake: answered from the record only while a session would wait for a healthy boot', async (t) => {
  const { clock, pool, created, acquire, readyWorker, bootCheck } = setup({ maxWorkers: 2, earlyHandshake: true });
  t.equal(await pool.earlyHandshake('serve'), undefined, 'no record yet: the session waits unanswered');
  pool.handshakeSeen(SERVE_2_7);
  t.same(await pool.earlyHandshake('serve'), SERVE_2_7, 'a cold pool with a record answers early');
  t.equal(await pool.earlyHandshake('worker'), undefined, 'the other protocol has no record');

  bootCheck.refusal = 'the Hetzner Cloud API refused the token (401)';
  t.equal(await pool.earlyHandshake('serve'), undefined, 'a boot that would be refused (token, budget): no early answer');
  bootCheck.refusal = undefined;

  const failing = acquire().lease;
  await settle();
  (created[0] as FakeWorker).finishBoot(new Error('token refused'));
  await t.rejects(failing, /token refused/);
  t.equal(await pool.earlyHandshake('serve'), undefined, 'after a failed boot, Nix may fall back: no early answer');
  clock.advance(EARLY_HANDSHAKE_AFTER_FAILURE_MS);
  t.same(await pool.earlyHandshake('serve'), SERVE_2_7, 'the failure is forgotten after a while');

  readyWorker('w-ready');
  t.equal(await pool.earlyHandshake('serve'), undefined, 'a ready worker with a free slot answers itself');
});

t.test("early handshake: off by the pool's setting", async (t) => {
  const { pool } = setup({ earlyHandshake: false });
  pool.handshakeSeen(SERVE_2_7);
  t.equal(await pool.earlyHandshake('serve'), undefined);
  t.equal(pool.recordsHandshakes, false, 'and sessions are not read for records');
});

t.test('placement: the ready worker with the fewest sessions and a free slot', async (t) => {
  const { pool, readyWorker, acquire, holder, created } = setup({ jobsPerWorker: 2, maxWorkers: 2 });
  const a = readyWorker('a');
  const b = readyWorker('b');
  const first = await acquire().lease;
  t.equal(first.worker, a, 'both empty: the first one');
  t.equal(await holder(acquire().lease), 'b', 'a has 1, b has 0: b');
  t.equal(await holder(acquire().lease), 'a', 'both have 1: a');
  t.equal(await holder(acquire().lease), 'b', 'a is full (jobsPerWorker 2): b');
  t.same([pool.sessionsOn(a), pool.sessionsOn(b)], [2, 2]);
  t.equal(created.length, 0, 'no boot while ready workers had room');
  first.release();
  first.release();
  t.equal(pool.sessionsOn(a), 1, 'a second release of the same lease gives nothing back');
  t.equal(await holder(acquire().lease), 'a', 'the freed slot is taken');
  t.equal(pool.workers.length, 2);
});

t.test('placement: a ready worker without its connection takes no session', async (t) => {
  const { readyWorker, acquire, holder, created } = setup({ jobsPerWorker: 2, maxWorkers: 2 });
  const a = readyWorker('a');
  readyWorker('b');
  a.connected = false;
  t.equal(await holder(acquire().lease), 'b');
  t.equal(await holder(acquire().lease), 'b');
  t.equal(await holder(acquire().lease), 'waiting');
  t.equal(created.length, 0, 'the disconnected worker still counts towards maxWorkers');
});

t.test('boot sharing: sessions arriving during a boot wait for that same boot', async (t) => {
  const { pool, acquire, holder, created } = setup({ jobsPerWorker: 3, maxWorkers: 4 });
  const burst = [acquire().lease, acquire().lease, acquire().lease];
  await settle();
  t.equal(created.length, 1, 'one server for a burst of three sessions');
  t.equal(await holder(burst[0] as Promise<PoolSessionLease<FakeWorker>>), 'waiting', 'no lease before the boot ends');
  const fourth = acquire().lease;
  await settle();
  t.equal(created.length, 2, 'the booting worker is full (jobsPerWorker 3): the fourth boots another');
  const w1 = created[0] as FakeWorker;
  w1.finishBoot();
  const leases = await Promise.all(burst);
  t.same(
    leases.map((l) => l.worker.record.name),
    ['w1', 'w1', 'w1'],
  );
  t.equal(pool.sessionsOn(w1), 3);
  t.equal(await holder(fourth), 'waiting', 'the fourth waits for its own boot');
  (created[1] as FakeWorker).finishBoot();
  t.equal(await holder(fourth), 'w2');
  t.equal(pool.workers.length, 2);
});

t.test('boot sharing: a failed boot fails its waiters, and the server is deleted', async (t) => {
  const { pool, acquire, created } = setup({ jobsPerWorker: 2, maxWorkers: 1 });
  const both = [acquire().lease, acquire().lease];
  await settle();
  const w1 = created[0] as FakeWorker;
  w1.finishBoot(new Error('boot went wrong'));
  for (const lease of both) await t.rejects(lease, /boot went wrong/);
  await settle();
  t.equal(w1.deletes.length, 1, 'deleted after the failed boot');
  t.equal(pool.workers.length, 0);
});

t.test('boot sharing: a client that leaves during the boot hears no more progress lines', async (t) => {
  const { pool, created } = setup({ jobsPerWorker: 2, maxWorkers: 1 });
  const heard: string[][] = [[], []];
  const aborts = heard.map(() => new AbortController());
  const leases = heard.map((lines, i) =>
    pool.acquire({ signal: (aborts[i] as AbortController).signal, progress: (line) => lines.push(line) }),
  );
  await settle();
  const w1 = created[0] as FakeWorker;
  t.equal(w1.progressListeners.size, 2, 'both waiting sessions listen to the boot');
  (aborts[0] as AbortController).abort();
  await t.rejects(leases[0] as Promise<unknown>, /went away/);
  t.equal(w1.progressListeners.size, 1, 'the one that left is no longer listening');
  for (const listener of w1.progressListeners) listener('boot step 3/5');
  t.same(heard, [[], ['boot step 3/5']], 'only the session still waiting gets the line');
  w1.finishBoot();
  t.equal((await (leases[1] as Promise<PoolSessionLease<FakeWorker>>)).worker, w1);
  t.equal(w1.progressListeners.size, 0, 'none left once the boot ended');
  await settle();
  t.equal(pool.sessionsOn(w1), 1, 'the slot of the one that left was given back');
});

t.test('maxWorkers: with every worker full, a further session waits for a slot', async (t) => {
  const { acquire, holder, created } = setup({ jobsPerWorker: 1, maxWorkers: 2 });
  const first = acquire().lease;
  const second = acquire().lease;
  await settle();
  t.equal(created.length, 2);
  for (const w of created) w.finishBoot();
  const firstLease = await first;
  await second;
  const third = acquire();
  t.equal(await holder(third.lease), 'waiting', 'all full and maxWorkers reached');
  t.equal(created.length, 2, 'no third boot');
  firstLease.release();
  t.equal(await holder(third.lease), firstLease.worker.record.name, 'it gets the slot given back');
  const fourth = acquire();
  t.equal(await holder(fourth.lease), 'waiting');
  fourth.abort.abort();
  await t.rejects(fourth.lease, /went away/, 'a waiter that leaves is dropped from the queue');
});

t.test('idle timer: the worker is deleted idleTimeout after its last session', async (t) => {
  const { clock, pool, acquire } = setup({ idleTimeoutMs: 10 * MINUTE });
  const lease = acquire();
  await settle();
  const w1 = pool.workers[0] as FakeWorker;
  w1.finishBoot();
  (await lease.lease).release();
  t.equal(w1.record.idleSince, new Date(START).toISOString(), 'idle since the session ended');
  clock.advance(10 * MINUTE - 1);
  await settle();
  t.same(w1.deletes, [], 'not before idleTimeout');
  clock.advance(1);
  await settle();
  t.same(w1.deletes, [START + 10 * MINUTE], 'deleted at idleTimeout');
  t.equal(pool.workers.length, 0, 'and gone from the pool');
});

t.test('idle timer: a new session cancels it; the next idle period starts afresh', async (t) => {
  const { clock, pool, readyWorker, acquire } = setup({ idleTimeoutMs: 10 * MINUTE });
  const a = readyWorker('a');
  clock.advance(9 * MINUTE);
  const lease = await acquire().lease;
  t.notOk(a.record.idleSince, 'busy again');
  t.equal(clock.pending, 0, 'the idle timer is cancelled');
  clock.advance(5 * MINUTE);
  await settle();
  t.same(a.deletes, [], 'not deleted with a session running');
  lease.release();
  clock.advance(10 * MINUTE - 1);
  await settle();
  t.same(a.deletes, [], 'the countdown started again at the release');
  clock.advance(1);
  await settle();
  t.equal(a.deletes.length, 1);
  t.equal(pool.workers.length, 0);
});

t.test('maxLifetime: a worker past it takes no new session and goes once idle', async (t) => {
  const { clock, pool, readyWorker, acquire, holder, created } = setup({ maxLifetimeMs: 60 * MINUTE, jobsPerWorker: 2, maxWorkers: 2 });
  const a = readyWorker('a');
  const running = await acquire().lease;
  clock.advance(60 * MINUTE);
  pool.enforceLifetime();
  await settle();
  t.same(a.deletes, [], 'a session is running: it stays');
  const next = acquire().lease;
  await settle();
  t.equal(created.length, 1, 'a new session boots a new worker instead of joining the old one');
  (created[0] as FakeWorker).finishBoot();
  t.equal(await holder(next), 'w1');
  running.release();
  await settle();
  t.same(a.deletes, [START + 60 * MINUTE], 'deleted when its last session ended');
});

t.test('maxLifetime: the sweep deletes an idle worker past it', async (t) => {
  const { clock, pool, readyWorker } = setup({ maxLifetimeMs: 60 * MINUTE, idleTimeoutMs: 120 * MINUTE });
  const a = readyWorker('a');
  clock.advance(60 * MINUTE - 1);
  pool.enforceLifetime();
  await settle();
  t.same(a.deletes, [], 'younger than maxLifetime: kept');
  clock.advance(1);
  pool.enforceLifetime();
  await settle();
  t.same(a.deletes, [START + 60 * MINUTE]);
});

t.test('hard cap: past twice maxLifetime a worker is deleted with its sessions', async (t) => {
  const { clock, pool, readyWorker, acquire } = setup({ maxLifetimeMs: 60 * MINUTE });
  const a = readyWorker('a');
  await acquire().lease;
  clock.advance(120 * MINUTE - 1);
  pool.enforceLifetime();
  await settle();
  t.same(a.deletes, [], 'with a session, kept until twice maxLifetime');
  clock.advance(1);
  pool.enforceLifetime();
  await settle();
  t.same(a.deletes, [START + 120 * MINUTE], 'deleted at twice maxLifetime despite its session');
  t.equal(pool.workers.length, 0);
});

t.test('a pending delete: the worker stays, as "deleting", until its server is gone', async (t) => {
  const { clock, pool, readyWorker } = setup({ idleTimeoutMs: 10 * MINUTE, maxWorkers: 1 });
  const a = readyWorker('a');
  a.holdDeletes = true;
  clock.advance(10 * MINUTE);
  await settle();
  t.equal(pool.workers[0], a);
  t.equal(a.record.phase, 'deleting');
  t.ok(pool.knows({ id: 0, name: 'a' }), 'the sweep does not take it for a leak');
  a.endDeletes();
  await settle();
  t.same(pool.workers, [], 'dropped once its server is gone');
  t.equal(a.deletes.length, 1, "the pool asks once; retrying is the deletion queue's job");
});

t.test('no unhandled rejection when deletes started in the background are cut short by a stop', async (t) => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => {
    unhandled.push(reason);
  };
  process.on('unhandledRejection', onUnhandled);
  t.teardown(() => {
    process.off('unhandledRejection', onUnhandled);
  });
  const { clock, pool, readyWorker } = setup({ idleTimeoutMs: 10 * MINUTE });
  const idle = readyWorker('idle');
  const lost = readyWorker('lost');
  idle.holdDeletes = true;
  lost.holdDeletes = true;
  clock.advance(5 * MINUTE);
  lost.loseConnection('closed');
  clock.advance(5 * MINUTE);
  await settle();
  t.equal(idle.deletes.length, 1, 'the idle timer started a delete');
  t.equal(lost.deletes.length, 1, 'the lost connection started a delete');
  // Handled from the start: only the pool's own promises may go unhandled here.
  const closed = t.rejects(pool.close(false), /stopped/, 'close says the deletes were cut short');
  await settle();
  t.equal(idle.deletes.length, 1, 'a worker being deleted is not asked again');
  idle.endDeletes(new Error('stopped before idle was deleted'));
  lost.endDeletes(new Error('stopped before lost was deleted'));
  await closed;
  t.same(
    pool.workers.map((w) => w.record.phase),
    ['deleting', 'deleting'],
    'their records stay, for the next start',
  );
  for (let i = 0; i < 3; i++) await settle();
  t.same(unhandled, [], 'no unhandled rejection');
});

t.test('close: fails waiters, cancels boots, deletes every worker, or keeps them', async (t) => {
  const { pool, readyWorker, acquire, created } = setup({ jobsPerWorker: 1, maxWorkers: 2 });
  const a = readyWorker('a');
  await acquire().lease;
  const booting = acquire().lease;
  const queued = acquire().lease;
  await settle();
  await pool.close(false);
  await t.rejects(booting, /shutting down/);
  await t.rejects(queued, /shutting down/);
  t.equal(a.deletes.length, 1);
  t.equal((created[0] as FakeWorker).deletes.length, 1, 'the cancelled boot is deleted too');
  await t.rejects(acquire().lease, /shutting down/, 'no session after close');

  const kept = setup();
  const b = kept.readyWorker('b');
  await kept.pool.close(true);
  t.equal(b.disconnects, 1, 'keep: disconnected');
  t.same(b.deletes, [], 'keep: not deleted');
});
