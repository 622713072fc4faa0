/**
 * `serve`: the daemon. Steps, each logged:
 *   1. lock the state folder and read what an earlier run left;
 *   2. load (or make) the endpoint's host key and the authorized keys;
 *   3. reconcile: adopt our servers that the state knows and that answer, delete the rest;
 *   4. listen for Nix;
 *   5. on SIGTERM/SIGINT: stop listening, delete every worker (unless keepWorkers), exit.
 */
import { existsSync, readFileSync } from 'node:fs';
import type { Server as ControlServer } from 'node:net';
import type { Config } from '../core/config.js';
import { Endpoint, parseAuthorizedKeys } from '../ssh/endpoint.js';
import { warnIfSsh2InternalsDiffer } from '../ssh/ssh2-internals.js';
import { zstdBinding } from '../ssh/zstd-codec.js';
import { resolvePoolCompression } from './compression.js';
import { HcloudClient } from '../hcloud/client.js';
import type { Server } from '../hcloud/types.js';
import { generateKeyPair, hostKeyPaths } from '../ssh/keys.js';
import { Ledger } from './ledger.js';
import { Money } from './money.js';
import { instanceSelector, LABEL_POOL } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import { serveControl } from './control.js';
import { startGrace, type Grace } from './grace.js';
import { Pool } from './pool.js';
import { whatMustGo } from './sweep-rule.js';
import { checkPoolServerTypes } from './server-types.js';
import { writeFileAtomic } from '../core/atomic-file.js';
import { isRecordOf, StateFile, type WorkerRecord } from './state.js';
import { deletePolicyOf, Deletions } from './deletions.js';
import { InstanceLease } from './instance-lease.js';
import { instanceFilePath } from '../core/instance.js';
import { Worker, type WorkerDeps } from './worker.js';
import { StoreVolumes } from './store-volumes.js';
import { PoolHandshakes } from './handshakes.js';

export interface DaemonOptions {
  config: Config;
  token: string;
  log: Logger;
  /** How long an adoption attempt may take per server at start. */
  adoptTimeoutMs?: number;
}

/** On stop, how long deletes may go on before the daemon exits; what is left stays in the state for the next start. */
export const STOP_DELETE_WAIT_MS = 60_000;

/** The endpoint's host key, made on first start; its public line goes into the machines file. */
export function ensureHostKey(stateDir: string): { privateKey: string; publicKey: string } {
  const paths = hostKeyPaths(stateDir);
  if (!existsSync(paths.privateKey)) {
    const pair = generateKeyPair('nix-hcloud-builder');
    writeFileAtomic(paths.privateKey, pair.privateKey, 0o600);
    writeFileAtomic(paths.publicKey, `${pair.publicKey}\n`, 0o644);
  }
  return { privateKey: readFileSync(paths.privateKey, 'utf8'), publicKey: readFileSync(paths.publicKey, 'utf8').trim() };
}

