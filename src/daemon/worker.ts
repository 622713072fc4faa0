/**
 * One Hetzner server that runs builds: its boot, as numbered steps each logged and each reported
 * to the sessions waiting for it; its kept ssh connection; and its deletion.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { PoolConfig } from '../core/config.js';
import { formatDuration } from '../core/duration.js';
import type { HcloudClient } from '../hcloud/client.js';
import { HcloudError, isVolumeAttached } from '../hcloud/errors.js';
import { serverAddress } from '../hcloud/address.js';
import type { CreateServerResponse, Server, ServerType } from '../hcloud/types.js';
import { generateKeyPair } from '../ssh/keys.js';
import { serverLabels, serverName } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import { BudgetExceeded, type Ledger } from './ledger.js';
import type { WorkerRecord } from './state.js';
import type { Deletions } from './deletions.js';
import { workerUserData, type StoreVolumeInput } from './user-data.js';
import type { StoreLease, StoreVolumes } from './store-volumes.js';
import { STORE_MARKER } from './store-script.js';
import { renderNixCommand, type NixCommand } from '../ssh/nix-command.js';
import { ZstdDecoder, zstdEncoderFor } from '../ssh/zstd-codec.js';
import { ZSTD_RELAY_CHECK, zstdRelayCommand } from '../ssh/zstd-relay.js';
import { connectWorker, execChannel, negotiatedCompression, HostKeyMismatch, isChannelRefusal, runCommand, writeGateOf, type SshClient, type WorkerChannel, type WorkerSshTarget } from '../ssh/worker-connection.js';

export class BootError extends Error {
  override name = 'BootError';
}

/** Create errors after which the next location, then the next server type, is worth a try. */
const TRY_ELSEWHERE = new Set(['resource_unavailable', 'resource_limit_exceeded', 'placement_error']);

export interface WorkerDeps {
  hcloud: HcloudClient;
  ledger: Ledger;
  budget?: { maxEurPerMonth: number };
  log: Logger;
  instance: string;
  /** The one way a server is deleted: retried until the API says it is gone. */
  deletions: Pick<Deletions, 'delete'>;
  /** Persists the record after each change that matters on restart. */
  save: () => Promise<void>;
  serverTypes: () => Promise<ServerType[]>;
  /** What the store volumes of every pool cost a month (for the budget); throws when their price is unknown. */
  volumesEurPerMonth?: () => Promise<number>;
}

/** The user data of a planned worker, with or without its store volume (known only at create). */
export type UserDataFor = (store?: StoreVolumeInput) => string;

export type ProgressListener = (line: string) => void;

/**
 * The worker's state is its own: others read it through getters and change it only through the
 * methods below (the pool: reserve, release, markBusy, markIdle, markDeleting; the daemon:
 * disconnect). Inside, reads go through the getters and writes to the private fields.
 */
export class Worker {
  /** The kept connection; its loss means the worker is gone. */
  private connection: SshClient | undefined;
  /** More connections, opened when the worker's sshd refuses more channels on the others (MaxSessions). */
  private readonly extraClients: SshClient[] = [];
  private opening: Promise<SshClient> | undefined;
  /** Sessions go through the worker's zstd relay (compression "zstd", and the relay answered). */
  private zstd = false;
  /** Sessions running plus sessions promised a slot on this worker. */
  private sessions = 0;
  private readonly listeners = new Set<ProgressListener>();
  private readonly log: Logger;
  /** The store slot this worker holds (warm store pools); given back once its server is gone. */
  private storeLease: StoreLease | undefined;

  /**
   * `userData` is given for a worker to boot, not for one adopted after a restart; `store` is the
   * pool's store volumes, for a pool with a warm store.
   */
  constructor(readonly pool: PoolConfig, private readonly rec: WorkerRecord, private readonly deps: WorkerDeps, private userData?: UserDataFor, private readonly store?: StoreVolumes) {
    this.log = deps.log.child({ pool: pool.name, worker: rec.name });
  }

  /** A worker planned by `plan()`, ready to boot. */
  static planned(pool: PoolConfig, deps: WorkerDeps, store?: StoreVolumes): Worker {
    const { record, userData } = Worker.plan(pool, deps.instance);
    return new Worker(pool, record, deps, userData, store);
  }

  /** An adopted worker keeps the store slot of the volume its server has (after a restart). */
  holdStore(lease: StoreLease | undefined): void {
    this.storeLease = lease;
    if (lease?.volume) this.rec.volumeId = lease.volume.id;
  }

