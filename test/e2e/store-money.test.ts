/** The warm store's money: the budget counts volumes; status lists them; gc and down --volumes delete them. */
import t from 'tap';
import { volumeLabels, serverLabels } from '../../src/core/labels.js';
import { Rig, TOKEN, waitUntil } from '../rig/rig.js';

async function api<T>(rig: Rig, method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(`${rig.fake.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

async function createVolume(rig: Rig, name: string, labels: Record<string, string>, size = 10): Promise<number> {
  const { volume } = await api<{ volume: { id: number } }>(rig, 'POST', '/volumes', { name, size, location: 'fsn1', labels });
  await waitUntil(() => rig.fake.volumes().some((v) => v.id === volume.id && v.status === 'available'), 5_000);
  return volume.id;
}

async function createServer(rig: Rig, name: string, labels: Record<string, string>, volumes: number[]): Promise<number> {
  const { server } = await api<{ server: { id: number } }>(rig, 'POST', '/servers', {
    name,
    server_type: 'cx23',
    image: 'ubuntu-24.04',
    location: 'fsn1',
    labels,
    volumes,
    automount: false,
  });
  await waitUntil(() => volumes.every((id) => rig.fake.volumes().find((v) => v.id === id)?.server === server.id), 5_000);
  return server.id;
}

t.test('status lists the volumes; gc lists unused ones and deletes them only with --volumes', async (t) => {
  const rig = await Rig.start({ pool: { store: { volumeGb: 200 } }, fake: { realServers: false } });
  t.teardown(() => rig.stop());
  const inUse = await createVolume(rig, 'slot-0', volumeLabels(rig.instance, 'x86_64', 0), 200);
  const pastMax = await createVolume(rig, 'slot-1', volumeLabels(rig.instance, 'x86_64', 1));
  const gonePool = await createVolume(rig, 'gone-pool', volumeLabels(rig.instance, 'arm', 0));
  const other = await createVolume(rig, 'other', volumeLabels('another-instance', 'x86_64', 5));
  const serverId = await createServer(rig, 'holder', {}, [pastMax]);

  const status = await rig.cli(['status']);
  t.equal(status.code, 0, status.stderr);
  t.match(
    status.stdout,
    new RegExp(`${inUse}\\s+slot-0\\s+x86_64\\s+0\\s+200 GB\\s+fsn1\\s+-\\s+10\\.47`),
    "size, location, not attached, €/month at the API's gross price",
  );
  t.match(
    status.stdout,
    new RegExp(`${pastMax}\\s+slot-1\\s+x86_64\\s+1\\s+10 GB\\s+fsn1\\s+holder\\s+0\\.52`),
    "attached to: the server's name",
  );
  t.notMatch(status.stdout, /\bother\b/, "another instance's volume is not listed");
  t.match(status.stdout, /store volumes: €11\.52\/month, billed whether attached or not/);
  const json = JSON.parse((await rig.cli(['status', '--json'])).stdout) as {
    volumes: { id: number; sizeGb: number; attachedTo?: string; eurPerMonth: number }[];
  };
  t.same(
    json.volumes.map((v) => v.id),
    [inUse, pastMax, gonePool],
  );

  const listed = await rig.cli(['gc']);
  t.equal(listed.code, 0, listed.stderr);
  t.match(listed.stdout, new RegExp(`unused volume slot-1 \\(id ${pastMax}, 10 GB in fsn1\\): its slot 1 is not one of the pool's 1`));
  t.match(listed.stdout, new RegExp(`unused volume gone-pool \\(id ${gonePool}, 10 GB in fsn1\\): its pool "arm" is not in the config`));
  t.match(listed.stdout, /2 unused volume\(s\); gc --volumes deletes them/);
  t.notMatch(listed.stdout, /slot-0/, 'the volume of a configured slot is not unused');
  t.equal(rig.fake.volumes().length, 4, 'gc without --volumes deletes no volume');

  const dry = await rig.cli(['gc', '--dry-run', '--volumes']);
  t.equal(rig.fake.volumes().length, 4, 'not with --dry-run either');
  t.match(dry.stdout, /2 unused volume\(s\)/);

  const removed = await rig.cli(['gc', '--volumes']);
  t.equal(removed.code, 0, removed.stderr);
  t.match(removed.stdout, new RegExp(`deleting volume slot-1 \\(id ${pastMax}`));
  t.match(removed.stdout, /deleted 2 volume\(s\)/);
  t.same(
    rig.fake
      .volumes()
      .map((v) => v.id)
      .sort(),
    [inUse, other].sort(),
    'the unused ones are gone, the attached one detached first',
  );
  t.ok(
    rig.fake.liveServers().some((s) => s.id === serverId),
    'the unlabelled server that held one is untouched',
  );
});

