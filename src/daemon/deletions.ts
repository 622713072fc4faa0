/**
 * Deleting a server: the one verb for it. Every server of ours that should go (an idle worker, a
 * failed boot, an orphan found at start or by the sweep, `down`, `gc`) is put in this queue,
 * which tries again with backoff, whatever the API answered (423 `locked`, 429, 5xx, a network
 * error, even a 403), until a `GET` of the server says 404. A server we created and nobody
 * deletes is the worst bug, so the daemon never gives up: the queue is kept in the state file and
 * a restart goes on with it; a delete still failing after an hour is logged as an error and shown
 * by `status`. One-shot commands (`down`, `gc`) give up after a bounded time and say what is left.
 *
 * One attempt, each step logged at debug level:
 *   1. find the server's id by its name when the create never answered (none: it was never made);
 *   2. `DELETE /servers/{id}` (404: already gone) and wait for the delete action;
 *   3. `GET /servers/{id}`: 404 means gone; anything else is a failed attempt.
 */
import type { Config } from '../core/config.js';
import { formatDuration } from '../core/duration.js';
import type { Logger } from '../core/log.js';
import type { HcloudClient } from '../hcloud/client.js';
import { isNotFound } from '../hcloud/errors.js';
import type { Clock } from './idle-timer.js';
import { isRecordOf } from './state.js';

/** A server being deleted, as the state file keeps it. */
export interface DeletionRecord {
  /** Hetzner server id; 0 when the create never answered (then found by name). */
  id: number;
  name: string;
  /** Why it is deleted (idle timeout, boot failed, orphan, down, …). */
  reason: string;
  /** When its deletion was first asked for (ISO); kept across restarts. */
  since: string;
  /** Attempts that failed so far. */
  failures: number;
  lastError?: string;
  /** When the next attempt is due (ISO), while one is scheduled. */
  nextAttemptAt?: string;
}

export interface DeletePolicy {
  /** Wait after the first failure; each later wait is twice the one before. */
  firstRetryMs: number;
  /** The waits stop growing here. */
  maxRetryMs: number;
  /** A delete still failing this long after it was asked for is an error (log and `status`). */
  overdueAfterMs: number;
}

export const DEFAULT_DELETE_POLICY: Readonly<DeletePolicy> = Object.freeze({
  firstRetryMs: 10_000,
  maxRetryMs: 300_000,
  overdueAfterMs: 3_600_000,
});

/** The config's retry waits (`deleteRetry`), as a policy. */
export function deletePolicyOf(config: Pick<Config, 'deleteRetry'>): Pick<DeletePolicy, 'firstRetryMs' | 'maxRetryMs'> {
  return { firstRetryMs: config.deleteRetry.firstWaitMs, maxRetryMs: config.deleteRetry.maxWaitMs };
}

/** Wait after failure number `failures` (1 for the first): doubling from firstRetryMs, capped at maxRetryMs. */
export function deleteRetryDelayMs(policy: Pick<DeletePolicy, 'firstRetryMs' | 'maxRetryMs'>, failures: number): number {
  return Math.min(policy.maxRetryMs, policy.firstRetryMs * 2 ** Math.max(0, failures - 1));
}

/** Whether a deletion has been failing for longer than the policy allows before it is an error. */
export function isOverdue(
  record: Pick<DeletionRecord, 'since'>,
  now: number,
  overdueAfterMs = DEFAULT_DELETE_POLICY.overdueAfterMs,
): boolean {
  return now - Date.parse(record.since) >= overdueAfterMs;
}

/** A deletion cut short by `stop()`: the server may still exist; the record stays for the next start. */
export class DeletionStopped extends Error {
  override name = 'DeletionStopped';
}

/**
 * Retry waits must keep a one-shot command (or a stopping daemon) alive, unlike idle timers: a
 * referenced timer, not `systemClock`'s unreferenced one.
 */
export const keepAliveClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export interface DeletionsDeps {
  hcloud: Pick<HcloudClient, 'deleteServer' | 'getServer' | 'listServers' | 'waitForActions'>;
  log: Logger;
  clock?: Clock;
  policy?: Partial<DeletePolicy>;
  /** Called after every change of the queue (the daemon persists it). */
  changed?: () => void;
  /** Called once per server when it is gone (the ledger closes its entry). */
  gone?: (record: DeletionRecord) => void;
  /** How long one attempt waits for the delete action; default 120 s. */
  actionTimeoutMs?: number;
}

