/**
 * One Hetzner server that runs builds: its boot, as numbered steps each logged and each reported
 * to the sessions waiting for it; its kept ssh connection; and its deletion.
 */
import { DEFAULT_ZSTD_LEVEL, type PoolConfig } from '../core/config.js';
import { formatDuration } from '../core/duration.js';
import type { Logger } from '../core/log.js';
import {
  levelPolicyOf,
  WorkerLink,
  type NixCommand,
  type UplinkStarts,
  type WorkerChannel,
  type WorkerSshTarget,
} from '../ssh/worker-link.js';
import { BootError } from './boot-error.js';
import type { Deletions } from './deletions.js';
import type { WorkerRecord } from './state.js';
import type { StoreLease, StoreVolumes } from './store-volumes.js';
import { createWorkerServer, resolveImage, type WorkerCreateDeps } from './worker-create.js';
import { planWorker, type UserDataFor } from './worker-plan.js';
import { checkZstdRelay, waitForAddress, waitForReady, waitForSsh } from './worker-readiness.js';
import { WorkerStoreSlot } from './worker-store.js';

export interface WorkerDeps extends WorkerCreateDeps {
  log: Logger;
  /** Where each pool's uploads start (zstd "auto"), kept from one worker to the next. */
  uplinkStarts?: UplinkStarts;
  /** The one way a server is deleted: retried until the API says it is gone. */
  deletions: Pick<Deletions, 'delete'>;
}

export type ProgressListener = (line: string) => void;

/**
 * The worker's state is its own: others read it through getters and change it only through the
 * methods below (the pool: markBusy, markSessions, markIdle, markDeleting, boot, destroy; the
 * daemon: adopt, holdStore, disconnect). Inside, reads go through the getters and writes to the private fields.
 */
export class Worker {
  /** The kept connection (and more when needed); its loss means the worker is gone. */
  private currentLink: WorkerLink | undefined;
  private readonly listeners = new Set<ProgressListener>();
  private readonly log: Logger;
  /** The store slot this worker holds (warm store pools); given back once its server is gone. */
  private readonly store: WorkerStoreSlot;

  /**
   * `userData` is given for a worker to boot, not for one adopted after a restart; `store` is the
   * pool's store volumes, for a pool with a warm store.
   */
  constructor(
    readonly pool: PoolConfig,
    private readonly rec: WorkerRecord,
    private readonly deps: WorkerDeps,
    private userData?: UserDataFor,
    store?: StoreVolumes,
  ) {
    this.log = deps.log.child({ pool: pool.name, worker: rec.name });
    this.store = new WorkerStoreSlot(store, this.log, this.say);
  }

  /** A worker planned by `planWorker()`, ready to boot. */
  static planned(pool: PoolConfig, deps: WorkerDeps, store?: StoreVolumes): Worker {
    const { record, userData } = planWorker(pool, deps.instance);
    return new Worker(pool, record, deps, userData, store);
  }

  /** An adopted worker keeps the store slot of the volume its server has (after a restart). */
  holdStore(lease: StoreLease | undefined): void {
    this.store.hold(lease);
    if (lease?.volume) this.rec.volumeId = lease.volume.id;
  }

  /** The state file's entry for this server; it changes only through this worker. */
  get record(): Readonly<WorkerRecord> {
    return this.rec;
  }

  get phase(): WorkerRecord['phase'] {
    return this.rec.phase;
  }

  /** The link to the worker's sshd, while there is one (for diagnostics and tests). */
  get link(): WorkerLink | undefined {
    return this.currentLink;
  }

  get connected(): boolean {
    return this.currentLink?.connected ?? false;
  }

  /** A session got its slot: the record counts `active` sessions, and the worker is no longer idle. */
  markBusy(active: number): void {
    this.rec.activeSessions = active;
    delete this.rec.idleSince;
  }

  /** What a compressed session settled on, each way; the state file (and `status`) shows it once the session's slot is given back. */
  noteCompression(levels: { up?: string; down?: string }): void {
    this.rec.zstd = { ...this.rec.zstd, ...levels };
  }

  /** The record counts `active` sessions (running plus promised; the pool counts them). */
  markSessions(active: number): void {
    this.rec.activeSessions = active;
  }

  /** The last session ended and the idle timer started at `now` (ms since the epoch). */
  markIdle(now: number): void {
    this.rec.idleSince = new Date(now).toISOString();
  }

  /** The server is to be deleted; the record stays, as "deleting", until it is. */
  markDeleting(): void {
    this.rec.phase = 'deleting';
  }

  /**
   * Calls `listener` once when the kept connection fails or closes, unless `disconnect()` or a
   * delete ended it first. The worker is unusable from then on.
   */
  onConnectionLost(listener: (why: string) => void): void {
    this.currentLink?.onLost(listener);
  }

  /** Ends every connection to the worker; the server keeps running. */
  disconnect(): void {
    this.currentLink?.end();
  }