  /**
   * A fresh record for a server not created yet, and the user data to create it with. The host
   * private key lives only in that user data: the state keeps the public half, to pin it.
   */
  static plan(pool: PoolConfig, instance: string): { record: WorkerRecord; userData: UserDataFor } {
    const suffix = `${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;
    const name = serverName(instance, pool.name, suffix);
    const host = generateKeyPair(`${name}-host`);
    const login = generateKeyPair(`nix-hcloud-builder@${name}`);
    const record: WorkerRecord = {
      id: 0,
      name,
      pool: pool.name,
      serverType: '',
      location: '',
      phase: 'creating',
      sshPort: pool.sshPort,
      hostPublicKey: host.publicKey,
      loginPrivateKey: login.privateKey,
      createdAt: new Date().toISOString(),
      activeSessions: 0,
    };
    return {
      record,
      userData: (store) => workerUserData({ hostKey: host, loginPublicKey: login.publicKey, zstdRelay: pool.compression === 'zstd', ...(store ? { store } : {}) }),
    };
  }

  /** The state file's entry for this server; it changes only through this worker. */
  get record(): Readonly<WorkerRecord> {
    return this.rec;
  }

  get phase(): WorkerRecord['phase'] {
    return this.rec.phase;
  }

  /** The kept connection, while there is one. */
  get client(): SshClient | undefined {
    return this.connection;
  }

  get connected(): boolean {
    return this.connection !== undefined;
  }

  /** Sessions running plus sessions promised a slot on this worker. */
  get used(): number {
    return this.sessions;
  }

  /** Promises a slot to a session (one waiting for the boot, or one about to start). */
  reserve(): void {
    this.sessions++;
  }

  /** Gives a slot back. */
  release(): void {
    this.sessions--;
    this.rec.activeSessions = this.sessions;
  }

  /** A session got its slot: the record counts it, and the worker is no longer idle. */
  markBusy(): void {
    this.rec.activeSessions = this.sessions;
    delete this.rec.idleSince;
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
    const client = this.connection;
    if (!client) return;
    const lost = (why: string): void => {
      if (this.connection !== client) return;
      this.connection = undefined;
      listener(why);
    };
    client.on('error', (err: Error) => lost(err.message));
    client.on('close', () => lost('closed'));
  }

  /** Ends every connection to the worker; the server keeps running. */
  disconnect(): void {
    const client = this.connection;
    // Forgotten before it ends, so that its close is not taken for a lost worker.
    this.connection = undefined;
    client?.end();
    for (const extra of this.extraClients.splice(0)) extra.end();
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
    const timer = setTimeout(() => abort.abort(new BootError(`boot did not finish within bootTimeout (${formatDuration(this.pool.bootTimeoutMs)})`)), this.pool.bootTimeoutMs);
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
    this.step(1, STEPS, `created server ${this.record.name} (id ${this.record.id}), type ${this.record.serverType} in ${this.record.location}${price ? `, €${Number(price).toFixed(4)}/h` : ''}`, { id: this.record.id });

    // 2. Wait for the create and start actions.
    await hcloud.waitForActions([created.action, ...created.next_actions], { signal });
    this.step(2, STEPS, `server is running (${formatDuration(Date.now() - started)})`);

    // 3. Wait for an address: IPv4 when the pool has one, else IPv6.
    const address = await this.waitForAddress(signal);
    this.rec.address = address;
    await this.deps.save();
    this.step(3, STEPS, `address ${address}`);

    // 4. Wait for sshd, with the host key pinned.
    this.connection = await this.waitForSsh(signal);
    this.step(4, STEPS, `sshd answers with the expected host key (${formatDuration(Date.now() - started)})`, { compression: negotiatedCompression(this.connection) });

    // 5. Wait for readyCommand (disk expansion done, Nix up).
    await this.waitForReady(signal);
    if (this.rec.volumeId !== undefined) await this.checkStoreVolume();
    await this.checkZstdRelay();
    this.rec.phase = 'ready';
    this.rec.readyAt = new Date().toISOString();
    await this.deps.save();
    this.step(5, STEPS, `worker ${this.record.name} is ready after ${formatDuration(Date.now() - started)}`, { bootMs: Date.now() - started });
  }

  private async resolveImage(signal: AbortSignal): Promise<string> {
    const ref = this.pool.image;
    if ('name' in ref) return ref.name;
    if ('id' in ref) return String(ref.id);
    // `created` has whole seconds: of two snapshots made in the same second, the higher id is newer.
    const images = await this.deps.hcloud.listImages({ type: 'snapshot', labelSelector: ref.labelSelector, sort: ['created:desc', 'id:desc'] }, signal);
    const newest = images.find((image) => image.status === 'available');
    if (!newest) throw new BootError(`no available snapshot matches the label selector "${ref.labelSelector}"`);
    return String(newest.id);
  }

  /**
   * Where to try, in order: every server type in the store volume's location, with the volume;
   * then, as without one, each server type in each other location, cold.
   */
  private attempts(): { serverType: string; location: string; volume?: StoreVolumeInput & { name: string } }[] {
    const volume = this.storeLease?.volume;
    const store = this.pool.store;
    const all = this.pool.serverTypes.flatMap((serverType) => this.pool.locations.map((location) => ({ serverType, location })));
    if (!volume || !store) return all;
    const warm = this.pool.serverTypes.map((serverType) => ({ serverType, location: volume.location, volume: { volumeId: volume.id, gcAtPercent: store.gcAtPercent, name: volume.name } }));
    return [...warm, ...all.filter((a) => a.location !== volume.location)];
  }

  private async create(image: string, userData: UserDataFor, signal: AbortSignal): Promise<Pick<CreateServerResponse, 'action' | 'next_actions'>> {
    const tried: string[] = [];
    let wentCold = false;
    for (const { serverType, location, volume } of this.attempts()) {
      if (!volume && this.storeLease?.volume && !wentCold) {
        // The volume's location cannot take a server now: boot elsewhere with an empty store.
        wentCold = true;
        const lease = this.storeLease;
        this.storeLease = undefined;
        lease.release();
        this.log.warn({ volume: lease.volume?.name, location: lease.volume?.location }, 'the store volume\'s location cannot take a server; booting with an empty store elsewhere');
        this.say(`store volume ${lease.volume?.name ?? ''} is in ${lease.volume?.location ?? ''}, which cannot take a server now (${tried.join(', ')}); booting elsewhere with an empty store`);
      }
      const price = await this.hourlyPrice(serverType, location, signal).catch(() => undefined);
      if (this.deps.budget) {
        try {
          // Fail closed: with a budget set, a server whose price we cannot read is not created.
          if (price === undefined) throw new BudgetExceeded(`budget: no price known for ${serverType} in ${location}`);
          const volumes = await this.volumesEurPerMonth();
          this.deps.ledger.check(this.deps.budget.maxEurPerMonth, Number(price), `${serverType} in ${location}`, Date.now(), volumes);
        } catch (err) {
          if (!(err instanceof BudgetExceeded)) throw err;
          tried.push(`${serverType} in ${location} (${err.message})`);
          this.log.warn({ serverType, location }, err.message);
          continue;
        }
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
        this.deps.ledger.opened({
          id: answer.server.id, name: this.record.name, pool: this.pool.name, serverType, location,
          hourlyEur: Number(price ?? 0), createdAt: answer.server.created,
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

  /** The store volumes' monthly cost; unknown with a budget set is refused like an unknown server price. */
  private async volumesEurPerMonth(): Promise<number> {
    if (!this.deps.volumesEurPerMonth) return 0;
    try {
      return await this.deps.volumesEurPerMonth();
    } catch (err) {
      throw new BudgetExceeded(`budget: the store volumes' price is unknown (${(err as Error).message})`);
    }
  }

  private async hourlyPrice(serverType: string, location: string, signal?: AbortSignal): Promise<string | undefined> {
    signal?.throwIfAborted();
    const types = await this.deps.serverTypes();
    const type = types.find((t) => t.name === serverType);
    return type?.prices.find((p) => p.location === location)?.price_hourly.gross;
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

  private async waitForSsh(signal: AbortSignal): Promise<SshClient> {
    let lastError = '';
    for (let attempt = 1; ; attempt++) {
      signal.throwIfAborted();
      try {
        return await connectWorker(this.target(), 10_000);
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
    const result = await runCommand(this.client as SshClient, `test -e ${STORE_MARKER}`, 30_000);
    if (result.code === 0) return;
    const line = `store volume ${this.rec.volumeId} is attached but this worker's store is not on it (no ${STORE_MARKER}): the build runs on an empty store while the volume is billed; the volume did not appear or could not be mounted (see the worker's boot log), or the image uses neither cloud-init nor nixos/worker.nix's store unit (a NixOS worker image built before it: rebuild it, or unset "store")`;
    this.log.warn({ volumeId: this.rec.volumeId }, line);
    this.say(line);
  }

  /**
   * With compression "zstd", sessions run through the worker's relay: check once that it runs
   * (Python, libzstd). Without it sessions go uncompressed, said loudly, rather than failing.
   */
  private async checkZstdRelay(): Promise<void> {
    this.zstd = false;
    if (this.pool.compression !== 'zstd') return;
    const result = await runCommand(this.client as SshClient, ZSTD_RELAY_CHECK, 30_000);
    if (result.code === 0) {
      this.zstd = true;
      this.log.info({ relay: result.stdout.trim() }, 'zstd relay answers');
      return;
    }
    const why = (result.stderr || result.stdout).trim().split('\n').pop()?.slice(0, 200) ?? '';
    const line = `compression "zstd": the worker's relay does not run (status ${result.code}${why ? `: ${why}` : ''}); its sessions go uncompressed`;
    this.log.warn({ code: result.code }, line);
    this.say(line);
  }

  /**
   * Runs a Nix remote-store command for a session: as it is, or inside the zstd relay with the
   * daemon's end of the two streams.
   */
  async execNix(command: NixCommand): Promise<WorkerChannel> {
    const rendered = renderNixCommand(command);
    if (!this.zstd) return this.exec(rendered);
    const upstream = await this.exec(zstdRelayCommand(rendered));
    return { ...upstream, codec: { encoder: zstdEncoderFor(this.pool.compressionLevel), decoder: new ZstdDecoder() } };
  }

  private async waitForReady(signal: AbortSignal): Promise<void> {
    const client = this.client as SshClient;
    let last = '';
    for (let attempt = 1; ; attempt++) {
      signal.throwIfAborted();
      const result = await runCommand(client, this.pool.readyCommand, 60_000);
      if (result.code === 0) return;
      last = (result.stderr || result.stdout).trim().split('\n').pop() ?? '';
      if (attempt === 1 || attempt % 40 === 0) this.log.info({ attempt, code: result.code, output: last.slice(0, 200) }, 'waiting for readyCommand');
      await sleep(250, undefined, { signal });
    }
  }

  /**
   * Runs a command on the worker in a new channel of a kept connection. When every connection
   * refuses another channel (OpenSSH's MaxSessions, 10 by default), one more is opened.
   */
  async exec(command: string): Promise<WorkerChannel> {
    for (const client of [this.client, ...this.extraClients]) {
      if (!client) continue;
      try {
        return { channel: await execChannel(client, command), gate: writeGateOf(client) };
      } catch (err) {
        if (!isChannelRefusal(err)) throw err;
      }
    }
    if (!this.client) throw new Error('the worker connection is gone');
    this.opening ??= connectWorker(this.target(), 15_000).then(
      (client) => {
        this.opening = undefined;
        this.extraClients.push(client);
        client.on('error', () => undefined);
        client.on('close', () => {
          const index = this.extraClients.indexOf(client);
          if (index >= 0) this.extraClients.splice(index, 1);
        });
        this.log.info({ connections: 1 + this.extraClients.length }, 'the worker refused more channels; opened another connection');
        return client;
      },
      (err: unknown) => {
        this.opening = undefined;
        throw err;
      },
    );
    const client = await this.opening;
    return { channel: await execChannel(client, command), gate: writeGateOf(client) };
  }

  /** Reconnects to a server we created earlier (after a daemon restart) and checks it is usable. */
  async adopt(timeoutMs: number): Promise<void> {
    const client = await connectWorker(this.target(), timeoutMs);
    this.connection = client;
    const result = await runCommand(client, this.pool.readyCommand, timeoutMs);
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
    const client = this.connection;
    if (!this.storeLease?.volume || !client) return;
    const result = await runCommand(client, 'sync', 10_000).catch((err: unknown) => ({ code: -1, stderr: (err as Error).message }));
    if (result.code === 0) this.log.info({ volume: this.storeLease.volume.name }, 'flushed the store volume before deleting the server');
    else this.log.warn({ volume: this.storeLease.volume.name, code: result.code }, 'could not flush the store volume; deleting the server anyway');
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
