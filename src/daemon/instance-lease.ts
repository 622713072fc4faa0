/**
 * One live daemon per instance name: a lease in the Hetzner project, so that a second daemon that
 * claims the same instance (another machine with the same config, or the same host name) refuses
 * to start instead of sweeping the first one's workers and taking its store volumes.
 *
 * The lease is an SSH key named after the instance (a small, free resource that grants nothing:
 * nobody has its private half) with two labels: the holder (random, made at each start) and a
 * heartbeat (unix seconds), written every HEARTBEAT_MS. Why this and not the servers' labels: a
 * daemon with no server would see nothing, and two idle daemons would meet only when one sweeps
 * the other's first worker. At start, in order:
 *   1. find the lease by its labels;
 *   2. held by another holder with a heartbeat younger than LEASE_TTL_MS: refuse to start; a
 *      holder this state folder wrote last (a daemon killed and started again) or a stale
 *      heartbeat is taken over; none: the key is created (a name taken meanwhile: refused);
 *   3. read back: still ours, or refused (two daemons starting at once: one wins).
 * While running, a heartbeat that finds another holder means this daemon lost the instance: it
 * must stop deleting servers it does not know. A clean stop deletes the lease.
 */
import { randomBytes } from 'node:crypto';
import { UserError } from '../core/errors.js';
import { instanceSelector, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import type { HcloudClient } from '../hcloud/client.js';
import { HcloudError, isNotFound } from '../hcloud/errors.js';
import type { SshKey } from '../hcloud/types.js';
import { generateKeyPair } from '../ssh/keys.js';

export const LABEL_LEASE_HOLDER = 'nix-hcloud-builder/lease-holder';
export const LABEL_LEASE_HEARTBEAT = 'nix-hcloud-builder/lease-heartbeat';
export const HEARTBEAT_MS = 60_000;
/** Clocks of two machines may differ a little; five missed heartbeats are not a live daemon. */
export const LEASE_TTL_MS = 5 * HEARTBEAT_MS;

export class InstanceTaken extends UserError {
  override name = 'InstanceTaken';
}

export function leaseKeyName(instance: string): string {
  return `nhb-lease-${instance}`.slice(0, 63).replace(/[^a-z0-9]+$/i, '');
}

function leaseSelector(instance: string): string {
  return `${instanceSelector(instance)},${LABEL_LEASE_HOLDER}`;
}

export interface LeaseDeps {
  hcloud: Pick<HcloudClient, 'listSshKeys' | 'createSshKey' | 'getSshKey' | 'updateSshKey' | 'deleteSshKey'>;
  instance: string;
  log: Logger;
  /** The holder this state folder wrote last: a restart takes its own lease over at once. */
  previousHolder?: string;
  now?: () => number;
}

export class InstanceLease {
  /** This daemon's holder id, kept in the state file. */
  readonly holder = randomBytes(8).toString('hex');
  private keyId: number | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly now: () => number;
  private readonly log: Logger;

  constructor(private readonly deps: LeaseDeps) {
    this.now = deps.now ?? Date.now;
    this.log = deps.log.child({ component: 'lease' });
  }

  private labels(): Record<string, string> {
    return {
      [LABEL_MANAGED_BY]: MANAGED_BY,
      [LABEL_INSTANCE]: this.deps.instance,
      [LABEL_LEASE_HOLDER]: this.holder,
      [LABEL_LEASE_HEARTBEAT]: String(Math.floor(this.now() / 1000)),
    };
  }

  private refusal(key: SshKey): InstanceTaken {
    const beat = Number(key.labels[LABEL_LEASE_HEARTBEAT]);
    const ago = Number.isFinite(beat) ? `${Math.max(0, Math.round(this.now() / 1000 - beat))} s ago` : 'at an unknown time';
    return new InstanceTaken(
      `another nix-hcloud-builder daemon runs as instance "${this.deps.instance}" in this Hetzner project (its lease, SSH key "${key.name}", was renewed ${ago}): refusing to start, as two daemons with one instance delete each other's servers and share store volumes. Give this daemon its own "instance" (or leave it unset: the default is unique per state folder), or stop the other one; a lease not renewed for ${LEASE_TTL_MS / 60_000} min is taken over`,
    );
  }

  /** Takes the instance, or throws InstanceTaken. */
  async acquire(): Promise<void> {
    const { hcloud, instance } = this.deps;
    // 1. Find the lease.
    const found = (await hcloud.listSshKeys({ labelSelector: leaseSelector(instance) }))[0];
    // 2. Refuse, take over, or create.
    if (found) {
      const holder = found.labels[LABEL_LEASE_HOLDER];
      const beat = Number(found.labels[LABEL_LEASE_HEARTBEAT]) * 1000;
      const fresh = Number.isFinite(beat) && this.now() - beat < LEASE_TTL_MS;
      if (holder !== this.deps.previousHolder && fresh) throw this.refusal(found);
      this.log.info({ key: found.name, previousHolder: holder, stale: !fresh }, 'taking the instance lease over');
      await hcloud.updateSshKey(found.id, { labels: this.labels() });
      this.keyId = found.id;
    } else {
      const name = leaseKeyName(instance);
      try {
        const key = await hcloud.createSshKey({ name, public_key: generateKeyPair(name).publicKey, labels: this.labels() });
        this.keyId = key.id;
      } catch (err) {
        if (err instanceof HcloudError && err.code === 'uniqueness_error') {
          const other = (await hcloud.listSshKeys({ name }))[0];
          if (other) throw this.refusal(other);
        }
        throw err;
      }
    }
    // 3. Read back: of two daemons starting at once, the last writer holds it.
    const mine = await hcloud.getSshKey(this.keyId);
    if (mine.labels[LABEL_LEASE_HOLDER] !== this.holder) throw this.refusal(mine);
    this.log.info({ key: mine.name, holder: this.holder }, 'instance lease taken');
  }

  /** Renews the lease every HEARTBEAT_MS; `lost` is called once when another daemon holds it. */
  keepAlive(lost: (why: string) => void, intervalMs = HEARTBEAT_MS): void {
    this.timer = setInterval(
      () =>
        void this.beat().then((why) => {
          if (why === undefined) return;
          clearInterval(this.timer);
          this.timer = undefined;
          lost(why);
        }),
      intervalMs,
    );
    this.timer.unref();
  }

  /** One heartbeat: undefined while the lease is ours, else why it is not. API trouble only warns. */
  async beat(): Promise<string | undefined> {
    const id = this.keyId;
    if (id === undefined) return 'no lease';
    try {
      const key = await this.deps.hcloud.getSshKey(id);
      const holder = key.labels[LABEL_LEASE_HOLDER];
      if (holder !== this.holder) return `the instance lease is now held by another daemon (holder ${holder ?? 'none'})`;
      await this.deps.hcloud.updateSshKey(id, { labels: this.labels() });
      return undefined;
    } catch (err) {
      if (isNotFound(err)) return `the instance lease (SSH key ${id}) was deleted`;
      this.log.warn({ err }, 'cannot renew the instance lease; trying again at the next heartbeat');
      return undefined;
    }
  }

  /** Stops the heartbeat and deletes the lease (if still ours), so a successor can start at once. */
  async release(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    const id = this.keyId;
    if (id === undefined) return;
    this.keyId = undefined;
    try {
      const key = await this.deps.hcloud.getSshKey(id);
      if (key.labels[LABEL_LEASE_HOLDER] === this.holder) await this.deps.hcloud.deleteSshKey(id);
      this.log.info('instance lease released');
    } catch (err) {
      if (!isNotFound(err))
        this.log.warn({ err }, `cannot release the instance lease; another daemon can take it over after ${LEASE_TTL_MS / 60_000} min`);
    }
  }
}
