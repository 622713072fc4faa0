/**
 * One Hetzner server that runs builds: its boot, as numbered steps each logged and each reported
 * to the sessions waiting for it; its kept ssh connection; and its deletion.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { SETUP_FAILED_MARKER, type PoolConfig } from '../core/config.js';
import { formatDuration } from '../core/duration.js';
import type { HcloudClient } from '../hcloud/client.js';
import { HcloudError, isVolumeAttached } from '../hcloud/errors.js';
import { serverAddress } from '../hcloud/address.js';
import type { CreateServerResponse, Server } from '../hcloud/types.js';
import { serverLabels } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import { HostKeyMismatch, WorkerLink, type NixCommand, type WorkerChannel, type WorkerSshTarget } from '../ssh/worker-link.js';
import { BudgetExceeded } from './ledger.js';
import type { Money } from './money.js';
import { placements, TRY_ELSEWHERE } from './placement.js';
import type { WorkerRecord } from './state.js';
import type { Deletions } from './deletions.js';
import { planWorker, type UserDataFor } from './worker-plan.js';
import type { StoreLease, StoreVolumes } from './store-volumes.js';
import { STORE_MARKER } from './store-script.js';

export class BootError extends Error {
  override name = 'BootError';
}

export interface WorkerDeps {
  hcloud: HcloudClient;
  /** Prices, the budget check and the ledger. */
  money: Money;
  log: Logger;
  instance: string;
  /** The one way a server is deleted: retried until the API says it is gone. */
  deletions: Pick<Deletions, 'delete'>;
  /** Persists the record after each change that matters on restart. */
  save: () => Promise<void>;
}

export type ProgressListener = (line: string) => void;

/**
 * The worker's state is its own: others read it through getters and change it only through the
 * methods below (the pool: reserve, release, markBusy, markIdle, markDeleting; the daemon:
 * disconnect). Inside, reads go through the getters and writes to the private fields.
 */
export class Worker {
  /** The kept connection (and more when needed); its loss means the worker is gone. */
  private currentLink: WorkerLink | undefined;
  private readonly listeners = new Set<ProgressListener>();
  private readonly log: Logger;
  /** The store slot this worker holds (warm store pools); given back once its server is gone. */
  private storeLease: StoreLease | undefined;

  /**
   * `userData` is given for a worker to boot, not for one adopted after a restart; `store` is the
   * pool's store volumes, for a pool with a warm store.
   */
  constructor(
    readonly pool: PoolConfig,
    private readonly rec: WorkerRecord,
    private readonly deps: WorkerDeps,
    private userData?: UserDataFor,
    private readonly store?: StoreVolumes,
  ) {
    this.log = deps.log.child({ pool: pool.name, worker: rec.name });
  }

  /** A worker planned by `planWorker()`, ready to boot. */
  static planned(pool: PoolConfig, deps: WorkerDeps, store?: StoreVolumes): Worker {
    const { record, userData } = planWorker(pool, deps.instance);
    return new Worker(pool, record, deps, userData, store);
  }

  /** An adopted worker keeps the store slot of the volume its server has (after a restart). */
  holdStore(lease: StoreLease | undefined): void {
    this.storeLease = lease;
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
  private say(line: string): void {
    const text = `nix-hcloud-builder: ${line}`;
    for (const listener of this.listeners) listener(text);
  }

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
    const image = await this.resolveImage(signal);

    // 1. Create the server: first location that has the first server type, and so on; with a warm
    // store, first in its volume's location, with the volume.
    if (this.store) this.storeLease = await this.store.acquire(signal, (line) => this.say(line));
    const created = await this.create(image, userData, signal);
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
    const address = await this.waitForAddress(signal);
    this.rec.address = address;
    await this.deps.save();
    this.step(3, STEPS, `address ${address}`);

    // 4. Wait for sshd, with the host key pinned.
    this.currentLink = await this.waitForSsh(signal);
    this.step(4, STEPS, `sshd answers with the expected host key (${formatDuration(Date.now() - started)})`, {
      compression: this.currentLink.sshCompression,
    });

    // 5. Wait for readyCommand (disk expansion done, Nix up).
    await this.waitForReady(signal);
    if (this.rec.volumeId !== undefined) await this.checkStoreVolume();
    await this.checkZstdRelay();
    this.rec.phase = 'ready';
    this.rec.readyAt = new Date().toISOString();
    await this.deps.save();
    this.step(5, STEPS, `worker ${this.record.name} is ready after ${formatDuration(Date.now() - started)}`, {
      bootMs: Date.now() - started,
    });
  }