t.test('down deletes servers, never volumes; down --volumes deletes them too, detached first', async (t) => {
  const rig = await Rig.start({ pool: { store: { volumeGb: 10 } }, fake: { realServers: false } });
  t.teardown(() => rig.stop());
  const ours = await createVolume(rig, 'ours-0', volumeLabels(rig.instance, 'x86_64', 0));
  const held = await createVolume(rig, 'ours-held', volumeLabels(rig.instance, 'x86_64', 1));
  const other = await createVolume(rig, 'theirs', volumeLabels('another-instance', 'x86_64', 0));
  await createServer(rig, 'our-worker', serverLabels(rig.instance, 'x86_64'), [ours]);
  const foreign = await createServer(rig, 'not-ours', {}, [held]);

  const down = await rig.cli(['down']);
  t.equal(down.code, 0, down.stderr);
  t.match(down.stdout, /deleted 1 server\(s\)/);
  t.notMatch(down.stdout, /volume/);
  t.equal(rig.fake.volumes().length, 3, 'down keeps the volumes');
  await waitUntil(() => rig.fake.volumes().find((v) => v.id === ours)?.server === null, 5_000);
  t.equal(rig.fake.volumes().find((v) => v.id === ours)?.server, null, "the deleted server's volume is detached");

  const downVolumes = await rig.cli(['down', '--volumes']);
  t.equal(downVolumes.code, 0, downVolumes.stderr);
  t.match(downVolumes.stdout, /deleted 2 volume\(s\)/);
  t.same(
    rig.fake.volumes().map((v) => v.id),
    [other],
    "only another instance's volume is left",
  );
  t.ok(
    rig.fake.liveServers().some((s) => s.id === foreign),
    'the server that held one of ours keeps running, without it',
  );
});

t.test('budget: volumes count for a whole month; a volume past the budget means a cold boot', async (t) => {
  // One hour of a cx23 (€0.0057) fits, a 10 GB volume (€0.52/month) does not.
  const rig = await Rig.start({ pool: { store: { volumeGb: 10 } }, config: { budget: { maxEurPerMonth: 0.1 } } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const built = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`store-budget-${Date.now()}`] });
  t.equal(built.code, 0, 'the build ran, on a cold store');
  t.match(
    built.stderr,
    /store volume of slot 0 unavailable \(budget: creating store volume nhb-\S+-store-0 \(10 GB in fsn1\) \(€0\.52\/month\) would exceed budget\.maxEurPerMonth \(€0\.10; spent this month €0\.00\)\); this worker starts with an empty store/,
  );
  t.equal(rig.fake.volumes().length, 0, 'no volume created');
  t.match(rig.fake.servers()[0]?.userData ?? '', /runcmd/);
  t.notMatch(rig.fake.servers()[0]?.userData ?? '', /HC_Volume/, 'the worker was created without a volume');
});

t.test('budget: existing volumes count against a server create', async (t) => {
  const rig = await Rig.start({
    pool: { store: { volumeGb: 10 } },
    config: { budget: { maxEurPerMonth: 1 } },
    fake: { realServers: false },
  });
  t.teardown(() => rig.stop());
  await createVolume(rig, 'slot-0', volumeLabels(rig.instance, 'x86_64', 0), 100);
  const daemon = await rig.startDaemon();
  const built = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`store-budget2-${Date.now()}`] });
  t.not(built.code, 0);
  t.match(built.stderr, /would exceed budget\.maxEurPerMonth \(€1\.00; spent this month €0\.00, store volumes €5\.24\/month\)/);
  t.equal(rig.fake.servers().length, 0, 'no server created');
});
