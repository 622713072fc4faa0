/**
 * One Hetzner server that runs builds: its boot, as numbered steps each logged and each reported
 * to the sessions waiting for it; its kept ssh connection; and its deletion.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { PoolConfig } from '../core/config.js';
import { formatDuration } from '../core/duration.js';
import type { HcloudClient } from '../hcloud/client.js';
import { HcloudError } from '../hcloud/errors.js';
import type { CreateServerResponse, Server, ServerType } from '../hcloud/types.js';
import { generateKeyPair } from '../ssh/keys.js';
import { serverLabels, serverName } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import { BudgetExceeded, type Ledger } from './ledger.js';
import type { WorkerRecord } from './state.js';
import { workerUserData } from './user-data.js';
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
  /** Persists the record after each change that matters on restart. */
  save: () => Promise<void>;
  serverTypes: () => Promise<ServerType[]>;
}

export type ProgressListener = (line: string) => void;

export class Worker {
  /** The kept connection; its loss means the worker is gone. */
  client: SshClient | undefined;
  /** More connections, opened when the worker's sshd refuses more channels on the others (MaxSessions). */
  private readonly extraClients: SshClient[] = [];
  private opening: Promise<SshClient> | undefined;
  /** Sessions running plus sessions promised a slot on this worker. */
  used = 0;
  private readonly listeners = new Set<ProgressListener>();
  private readonly log: Logger;

  /** `userData` is given for a worker to boot, not for one adopted after a restart. */
  constructor(readonly pool: PoolConfig, readonly record: WorkerRecord, private readonly deps: WorkerDeps, private userData?: string) {
    this.log = deps.log.child({ pool: pool.name, worker: record.name });
  }

  /**
   * A fresh record for a server not created yet, and the user data to create it with. The host
   * private key lives only in that user data: the state keeps the public half, to pin it.
   */
  static plan(pool: PoolConfig, instance: string): { record: WorkerRecord; userData: string } {
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
    return { record, userData: workerUserData({ hostKey: host, loginPublicKey: login.publicKey }) };
  }

  get phase(): WorkerRecord['phase'] {
    return this.record.phase;
  }