  private async resolveImage(signal: AbortSignal): Promise<string> {
    const ref = this.pool.image;
    if ('name' in ref) return ref.name;
    if ('id' in ref) return String(ref.id);
    // `created` has whole seconds: of two snapshots made in the same second, the higher id is newer.
    const images = await this.deps.hcloud.listImages(
      { type: 'snapshot', labelSelector: ref.labelSelector, sort: ['created:desc', 'id:desc'] },
      signal,
    );
    const newest = images.find((image) => image.status === 'available');
    if (!newest) throw new BootError(`no available snapshot matches the label selector "${ref.labelSelector}"`);
    return String(newest.id);
  }

  private async create(
    image: string,
    userData: UserDataFor,
    signal: AbortSignal,
  ): Promise<Pick<CreateServerResponse, 'action' | 'next_actions'>> {
    const tried: string[] = [];
    let wentCold = false;
    const warm = this.storeLease?.volume;
    for (const { serverType, location, volume } of placements(this.pool, warm)) {
      if (!volume && this.storeLease?.volume && !wentCold) {
        // The volume's location cannot take a server now: boot elsewhere with an empty store.
        wentCold = true;
        const lease = this.storeLease;
        this.storeLease = undefined;
        lease.release();
        this.log.warn(
          { volume: lease.volume?.name, location: lease.volume?.location },
          "the store volume's location cannot take a server; booting with an empty store elsewhere",
        );
        this.say(
          `store volume ${lease.volume?.name ?? ''} is in ${lease.volume?.location ?? ''}, which cannot take a server now (${tried.join(', ')}); booting elsewhere with an empty store`,
        );
      }
      signal.throwIfAborted();
      let price: string | undefined;
      try {
        price = await this.deps.money.priceServer(serverType, location);
      } catch (err) {
        if (!(err instanceof BudgetExceeded)) throw err;
        tried.push(`${serverType} in ${location} (${err.message})`);
        this.log.warn({ serverType, location }, err.message);
        continue;
      }
      this.rec.serverType = serverType;
      this.rec.location = location;
      if (price !== undefined) this.rec.hourlyPriceEur = price;
      // Saved before the call: if we die during it, the restart finds the server by its name.
      await this.deps.save();
      try {
        const answer = await this.deps.hcloud.createServer(
          {
            name: this.record.name,
            server_type: serverType,
            image,
            location,
            user_data: userData(volume),
            labels: serverLabels(this.deps.instance, this.pool.name),
            start_after_create: true,
            ...(volume ? { volumes: [volume.volumeId], automount: false } : {}),
            public_net: { enable_ipv4: this.pool.ipv4, enable_ipv6: true },
          },
          signal,
        );
        this.rec.id = answer.server.id;
        if (volume) this.rec.volumeId = volume.volumeId;
        this.deps.money.ledger.opened({
          id: answer.server.id,
          name: this.record.name,
          pool: this.pool.name,
          serverType,
          location,
          hourlyEur: Number(price ?? 0),
          createdAt: answer.server.created,
        });
        return { action: answer.action, next_actions: answer.next_actions };
      } catch (err) {
        // A volume still attached elsewhere (never two servers on one): go on as if out of capacity here.
        if (err instanceof HcloudError && (TRY_ELSEWHERE.has(err.code) || (volume !== undefined && isVolumeAttached(err)))) {
          tried.push(`${serverType} in ${location} (${err.code})`);
          this.log.warn({ serverType, location, code: err.code }, `cannot create here: ${err.message}`);
          continue;
        }
        throw err;
      }
    }
    throw new BootError(`no server could be created; tried ${tried.join(', ')}`);
  }