  onProgress(listener: ProgressListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private step(n: number, of: number, line: string, fields: Record<string, unknown> = {}): void {
    this.log.info(fields, `boot step ${n}/${of}: ${line}`);
    this.say(line);
  }

  /** A line for the sessions waiting for this boot (their stderr). */
  private readonly say = (line: string): void => {
    const text = `nix-hcloud-builder: ${line}`;
    for (const listener of this.listeners) listener(text);
  };

  /** Aborts the boot in progress (bootTimeout, or cancelBoot()). */
  private bootAbort: AbortController | undefined;

  /** Stops a boot in progress; the boot then fails with this reason. */
  cancelBoot(reason: string): void {
    this.bootAbort?.abort(new BootError(reason));
  }

  /**
   * Boots the server within the pool's bootTimeout. A failure is reported to the waiting sessions
   * and thrown; the caller deletes the server (see Pool), also when the create never answered.
   */
  async boot(): Promise<void> {
    const started = Date.now();
    const abort = new AbortController();
    this.bootAbort = abort;
    const timer = setTimeout(
      () => abort.abort(new BootError(`boot did not finish within bootTimeout (${formatDuration(this.pool.bootTimeoutMs)})`)),
      this.pool.bootTimeoutMs,
    );
    try {
      await this.bootSteps(abort.signal, started);
    } catch (err) {
      const reason = abort.signal.aborted ? (abort.signal.reason as Error) : (err as Error);
      this.disconnect();
      this.log.error({ err: reason }, 'boot failed');
      for (const listener of this.listeners) listener(`nix-hcloud-builder: boot of ${this.record.name} failed: ${reason.message}`);
      throw reason instanceof BootError ? reason : new BootError(reason.message);
    } finally {
      clearTimeout(timer);
      this.bootAbort = undefined;
    }
  }

  private async bootSteps(signal: AbortSignal, started: number): Promise<void> {
    const STEPS = 5;
    const { hcloud } = this.deps;
    const userData = this.userData;
    if (!userData) throw new BootError('this worker was not planned for a boot');
    this.userData = undefined;
    const image = await resolveImage(hcloud, this.pool.image, signal);

    // 1. Create the server: first location that has the first server type, and so on; with a warm
    // store, first in its volume's location, with the volume.
    await this.store.acquire(signal);
    const created = await createWorkerServer(
      { pool: this.pool, rec: this.rec, image, userData, store: this.store, log: this.log },
      this.deps,
      signal,
    );
    const price = this.record.hourlyPriceEur;
    this.rec.phase = 'booting';
    await this.deps.save();
    this.step(
      1,
      STEPS,
      `created server ${this.record.name} (id ${this.record.id}), type ${this.record.serverType} in ${this.record.location}${price ? `, €${Number(price).toFixed(4)}/h` : ''}`,
      { id: this.record.id },
    );

    // 2. Wait for the create and start actions.
    await hcloud.waitForActions([created.action, ...created.next_actions], { signal });
    this.step(2, STEPS, `server is running (${formatDuration(Date.now() - started)})`);

    // 3. Wait for an address: IPv4 when the pool has one, else IPv6.
    const address = await waitForAddress(hcloud, this.record.id, signal);
    this.rec.address = address;
    await this.deps.save();
    this.step(3, STEPS, `address ${address}`);

    // 4. Wait for sshd, with the host key pinned.
    const link = await waitForSsh(() => this.openLink(10_000), this.log, signal);
    this.currentLink = link;
    this.step(4, STEPS, `sshd answers with the expected host key (${formatDuration(Date.now() - started)})`, {
      compression: link.sshCompression,
    });

    // 5. Wait for readyCommand (disk expansion done, Nix up).
    await waitForReady(link, this.pool.readyCommand, this.log, signal);
    if (this.rec.volumeId !== undefined) await this.store.check(link, this.rec.volumeId);
    await checkZstdRelay(link, this.log, this.say);
    this.rec.phase = 'ready';
    this.rec.readyAt = new Date().toISOString();
    await this.deps.save();
    this.step(5, STEPS, `worker ${this.record.name} is ready after ${formatDuration(Date.now() - started)}`, {
      bootMs: Date.now() - started,
    });
  }

  private target(): WorkerSshTarget {
    return {
      host: this.record.address as string,
      port: this.record.sshPort,
      hostPublicKey: this.record.hostPublicKey,
      loginPrivateKey: this.record.loginPrivateKey,
      keepaliveIntervalMs: this.pool.keepaliveIntervalMs,
      compression: this.pool.compression,
    };
  }

  /** Opens a session's channel on the worker: its Nix command, compressed when the relay runs. */
  execNix(command: NixCommand): Promise<WorkerChannel> {
    if (!this.currentLink) return Promise.reject(new Error('the worker connection is gone'));
    return this.currentLink.openSession(command);
  }

  private openLink(timeoutMs: number): Promise<WorkerLink> {
    const zstdLevels = levelPolicyOf(
      this.pool.compressionLevel,
      this.pool.compressionLevelMin,
      this.pool.compressionLevelMax,
      DEFAULT_ZSTD_LEVEL,
    );
    const upStart = this.deps.uplinkStarts?.for(this.pool.name, zstdLevels);
    return WorkerLink.open(this.target(), timeoutMs, {
      log: this.log,
      compression: this.pool.compression,
      zstdLevels,
      ...(upStart ? { upStart } : {}),
    });
  }

  /** Reconnects to a server we created earlier (after a daemon restart) and checks it is usable. */
  async adopt(timeoutMs: number): Promise<void> {
    const link = await this.openLink(timeoutMs);
    this.currentLink = link;
    const result = await link.run(this.pool.readyCommand, timeoutMs);
    if (result.code !== 0) throw new Error(`readyCommand failed with status ${result.code}`);
    await checkZstdRelay(link, this.log, this.say);
    this.rec.phase = 'ready';
    this.rec.activeSessions = 0;
  }

  /**
   * Deletes the server through the deletion queue: resolves once the API says it is gone (also
   * when the create never answered and no server has its name); rejects only when the queue is
   * stopped first.
   */
  async destroy(reason: string): Promise<void> {
    this.markDeleting();
    await this.store.flush(this.currentLink);
    this.disconnect();
    await this.deps.save().catch(() => undefined);
    await this.deps.deletions.delete({ id: this.record.id, name: this.record.name }, reason);
    // The delete action has ended, so Hetzner has detached the volume: the slot is free again.
    this.store.release();
  }
}