interface Entry {
  record: DeletionRecord;
  waiters: { resolve: () => void; reject: (err: Error) => void }[];
  timer: unknown;
  running: boolean;
}

export class Deletions {
  private readonly entries: Entry[] = [];
  private readonly clock: Clock;
  readonly policy: DeletePolicy;
  private readonly log: Logger;
  private stopped = false;
  private readonly emptied: (() => void)[] = [];

  /** `previous`: the records a former run left in the state; call `resume()` to go on with them. */
  constructor(
    private readonly deps: DeletionsDeps,
    previous: DeletionRecord[] = [],
  ) {
    this.clock = deps.clock ?? keepAliveClock;
    this.policy = { ...DEFAULT_DELETE_POLICY, ...definedOnly(deps.policy ?? {}) };
    this.log = deps.log.child({ component: 'deletions' });
    for (const record of previous) this.entries.push({ record: { ...record }, waiters: [], timer: undefined, running: false });
  }

  /** The servers still being deleted (copies, for the state file and `status`). */
  get pending(): DeletionRecord[] {
    return this.entries.map((e) => ({ ...e.record }));
  }

  /** Those pending past the policy's overdue time. */
  overdue(): DeletionRecord[] {
    return this.pending.filter((r) => isOverdue(r, this.clock.now(), this.policy.overdueAfterMs));
  }

  /** Whether this server's deletion is pending (the sweep leaves those to the queue). */
  has(server: { id: number; name: string }): boolean {
    return this.find(server) !== undefined;
  }

  private find(server: { id: number; name: string }): Entry | undefined {
    return this.entries.find((e) => isRecordOf(e.record, server) || (server.id !== 0 && e.record.id === server.id));
  }

  /** Starts the attempts of the records a former run left, at once. */
  resume(): void {
    for (const entry of this.entries) {
      if (entry.running || entry.timer !== undefined) continue;
      this.log.info(
        { server: entry.record.name, id: entry.record.id, since: entry.record.since, failures: entry.record.failures },
        'going on with the deletion of a server',
      );
      this.schedule(entry, 0);
    }
  }

  /**
   * Deletes the server; resolves once a GET says it is gone. A server already pending joins its
   * deletion (the first reason and `since` stay). Rejects only with `DeletionStopped`.
   */
  delete(server: { id: number; name: string }, reason: string): Promise<void> {
    if (this.stopped) return Promise.reject(new DeletionStopped(`not deleting ${server.name}: the queue is stopped`));
    let entry = this.find(server);
    if (entry) {
      if (entry.record.id === 0 && server.id !== 0) entry.record.id = server.id;
    } else {
      const record: DeletionRecord = {
        id: server.id,
        name: server.name,
        reason,
        since: new Date(this.clock.now()).toISOString(),
        failures: 0,
      };
      entry = { record, waiters: [], timer: undefined, running: false };
      this.entries.push(entry);
      this.log.info({ server: server.name, id: server.id, reason }, `deleting server ${server.name}`);
      this.schedule(entry, 0);
      this.deps.changed?.();
    }
    const joined = entry;
    return new Promise((resolve, reject) => joined.waiters.push({ resolve, reject }));
  }

