/**
 * `serve`: the daemon. Its start, four steps each logged as "step n/4":
 *   1. lock the state folder and read what an earlier run left;
 *   2. load (or make) the endpoint's host key and the authorized keys (endpoint-keys.ts);
 *   3. reconcile: adopt our servers that the state knows and that answer, delete the rest (reconcile.ts);
 *   4. listen for Nix, then sweep periodically (sweep.ts).
 * On SIGTERM/SIGINT, `stop()`: stop listening, delete every worker (unless keepWorkers), exit.
 */
import type { Server as ControlServer } from 'node:net';
import type { Config } from '../core/config.js';
import { Endpoint, parseAuthorizedKeys } from '../ssh/endpoint.js';
import { warnIfSsh2InternalsDiffer } from '../ssh/ssh2-internals.js';
import { zstdBinding } from '../ssh/zstd-codec.js';
import { UplinkStarts } from '../ssh/worker-link.js';
import { resolvePoolCompression } from './compression.js';
import { HcloudClient } from '../hcloud/client.js';
import type { Server } from '../hcloud/types.js';
import { Ledger } from './ledger.js';
import { Money } from './money.js';
import type { Logger } from '../core/log.js';
import { serveControl } from './control.js';
import { ensureHostKey, loadAuthorizedKeys } from './endpoint-keys.js';
import { startGrace, type Grace } from './grace.js';
import { Pool } from './pool.js';
import { reconcile } from './reconcile.js';
import { checkPoolServerTypes } from './server-types.js';
import { writeFileAtomic } from '../core/atomic-file.js';
import { StateFile } from './state.js';
import { StateSaver } from './state-saver.js';
import { Sweep } from './sweep.js';
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

export class Daemon {
  readonly pools = new Map<string, Pool>();
  /** The warm store's volumes of each pool that has one. */
  readonly stores = new Map<string, StoreVolumes>();
  endpoint!: Endpoint;
  port = 0;
  private state!: StateFile;
  private saver!: StateSaver;
  /** Every server being deleted (workers, failed boots, orphans), retried until gone; kept in the state. */
  deletions!: Deletions;
  readonly hcloud: HcloudClient;
  private readonly log: Logger;
  /** Prices, the budget check and the ledger. */
  money!: Money;
  private stopping: Promise<void> | undefined;
  private sweeper: Sweep | undefined;
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
    this.saver = new StateSaver(
      state,
      () => ({ workers: [...this.pools.values()].flatMap((p) => p.records), deletions: this.deletions.pending }),
      this.log,
    );
    if (read.problem) this.log.error({ keptAs: read.keptAs }, `${read.problem}; kept it aside and falling back to a label sweep`);
    this.deletions = new Deletions(
      {
        hcloud: this.hcloud,
        log: this.log,
        policy: deletePolicyOf(config),
        changed: () => this.saver.schedule(),
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
        save: () => this.saver.save(),
        uplinkStarts: new UplinkStarts(),
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
            changed: () => this.saver.schedule(),
            handshakes: new PoolHandshakes((state.data.handshakes ??= []), pool.name, pool.image, () => this.saver.schedule()),
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
      const reconciled = await reconcile(state.data.workers, {
        hcloud: this.hcloud,
        instance: config.instance,
        log: this.log,
        pools: this.pools,
        stores: this.stores,
        deletions: this.deletions,
        workerDeps: deps,
        adoptTimeoutMs: this.options.adoptTimeoutMs ?? 15_000,
        deleteOrphan: (server, reason) => this.deleteOrphan(server, reason),
      });
      this.saver.schedule();
      this.log.info(reconciled, 'step 3/4: reconciled with the cloud; deletes go on in the background');

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
      this.sweeper = new Sweep({
        hcloud: this.hcloud,
        instance: config.instance,
        log: this.log,
        pools: this.pools,
        poolConfigs: config.pools,
        deletions: this.deletions,
        instanceLost: () => this.instanceLost,
        deleteOrphan: (server, reason) => this.deleteOrphan(server, reason),
      });
      this.sweeper.start(config.sweepIntervalMs);
    } catch (err) {
      this.deletions.stop();
      await this.lease?.release();
      await this.state.close();
      throw err;
    }
  }

  /** Sweeps now (the periodic sweep's work: sweep.ts); never two sweeps at once. */
  sweep(): Promise<void> {
    return this.sweeper?.run() ?? Promise.resolve();
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

  /**
   * Stops accepting, lets running sessions finish for up to shutdownGrace (or until
   * `skipGrace()`), then ends them and deletes every worker unless `keepWorkers`.
   */
  stop(keepWorkers = false): Promise<void> {
    this.stopping ??= (async () => {
      this.sweeper?.stop();
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
      await this.sweeper?.idle;
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
      await this.saver.save().catch(() => undefined);
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