  onProgress(listener: ProgressListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private step(n: number, of: number, line: string, fields: Record<string, unknown> = {}): void {
    this.log.info(fields, `boot step ${n}/${of}: ${line}`);
    const text = `nix-hcloud-builder: ${line}`;
    for (const listener of this.listeners) listener(text);
  }

  /**
   * Boots the server within the pool's bootTimeout. A failure is reported to the waiting sessions
   * and thrown; the caller deletes the server (see Pool), also when the create never answered.
   */
  private bootAbort: AbortController | undefined;

  /** Stops a boot in progress; the boot then fails with this reason. */
  cancelBoot(reason: string): void {
    this.bootAbort?.abort(new BootError(reason));
  }

  async boot(): Promise<void> {
    const started = Date.now();
    const abort = new AbortController();
    this.bootAbort = abort;
    const timer = setTimeout(() => abort.abort(new BootError(`boot did not finish within bootTimeout (${formatDuration(this.pool.bootTimeoutMs)})`)), this.pool.bootTimeoutMs);
    try {
      await this.bootSteps(abort.signal, started);
    } catch (err) {
      const reason = abort.signal.aborted ? (abort.signal.reason as Error) : (err as Error);
      this.client?.end();
      this.client = undefined;
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

    // 1. Create the server: first location that has the first server type, and so on.
    const created = await this.create(image, userData, signal);
    const price = this.record.hourlyPriceEur;
    this.record.phase = 'booting';
    await this.deps.save();
    this.step(1, STEPS, `created server ${this.record.name} (id ${this.record.id}), type ${this.record.serverType} in ${this.record.location}${price ? `, €${Number(price).toFixed(4)}/h` : ''}`, { id: this.record.id });

    // 2. Wait for the create and start actions.
    await hcloud.waitForActions([created.action, ...created.next_actions], { signal });
    this.step(2, STEPS, `server is running (${formatDuration(Date.now() - started)})`);

    // 3. Wait for an address: IPv4 when the pool has one, else IPv6.
    const address = await this.waitForAddress(signal);
    this.record.address = address;
    await this.deps.save();
    this.step(3, STEPS, `address ${address}`);

    // 4. Wait for sshd, with the host key pinned.
    this.client = await this.waitForSsh(signal);
    this.step(4, STEPS, `sshd answers with the expected host key (${formatDuration(Date.now() - started)})`, { compression: negotiatedCompression(this.client) });

    // 5. Wait for readyCommand (disk expansion done, Nix up).
    await this.waitForReady(signal);
    this.record.phase = 'ready';
    this.record.readyAt = new Date().toISOString();
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

  private async create(image: string, userData: string, signal: AbortSignal): Promise<Pick<CreateServerResponse, 'action' | 'next_actions'>> {
    const tried: string[] = [];
    for (const serverType of this.pool.serverTypes) {
      for (const location of this.pool.locations) {
        const price = await this.hourlyPrice(serverType, location, signal).catch(() => undefined);
        if (this.deps.budget) {
          try {
            // Fail closed: with a budget set, a server whose price we cannot read is not created.
            if (price === undefined) throw new BudgetExceeded(`budget: no price known for ${serverType} in ${location}`);
            this.deps.ledger.check(this.deps.budget.maxEurPerMonth, Number(price), `${serverType} in ${location}`);
          } catch (err) {
            if (!(err instanceof BudgetExceeded)) throw err;
            tried.push(`${serverType} in ${location} (${err.message})`);
            this.log.warn({ serverType, location }, err.message);
            continue;
          }
        }
        this.record.serverType = serverType;
        this.record.location = location;
        if (price !== undefined) this.record.hourlyPriceEur = price;
        // Saved before the call: if we die during it, the restart finds the server by its name.
        await this.deps.save();
        try {
          const answer = await this.deps.hcloud.createServer(
            {
              name: this.record.name,
              server_type: serverType,
              image,
              location,
              user_data: userData,
              labels: serverLabels(this.deps.instance, this.pool.name),
              start_after_create: true,
              public_net: { enable_ipv4: this.pool.ipv4, enable_ipv6: true },
            },
            signal,
          );
          this.record.id = answer.server.id;
          this.deps.ledger.opened({
            id: answer.server.id, name: this.record.name, pool: this.pool.name, serverType, location,
            hourlyEur: Number(price ?? 0), createdAt: answer.server.created,
          });
          return { action: answer.action, next_actions: answer.next_actions };
        } catch (err) {
          if (err instanceof HcloudError && TRY_ELSEWHERE.has(err.code)) {
            tried.push(`${serverType} in ${location} (${err.code})`);
            this.log.warn({ serverType, location, code: err.code }, `cannot create here: ${err.message}`);
            continue;
          }
          throw err;
        }
      }
    }
    throw new BootError(`no server could be created; tried ${tried.join(', ')}`);
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
        const ip = server.public_net.ipv4?.ip ?? hostOf(server.public_net.ipv6?.ip);
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

  get connectionCount(): number {
    return (this.client ? 1 : 0) + this.extraClients.length;
  }

  /** Reconnects to a server we created earlier (after a daemon restart) and checks it is usable. */
  async adopt(timeoutMs: number): Promise<void> {
    this.client = await connectWorker(this.target(), timeoutMs);
    const result = await runCommand(this.client, this.pool.readyCommand, timeoutMs);
    if (result.code !== 0) throw new Error(`readyCommand failed with status ${result.code}`);
    this.record.phase = 'ready';
    this.record.activeSessions = 0;
  }

  /** Deletes the server and waits for the delete action; not-found counts as deleted. */
  async destroy(reason: string): Promise<void> {
    this.record.phase = 'deleting';
    this.client?.end();
    this.client = undefined;
    for (const extra of this.extraClients.splice(0)) extra.end();
    if (this.record.id === 0) {
      // The create call never answered: look the server up by its (unique) name.
      // A failed lookup throws: the caller retries rather than forget a server that may exist.
      const found = await this.deps.hcloud.listServers({ name: this.record.name });
      const server = found[0];
      if (!server) return;
      this.record.id = server.id;
    }
    await this.deps.save().catch(() => undefined);
    const started = Date.now();
    await this.deps.hcloud.deleteServerAndWait(this.record.id);
    this.deps.ledger.closed(this.record.name);
    this.log.info({ id: this.record.id, reason, deleteMs: Date.now() - started }, `deleted server ${this.record.name}`);
  }
}

function hostOf(ipv6Net: string | undefined): string | undefined {
  // Hetzner gives the /64 network ("2a01:db8::/64"); the server itself is ::1 in it.
  if (!ipv6Net) return undefined;
  return `${ipv6Net.split('/')[0]}1`;
}