  /** Resolves true once nothing is pending, or false after `ms` with deletions still failing. */
  drain(ms: number): Promise<boolean> {
    if (this.entries.length === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (): void => {
        this.clock.clearTimeout(timer);
        resolve(true);
      };
      const timer = this.clock.setTimeout(() => {
        const index = this.emptied.indexOf(done);
        if (index >= 0) this.emptied.splice(index, 1);
        resolve(this.entries.length === 0);
      }, ms);
      this.emptied.push(done);
    });
  }

  /** No more attempts; the pending deletions' callers get `DeletionStopped`, their records stay. */
  stop(): void {
    this.stopped = true;
    for (const entry of this.entries) {
      if (entry.timer !== undefined) this.clock.clearTimeout(entry.timer);
      entry.timer = undefined;
      delete entry.record.nextAttemptAt;
      for (const waiter of entry.waiters.splice(0))
        waiter.reject(new DeletionStopped(`stopped before ${entry.record.name} was deleted (${entry.record.failures} failed attempts)`));
    }
  }

  private schedule(entry: Entry, delayMs: number): void {
    if (this.stopped) return;
    if (delayMs === 0) {
      void this.run(entry);
      return;
    }
    entry.record.nextAttemptAt = new Date(this.clock.now() + delayMs).toISOString();
    entry.timer = this.clock.setTimeout(() => {
      entry.timer = undefined;
      void this.run(entry);
    }, delayMs);
  }

  private async run(entry: Entry): Promise<void> {
    if (this.stopped || entry.running) return;
    entry.running = true;
    delete entry.record.nextAttemptAt;
    const started = this.clock.now();
    let failure: Error | undefined;
    try {
      await this.attempt(entry.record);
    } catch (err) {
      failure = err as Error;
    }
    entry.running = false;
    if (failure) this.failed(entry, failure);
    else this.finished(entry, started);
  }

  private async attempt(record: DeletionRecord): Promise<void> {
    const { hcloud } = this.deps;
    // 1. A create that never answered: the server, if any, has the (unique) name.
    if (record.id === 0) {
      const found = (await hcloud.listServers({ name: record.name })).find((s) => s.name === record.name);
      this.log.debug({ server: record.name, found: found?.id }, 'delete step 1/3: looked the server up by its name');
      if (!found) return;
      record.id = found.id;
      this.deps.changed?.();
    }
    // 2. Delete, and wait for the delete action.
    try {
      const action = await hcloud.deleteServer(record.id);
      this.log.debug({ server: record.name, id: record.id, action: action.id }, 'delete step 2/3: delete sent; waiting for its action');
      await hcloud.waitForActions([action], { timeoutMs: this.deps.actionTimeoutMs ?? 120_000 });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    // 3. Gone only when the API says so.
    try {
      const server = await hcloud.getServer(record.id);
      throw new Error(`server ${record.name} (id ${record.id}) still exists after its delete (status ${server.status})`);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    this.log.debug({ server: record.name, id: record.id }, 'delete step 3/3: GET says 404');
  }

  private finished(entry: Entry, started: number): void {
    const { record } = entry;
    this.entries.splice(this.entries.indexOf(entry), 1);
    this.deps.gone?.(record);
    this.log.info(
      { id: record.id, reason: record.reason, failures: record.failures, since: record.since, deleteMs: this.clock.now() - started },
      `deleted server ${record.name}`,
    );
    for (const waiter of entry.waiters.splice(0)) waiter.resolve();
    this.deps.changed?.();
    if (this.entries.length === 0) for (const done of this.emptied.splice(0)) done();
  }

  private failed(entry: Entry, err: Error): void {
    const { record } = entry;
    record.failures++;
    record.lastError = err.message;
    const retryInMs = deleteRetryDelayMs(this.policy, record.failures);
    const now = this.clock.now();
    const fields = { err, server: record.name, id: record.id, failures: record.failures, since: record.since, retryInMs };
    if (isOverdue(record, now, this.policy.overdueAfterMs)) {
      this.log.error(
        { ...fields, overdue: true },
        `server ${record.name} is still not deleted after ${formatDuration(now - Date.parse(record.since))} (it bills meanwhile); retrying in ${formatDuration(retryInMs)}`,
      );
    } else {
      this.log.warn(fields, `deleting server ${record.name} failed; retrying in ${formatDuration(retryInMs)}`);
    }
    this.schedule(entry, retryInMs);
    this.deps.changed?.();
  }
}

function definedOnly<T extends object>(value: Partial<T>): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * One-shot commands (`down`, `gc`): deletes these servers, retrying as the daemon does, for at
 * most `waitMs`; answers the deletions still pending then (empty when every server is gone).
 */
export async function deleteServersWithin(
  deps: DeletionsDeps,
  servers: { id: number; name: string; reason: string }[],
  waitMs: number,
): Promise<DeletionRecord[]> {
  const queue = new Deletions(deps);
  const deleting = servers.map((s) => queue.delete(s, s.reason).catch(() => undefined));
  await queue.drain(waitMs);
  const left = queue.pending;
  queue.stop();
  await Promise.all(deleting);
  return left;
}
