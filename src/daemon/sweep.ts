/**
 * The daemon's periodic sweep: a server labelled as ours that no pool knows is deleted (a leak
 * from a crash or a lost create answer), and the pools enforce their lifetime caps. Never two
 * sweeps at once.
 */
import type { PoolConfig } from '../core/config.js';
import { instanceSelector, LABEL_POOL } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import type { HcloudClient } from '../hcloud/client.js';
import type { Server } from '../hcloud/types.js';
import type { Deletions } from './deletions.js';
import type { Pool } from './pool.js';
import { whatMustGo } from './sweep-rule.js';

export interface SweepDeps {
  hcloud: Pick<HcloudClient, 'listServers'>;
  instance: string;
  log: Logger;
  pools: Map<string, Pick<Pool, 'enforceLifetime' | 'knows'>>;
  poolConfigs: Record<string, PoolConfig>;
  deletions: Pick<Deletions, 'has' | 'pending'>;
  /** Why another daemon holds this instance now, if one does: then nothing unknown is deleted. */
  instanceLost: () => string | undefined;
  /** Deletes a server of ours that no pool manages, in the background. */
  deleteOrphan: (server: Server, reason: string) => void;
}

export class Sweep {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;

  constructor(private readonly deps: SweepDeps) {}

  /** Sweeps every `intervalMs` until `stop()`. */
  start(intervalMs: number): void {
    this.timer = setInterval(() => void this.run(), intervalMs);
    this.timer.unref();
  }

  /** Sweeps now, or answers the sweep in progress. */
  run(): Promise<void> {
    this.running ??= this.sweep().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** No more periodic sweeps. */
  stop(): void {
    clearInterval(this.timer);
  }

  /** Resolves once the sweep in progress, if any, is done. */
  get idle(): Promise<void> {
    return this.running ?? Promise.resolve();
  }

  private async sweep(): Promise<void> {
    const { deps } = this;
    try {
      for (const pool of deps.pools.values()) pool.enforceLifetime();
      const servers = await deps.hcloud.listServers({ labelSelector: instanceSelector(deps.instance) });
      const lost = deps.instanceLost();
      if (lost) {
        deps.log.error({ why: lost }, 'sweep skipped: another daemon holds this instance, so servers this daemon does not know may be its');
        return;
      }
      // The sweep rule; servers whose delete is pending are the deletion queue's, and the
      // lifetimes of the workers we know are their pools' (which know their sessions).
      const candidates = servers.map((server) => ({
        subject: server,
        created: server.created,
        known: [...deps.pools.values()].some((p) => p.knows(server)),
        pool: deps.poolConfigs[server.labels[LABEL_POOL] ?? ''],
        deleting: deps.deletions.has(server),
      }));
      const unknown = whatMustGo(candidates, Date.now())
        .filter((v) => v.reason === 'unknown')
        .map((v) => v.subject);
      for (const server of unknown) {
        deps.log.warn({ server: server.name, id: server.id }, 'sweep: our label, but no worker of ours; deleting it');
        deps.deleteOrphan(server, 'sweep: no worker of ours');
      }
      deps.log.debug({ found: servers.length, deleted: unknown.length, deleting: deps.deletions.pending.length }, 'sweep done');
    } catch (err) {
      deps.log.error({ err }, 'sweep failed; trying again next interval');
    }
  }
}
