/** The instance lease on an in-memory SSH key store: refused while another daemon renews it, taken over when stale or our own. */
import t from 'tap';
import { createLogger } from '../../src/core/log.js';
import { HcloudError } from '../../src/hcloud/errors.js';
import type { SshKey } from '../../src/hcloud/types.js';
import {
  InstanceLease,
  InstanceTaken,
  LABEL_LEASE_HEARTBEAT,
  LABEL_LEASE_HOLDER,
  LEASE_TTL_MS,
  type LeaseDeps,
} from '../../src/daemon/instance-lease.js';

const log = createLogger({ level: 'silent' });

/** SSH keys as the API keeps them: unique names, label selectors of the form `k=v,…,k` (exists). */
function keyStore(): { hcloud: LeaseDeps['hcloud']; keys: Map<number, SshKey> } {
  const keys = new Map<number, SshKey>();
  let next = 1;
  const notFound = (): HcloudError => new HcloudError({ status: 404, code: 'not_found', message: 'not found' });
  const matches = (k: SshKey, selector: string): boolean =>
    selector.split(',').every((part) => {
      const [key, value] = part.split('=');
      return value === undefined ? (key as string) in k.labels : k.labels[key as string] === value;
    });
  return {
    keys,
    hcloud: {
      listSshKeys: async (q = {}) =>
        [...keys.values()].filter(
          (k) => (q.name === undefined || k.name === q.name) && (q.labelSelector === undefined || matches(k, q.labelSelector)),
        ),
      createSshKey: async (req) => {
        if ([...keys.values()].some((k) => k.name === req.name))
          throw new HcloudError({ status: 409, code: 'uniqueness_error', message: 'name taken' });
        const key = { id: next++, name: req.name, labels: { ...req.labels }, public_key: req.public_key, fingerprint: '', created: '' };
        keys.set(key.id, key);
        return key;
      },
      getSshKey: async (id) => {
        const key = keys.get(id);
        if (!key) throw notFound();
        return { ...key, labels: { ...key.labels } };
      },
      updateSshKey: async (id, req) => {
        const key = keys.get(id);
        if (!key) throw notFound();
        if (req.labels) key.labels = { ...req.labels };
        return key;
      },
      deleteSshKey: async (id) => {
        if (!keys.delete(id)) throw notFound();
      },
    },
  };
}

t.test('a second daemon claiming the instance is refused while the first renews its lease', async (t) => {
  let now = Date.parse('2025-01-01T00:00:00Z');
  const { hcloud, keys } = keyStore();
  const first = new InstanceLease({ hcloud, instance: 'nixos', log, now: () => now });
  await first.acquire();
  t.equal(keys.size, 1);
  t.equal([...keys.values()][0]?.labels[LABEL_LEASE_HOLDER], first.holder);

  now += LEASE_TTL_MS - 1000;
  const second = new InstanceLease({ hcloud, instance: 'nixos', log, now: () => now });
  await t.rejects(second.acquire(), InstanceTaken);
  await t.rejects(second.acquire(), /another nix-hcloud-builder daemon runs as instance "nixos"/);

  t.equal(await first.beat(), undefined, 'the first renews it');
  now += LEASE_TTL_MS - 1000;
  await t.rejects(second.acquire(), InstanceTaken, 'renewed: still refused');

  const other = new InstanceLease({ hcloud, instance: 'other', log, now: () => now });
  await other.acquire();
  t.equal(keys.size, 2, 'another instance has a lease of its own');
});

t.test('a stale lease is taken over, and the old holder notices at its next heartbeat', async (t) => {
  let now = Date.parse('2025-01-01T00:00:00Z');
  const { hcloud, keys } = keyStore();
  const first = new InstanceLease({ hcloud, instance: 'nixos', log, now: () => now });
  await first.acquire();
  now += LEASE_TTL_MS;
  const second = new InstanceLease({ hcloud, instance: 'nixos', log, now: () => now });
  await second.acquire();
  t.equal([...keys.values()][0]?.labels[LABEL_LEASE_HEARTBEAT], String(now / 1000));
  t.match(await first.beat(), /held by another daemon/, 'the first lost it');
  await first.release();
  t.equal(keys.size, 1, 'a release does not delete a lease held by another');
  await second.release();
  t.equal(keys.size, 0, 'a clean stop deletes its own lease');
});

t.test('a restart from the same state folder takes its own fresh lease over at once', async (t) => {
  const now = Date.parse('2025-01-01T00:00:00Z');
  const { hcloud } = keyStore();
  const killed = new InstanceLease({ hcloud, instance: 'nixos', log, now: () => now });
  await killed.acquire();
  const restarted = new InstanceLease({ hcloud, instance: 'nixos', log, now: () => now, previousHolder: killed.holder });
  await restarted.acquire();
  t.match(await killed.beat(), /held by another daemon/);
});