  private async waitForAddress(signal: AbortSignal): Promise<string> {
    for (;;) {
      const server: Server = await this.deps.hcloud.getServer(this.record.id, signal);
      if (server.status === 'running') {
        const ip = serverAddress(server);
        if (ip) return ip;
      }
      await sleep(500, undefined, { signal });
    }
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

  private async waitForSsh(signal: AbortSignal): Promise<WorkerLink> {
    let lastError = '';
    for (let attempt = 1; ; attempt++) {
      signal.throwIfAborted();
      try {
        return await this.openLink(10_000);
      } catch (err) {
        if (err instanceof HostKeyMismatch) throw new BootError(err.message);
        const message = (err as Error).message;
        if (message !== lastError) this.log.debug({ attempt, err: message }, 'sshd not reachable yet');
        lastError = message;
      }
      // Short first retries: sshd usually comes up within a second of "running".
      await sleep(Math.min(100 * attempt, 2000), undefined, { signal });
    }
  }

  /**
   * A volume is billed whether it is used or not: say so loudly when the worker did not put its
   * store on it (the mount failed and the store started empty, or the image cannot use it: one
   * with neither cloud-init nor the NixOS worker image's store unit).
   */
  private async checkStoreVolume(): Promise<void> {
    const result = await (this.currentLink as WorkerLink).run(`test -e ${STORE_MARKER}`, 30_000);
    if (result.code === 0) return;
    const line = `store volume ${this.rec.volumeId} is attached but this worker's store is not on it (no ${STORE_MARKER}): the build runs on an empty store while the volume is billed; the volume did not appear or could not be mounted (see the worker's boot log), or the image uses neither cloud-init nor nixos/worker.nix's store unit (a NixOS worker image built before it: rebuild it, or unset "store")`;
    this.log.warn({ volumeId: this.rec.volumeId }, line);
    this.say(line);
  }

  /** Probes the worker's zstd relay (with compression "zstd"); without it sessions go uncompressed, said loudly. */
  private async checkZstdRelay(): Promise<void> {
    const probe = await (this.currentLink as WorkerLink).probeRelay();
    if ('notAsked' in probe) return;
    if (probe.zstd) {
      this.log.info({ relay: probe.relay }, 'zstd relay answers');
      return;
    }
    const line = `compression "zstd": the worker's relay does not run (status ${probe.code}${probe.why ? `: ${probe.why}` : ''}); its sessions go uncompressed`;
    this.log.warn({ code: probe.code }, line);
    this.say(line);
  }

  /** Opens a session's channel on the worker: its Nix command, compressed when the relay runs. */
  execNix(command: NixCommand): Promise<WorkerChannel> {
    if (!this.currentLink) return Promise.reject(new Error('the worker connection is gone'));
    return this.currentLink.openSession(command);
  }

  private openLink(timeoutMs: number): Promise<WorkerLink> {
    return WorkerLink.open(this.target(), timeoutMs, {
      log: this.log,
      compression: this.pool.compression,
      compressionLevel: this.pool.compressionLevel,
    });
  }

  private async waitForReady(signal: AbortSignal): Promise<void> {
    const link = this.currentLink as WorkerLink;
    let last = '';
    for (let attempt = 1; ; attempt++) {
      signal.throwIfAborted();
      const result = await link.run(this.pool.readyCommand, 60_000);
      if (result.code === 0) return;
      // A setup step the worker cannot do without failed (the cloud-config wrote why): it never
      // becomes ready, so the boot fails now, with that reason, instead of at bootTimeout.
      const failed = await link.run(`cat ${SETUP_FAILED_MARKER} 2>/dev/null`, 60_000);
      const reason = failed.code === 0 ? failed.stdout.trim().split('\n')[0]?.slice(0, 500) : undefined;
      if (reason) throw new BootError(`the worker's setup failed: ${reason}`);
      last = (result.stderr || result.stdout).trim().split('\n').pop() ?? '';
      if (attempt === 1 || attempt % 40 === 0)
        this.log.info({ attempt, code: result.code, output: last.slice(0, 200) }, 'waiting for readyCommand');
      await sleep(250, undefined, { signal });
    }
  }

  /** Reconnects to a server we created earlier (after a daemon restart) and checks it is usable. */
  async adopt(timeoutMs: number): Promise<void> {
    this.currentLink = await this.openLink(timeoutMs);
    const result = await this.currentLink.run(this.pool.readyCommand, timeoutMs);
    if (result.code !== 0) throw new Error(`readyCommand failed with status ${result.code}`);
    await this.checkZstdRelay();
    this.rec.phase = 'ready';
    this.rec.activeSessions = 0;
  }

  /**
   * A server's delete is a power cut for its volume: what the store wrote is flushed first (ext4's
   * journal and Nix's database keep it consistent without, but recent paths could be lost).
   */
  private async flushStore(): Promise<void> {
    const link = this.currentLink;
    if (!this.storeLease?.volume || !link?.connected) return;
    const result = await link.run('sync', 10_000).catch((err: unknown) => ({ code: -1, stderr: (err as Error).message }));
    if (result.code === 0) this.log.info({ volume: this.storeLease.volume.name }, 'flushed the store volume before deleting the server');
    else
      this.log.warn(
        { volume: this.storeLease.volume.name, code: result.code },
        'could not flush the store volume; deleting the server anyway',
      );
  }

  private releaseStore(): void {
    this.storeLease?.release();
    this.storeLease = undefined;
  }

  /**
   * Deletes the server through the deletion queue: resolves once the API says it is gone (also
   * when the create never answered and no server has its name); rejects only when the queue is
   * stopped first.
   */
  async destroy(reason: string): Promise<void> {
    this.markDeleting();
    await this.flushStore();
    this.disconnect();
    await this.deps.save().catch(() => undefined);
    await this.deps.deletions.delete({ id: this.record.id, name: this.record.name }, reason);
    // The delete action has ended, so Hetzner has detached the volume: the slot is free again.
    this.releaseStore();
  }
}