export function loadAuthorizedKeys(config: Config): string[] {
  const lines = [...config.authorizedKeys];
  if (config.authorizedKeysFile) {
    try {
      lines.push(...readFileSync(config.authorizedKeysFile, 'utf8').split('\n'));
    } catch (err) {
      throw new Error(
        `cannot read authorizedKeysFile ${config.authorizedKeysFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      );
    }
  }
  return lines;
}

export class Daemon {
  readonly pools = new Map<string, Pool>();
  /** The warm store's volumes of each pool that has one. */
  readonly stores = new Map<string, StoreVolumes>();
  endpoint!: Endpoint;
  port = 0;
  private state!: StateFile;
  /** Every server being deleted (workers, failed boots, orphans), retried until gone; kept in the state. */
  deletions!: Deletions;
  private saveScheduled = false;
  readonly hcloud: HcloudClient;
  private readonly log: Logger;
  /** Prices, the budget check and the ledger. */
  money!: Money;
  private stopping: Promise<void> | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private sweeping: Promise<void> | undefined;
  private grace: Grace | undefined;
  ledger!: Ledger;
  private control: ControlServer | undefined;
  private lease: InstanceLease | undefined;
  /** Set when another daemon took the instance over: from then on nothing unknown is deleted. */
  private instanceLost: string | undefined;
  private readonly lostListeners: ((why: string) => void)[] = [];

  constructor(private readonly options: DaemonOptions) {
    this.log = options.log;
    this.hcloud = new HcloudClient({
      endpoint: options.config.hcloud.endpoint,
      token: options.token,
      logger: options.log.child({ component: 'hcloud' }),
    });
  }

  private get config(): Config {
    return this.options.config;
  }

  async start(): Promise<void> {
    const { config } = this;
    // 1. Lock the state folder; read the previous state.
    const { state, read } = await StateFile.open(config.stateDir, config.instance);
    this.state = state;
    if (read.problem) this.log.error({ keptAs: read.keptAs }, `${read.problem}; kept it aside and falling back to a label sweep`);
    this.deletions = new Deletions(
      {
        hcloud: this.hcloud,
        log: this.log,
        policy: deletePolicyOf(config),
        changed: () => this.scheduleSave(),
        gone: (record) => this.ledger.closed(record.name),
      },
      state.data.deletions ?? [],
    );
    this.log.info(
      {
        stateDir: config.stateDir,
        known: state.data.workers.length,
        deleting: this.deletions.pending.length,
        node: process.version,
        nodeFlags: process.execArgv,
      },
      'step 1/4: state folder locked',
    );

    try {
      // A default instance made now is kept, so the next start has the same one.
      if (config.instanceOrigin === 'new') writeFileAtomic(instanceFilePath(config.stateDir), `${config.instance}\n`, 0o644);
      // No other live daemon may run as this instance (it would delete our servers, and we its).
      this.lease = new InstanceLease({
        hcloud: this.hcloud,
        instance: config.instance,
        log: this.log,
        ...(state.data.leaseHolder ? { previousHolder: state.data.leaseHolder } : {}),
      });
      await this.lease.acquire();
      state.data.leaseHolder = this.lease.holder;
      await state.save();
      this.lease.keepAlive((why) => this.loseInstance(why));
      this.log.info({ instance: config.instance, instanceOrigin: config.instanceOrigin }, 'instance lease held');

      // 2. Keys.
      const hostKey = ensureHostKey(config.stateDir);
      const authorizedKeys = parseAuthorizedKeys(loadAuthorizedKeys(config));
      if (authorizedKeys.length === 0) this.log.warn('no authorized keys: nobody can log in (set authorizedKeys or authorizedKeysFile)');
      this.log.info({ hostKey: hostKey.publicKey, authorizedKeys: authorizedKeys.length }, 'step 2/4: keys loaded');
      // A different ssh2 silently loses the channel window limit: say so once, at start.
      await warnIfSsh2InternalsDiffer(this.log);
      // Compression "zstd" needs libzstd here; without it those pools run uncompressed, said now.
      const { pools, zstdPools, libzstd, unavailable } = resolvePoolCompression(Object.values(config.pools), zstdBinding);
      if (libzstd) this.log.info({ pools: zstdPools, libzstd }, 'compression zstd: libzstd loaded');
      if (unavailable) this.log.warn({ pools: zstdPools }, `${unavailable}; these pools run with compression "none"`);

      this.ledger = Ledger.load(config.stateDir);
      this.money = new Money({
        hcloud: this.hcloud,
        ledger: this.ledger,
        budget: config.budget,
        storeGb: () => [...this.stores.values()].flatMap((s) => s.volumes).reduce((sum, v) => sum + v.sizeGb, 0),
      });
      const deps: WorkerDeps = {
        hcloud: this.hcloud,
        money: this.money,
        deletions: this.deletions,
        log: this.log,
        instance: config.instance,
        save: () => this.saveNow(),
      };
      // A new store volume counts against the budget for a whole month; unknown price: refused.
      const checkBudget = (sizeGb: number, what: string): Promise<void> => this.money.checkVolume(sizeGb, what);
      for (const pool of pools) {
        const store = pool.store
          ? new StoreVolumes({ ...pool, store: pool.store }, { hcloud: this.hcloud, instance: config.instance, log: this.log, checkBudget })
          : undefined;
        if (store) this.stores.set(pool.name, store);
        this.pools.set(
          pool.name,
          new Pool(pool, {
            log: this.log,
            createWorker: () => Worker.planned(pool, deps, store),
            changed: () => this.scheduleSave(),
            handshakes: new PoolHandshakes((state.data.handshakes ??= []), pool.name, pool.image, () => this.scheduleSave()),
            bootRefusal: async () =>
              this.hcloud.tokenRefused ? 'the Hetzner Cloud API refused the token (401)' : this.money.budgetRefusal(pool),
          }),
        );
      }

      // The pools' server types must exist and match their systems' architecture.
      const types = await this.money.serverTypes();
      for (const pool of pools) {
        for (const warning of checkPoolServerTypes(pool, types)) this.log.warn(warning);
      }

      // 3. Reconcile with what the API says is ours.
      await this.reconcile(state.data.workers, deps);

      // 4. Listen.
      this.endpoint = new Endpoint({
        hostKey: hostKey.privateKey,
        authorizedKeys,
        pools: this.pools,
        log: this.log,
        loginGraceMs: config.limits.loginGraceMs,
        maxConnectionsPerSource: config.limits.maxConnectionsPerSource,
        maxStartups: config.limits.maxStartups,
        maxAuthTries: config.limits.maxAuthTries,
      });
      this.port = await this.endpoint.listen(config.listen.port, config.listen.host);
      this.log.info({ host: config.listen.host, port: this.port, pools: [...this.pools.keys()] }, 'step 4/4: listening for Nix');
      this.control = await serveControl(config.stateDir, (request, progress) => this.up(request.pools, request.workers, progress));
      this.sweepTimer = setInterval(() => void this.sweep(), config.sweepIntervalMs);
      this.sweepTimer.unref();
    } catch (err) {
      this.deletions.stop();
      await this.lease?.release();
      await this.state.close();
      throw err;
    }
  }

  private async reconcile(previous: WorkerRecord[], deps: WorkerDeps): Promise<void> {
    const servers: Server[] = await this.hcloud.listServers({ labelSelector: instanceSelector(this.config.instance) });
    // The store volumes first: an adopted server keeps the slot of the volume it has.
    for (const store of this.stores.values()) {
      await store.load().catch((err: unknown) => this.log.error({ err }, 'cannot list the store volumes; trying again at the next boot'));
    }
    // Deletes a former run left unfinished go on first; servers among them are not adopted.
    this.deletions.resume();
    const adopted: string[] = [];
    let deleting = 0;
    for (const server of servers) {
      const record = previous.find((r) => isRecordOf(r, server));
      const pool = this.pools.get(server.labels[LABEL_POOL] ?? '');
      if (this.deletions.has(server)) {
        deleting++;
        continue;
      }
      if (record && pool && record.phase === 'ready' && record.address && server.status === 'running') {
        const worker = new Worker(pool.config, { ...record, id: server.id }, deps);
        try {
          await worker.adopt(this.options.adoptTimeoutMs ?? 15_000);
          worker.holdStore(this.stores.get(pool.config.name)?.claim(server.volumes ?? []));
          pool.adopt(worker);
          adopted.push(server.name);
          continue;
        } catch (err) {
          worker.disconnect();
          this.log.warn({ server: server.name, err: (err as Error).message }, 'cannot adopt our server; deleting it');
        }
      } else {
        this.log.warn({ server: server.name, id: server.id, known: Boolean(record) }, 'our server is not adoptable; deleting it');
      }
      this.deleteOrphan(server, 'not adoptable at start');
      deleting++;
    }
    this.scheduleSave();
    this.log.info(
      { found: servers.length, adopted: adopted.length, deleted: deleting },
      'step 3/4: reconciled with the cloud; deletes go on in the background',
    );
  }

  /**
   * The periodic sweep: a server labelled as ours that no pool knows is deleted (a leak from a
   * crash or a lost create answer), and lifetime caps are enforced. Never two sweeps at once.
   */
  sweep(): Promise<void> {
    this.sweeping ??= (async () => {
      try {
        for (const pool of this.pools.values()) pool.enforceLifetime();
        const servers = await this.hcloud.listServers({ labelSelector: instanceSelector(this.config.instance) });
        if (this.instanceLost) {
          this.log.error(
            { why: this.instanceLost },
            'sweep skipped: another daemon holds this instance, so servers this daemon does not know may be its',
          );
          return;
        }
        // The sweep rule; servers whose delete is pending are the deletion queue's, and the
        // lifetimes of the workers we know are their pools' (which know their sessions).
        const candidates = servers.map((server) => ({
          subject: server,
          created: server.created,
          known: [...this.pools.values()].some((p) => p.knows(server)),
          pool: this.config.pools[server.labels[LABEL_POOL] ?? ''],
          deleting: this.deletions.has(server),
        }));
        const unknown = whatMustGo(candidates, Date.now())
          .filter((v) => v.reason === 'unknown')
          .map((v) => v.subject);
        for (const server of unknown) {
          this.log.warn({ server: server.name, id: server.id }, 'sweep: our label, but no worker of ours; deleting it');
          this.deleteOrphan(server, 'sweep: no worker of ours');
        }
        this.log.debug({ found: servers.length, deleted: unknown.length, deleting: this.deletions.pending.length }, 'sweep done');
      } catch (err) {
        this.log.error({ err }, 'sweep failed; trying again next interval');
      } finally {
        this.sweeping = undefined;
      }
    })();
    return this.sweeping;
  }

  /**
   * Another daemon took this instance over (its lease): this one deletes nothing it does not know
   * from now on, and says so to whoever listens (`serve` stops).
   */
  private loseInstance(why: string): void {
    this.instanceLost = why;
    this.log.error(
      { instance: this.config.instance, why },
      'another daemon runs as this instance now; stopping (give each daemon its own instance)',
    );
    for (const listener of this.lostListeners.splice(0)) listener(why);
  }

  /** Called once if another daemon takes this instance over while this one runs. */
  onInstanceLost(listener: (why: string) => void): void {
    if (this.instanceLost) listener(this.instanceLost);
    else this.lostListeners.push(listener);
  }

  /** A server of ours that no pool manages: deleted in the background, retried until gone. */
  private deleteOrphan(server: Server, reason: string): void {
    this.deletions.delete(server, reason).catch(() => undefined);
  }

  private saveNow(): Promise<void> {
    this.state.data.workers = [...this.pools.values()].flatMap((p) => p.records);
    this.state.data.deletions = this.deletions.pending;
    return this.state.save();
  }

  /** Coalesces bursts of changes (sessions starting and ending) into one write. */
  private scheduleSave(): void {
    if (this.saveScheduled) return;
    this.saveScheduled = true;
    setImmediate(() => {
      this.saveScheduled = false;
      this.saveNow().catch((err: unknown) => this.log.error({ err }, 'cannot write the state file'));
    });
  }

  /**
   * Stops accepting, lets running sessions finish for up to shutdownGrace (or until
   * `skipGrace()`), then ends them and deletes every worker unless `keepWorkers`.
   */
  stop(keepWorkers = false): Promise<void> {
    this.stopping ??= (async () => {
      clearInterval(this.sweepTimer);
      this.control?.close();
      const graceMs = this.config.shutdownGraceMs;
      this.log.info(
        { keepWorkers, activeSessions: this.endpoint?.activeSessions ?? 0, graceMs },
        keepWorkers ? 'stopping; keeping the workers' : 'stopping; then deleting every worker',
      );
      // close() waits for open connections; it resolves once the sessions are gone.
      const closed = this.endpoint?.stopListening();
      if (this.endpoint && this.endpoint.activeSessions > 0) {
        const endpoint = this.endpoint;
        this.grace = startGrace({ graceMs, activeSessions: () => endpoint.activeSessions, closed });
        await this.grace.done;
      }
      this.endpoint?.closeAll();
      await closed;
      await this.sweeping;
      // Deletes (the workers', orphans') get a bounded time; what is left stays in the state.
      const closing = Promise.allSettled([...this.pools.values()].map((p) => p.close(keepWorkers)));
      let timer: NodeJS.Timeout | undefined;
      const waited = new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), STOP_DELETE_WAIT_MS);
      });
      const done = await Promise.race([closing.then(() => this.deletions.drain(STOP_DELETE_WAIT_MS)), waited]);
      clearTimeout(timer);
      if (!done)
        this.log.error(
          { deleting: this.deletions.pending.map((d) => d.name) },
          'stopping with servers not yet deleted; the next start goes on deleting them',
        );
      this.deletions.stop();
      await closing;
      await this.saveNow().catch(() => undefined);
      await this.lease?.release();
      await this.state.close();
      this.log.info('stopped');
    })();
    return this.stopping;
  }

  /** `up`: boots workers in the given pools (all when empty) ahead of a build. */
  async up(poolNames: string[], workers: number, progress: (line: string) => void): Promise<Record<string, number>> {
    const names = poolNames.length > 0 ? poolNames : [...this.pools.keys()];
    for (const name of names) {
      if (!this.pools.has(name)) throw new Error(`unknown pool "${name}"; pools: ${[...this.pools.keys()].join(', ')}`);
    }
    this.log.info({ pools: names, workers }, 'up: booting workers ahead of builds');
    const ready: Record<string, number> = {};
    await Promise.all(
      names.map(async (name) => {
        ready[name] = await (this.pools.get(name) as Pool).warm(workers, progress);
      }),
    );
    return ready;
  }

  /** A second signal: end the grace period now (workers are still deleted). */
  skipGrace(): void {
    this.grace?.end();
  }
}
