/**
 * The warm store (pools.<name>.store): a worker's Nix store lives on a Hetzner Volume that
 * outlives it, so the next worker of that slot already has what earlier builds uploaded. Real Nix
 * against the fake cloud, whose volumes are folders seen in a server at /mnt/HC_Volume_<id>.
 */
import t from 'tap';
import { readFileSync, existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { runCommand } from '../../src/ssh/worker-connection.js';
import { ROOT, Rig, waitUntil } from '../rig/rig.js';
import { addBigInput, build, bytesUp, MIB, onWorker, recordedWorker, warm } from '../rig/warm-store.js';

t.test('the store outlives its worker: the second build uploads nothing big', async (t) => {
  const rig = await Rig.start({ pool: { store: { volumeGb: 10 }, idleTimeout: '3s' } });
  t.teardown(() => rig.stop());
  const input = await addBigInput(rig);
  const daemon = await rig.startDaemon();
  const nonce = `warm-${Date.now()}`;
  const a = warm(input, `${nonce}-a`);

  const first = await build(rig, daemon, a);
  t.equal(first.code, 0, 'build A succeeded');
  t.match(first.stderr, /created store volume nhb-\S+-store-0 \(id \d+, 10 GB in fsn1\)/, 'the volume is made on first need, and said so');
  const upA = await bytesUp(daemon, 0);
  t.ok(upA > 64 * MIB, `build A uploaded its 64 MiB input (${upA} bytes)`);
  const [volume] = rig.fake.volumes();
  t.ok(volume, 'one volume');
  if (!volume) return;
  t.equal(rig.fake.volumes().length, 1);
  t.match(volume.labels, {
    'managed-by': 'nix-hcloud-builder',
    'nix-hcloud-builder/instance': rig.instance,
    'nix-hcloud-builder/pool': 'x86_64',
    'nix-hcloud-builder/slot': '0',
  });
  t.equal(volume.location.name, 'fsn1');
  const firstServer = rig.fake.servers()[0];
  t.match(firstServer?.userData, `id=${volume.id};`, 'the worker was told its volume');
  t.ok(existsSync(join(rig.fake.volumeDir(volume.id), 'store', basename(input))), "the input is on the volume, not on the server's disk");
  t.notOk(existsSync(join(firstServer?.storeDir ?? '/nonexistent', 'store', basename(input))));

  // The worker idles out; its server goes, the volume stays, detached.
  await daemon.waitForMsg(/deleted server/, 30_000);
  t.ok(
    daemon.lines.some((l) => l.msg === 'flushed the store volume before deleting the server'),
    'the store was flushed before the delete',
  );
  await waitUntil(() => rig.fake.volumes()[0]?.server === null, 10_000);
  t.equal(rig.fake.volumes().length, 1, 'the volume was not deleted with its server');
  t.equal(rig.fake.volumes()[0]?.server, null, 'and it is detached');

  // Build B needs the same input and A's output: the new worker finds both on the volume.
  const before = daemon.lines.length;
  const second = await build(rig, daemon, warm(input, `${nonce}-b`, a));
  t.equal(second.code, 0, 'build B succeeded');
  t.match(
    readFileSync(second.stdout.trim().split('\n').pop() as string, 'utf8'),
    new RegExp(`${nonce}-a\n${64 * MIB}\n${nonce}-b`),
    "B read A's output and the input on the worker",
  );
  const upB = await bytesUp(daemon, before);
  t.ok(upB < MIB, `build B sent ${upB} bytes up (under 1 MiB)`);
  const servers = rig.fake.servers();
  t.equal(servers.length, 2, 'B ran on a new server');
  const secondServer = servers[1];
  t.equal(rig.fake.volumes()[0]?.server, secondServer?.id, 'with the same volume attached');
  t.equal(rig.fake.volumes().length, 1);

  // A's output is valid in the new worker's store (its Nix database, not just a file).
  const aOut = readFileSync(first.stdout.trim().split('\n').pop() as string, 'utf8');
  t.match(aOut, `${nonce}-a`);
  const record = recordedWorker(rig, secondServer?.id);
  t.ok(record?.address, 'the second worker is still up');
  if (record?.address) {
    t.equal(record.volumeId, volume.id, "the state knows the worker's volume");
    await onWorker(record, async (client) => {
      const outA = first.stdout.trim().split('\n').pop() as string;
      const valid = await runCommand(client, `nix-store --check-validity ${input} ${outA}`, 20_000);
      t.equal(valid.code, 0, `valid on the new worker: ${valid.stderr}`);
    });
  }
});

t.test('two workers never share a volume; a third boot waits', async (t) => {
  const rig = await Rig.start({ pool: { store: { volumeGb: 10 }, maxWorkers: 2, jobsPerWorker: 1, idleTimeout: '3s' } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const nonce = `share-${Date.now()}`;
  const one = (n: number): string => `(import ${join(ROOT, 'test', 'fixtures', 'build.nix')} { nonce = "${nonce}-${n}"; sleep = "6"; })`;
  let maxLive = 0;
  const watching = setInterval(() => {
    maxLive = Math.max(maxLive, rig.fake.liveServers().length);
  }, 50);
  t.teardown(() => clearInterval(watching));
  const building = build(rig, daemon, `[ ${[1, 2, 3].map(one).join(' ')} ]`, 2);
  await waitUntil(() => rig.fake.volumes().filter((v) => v.server !== null).length === 2, 60_000);
  const attached = rig.fake.volumes().filter((v) => v.server !== null);
  t.equal(new Set(attached.map((v) => v.server)).size, 2, 'two servers, each with its own volume');
  t.same(attached.map((v) => v.labels['nix-hcloud-builder/slot']).sort(), ['0', '1']);
  const result = await building;
  t.equal(result.code, 0, 'the three builds succeeded');
  clearInterval(watching);
  t.equal(maxLive, 2, 'the third build waited for a slot instead of booting a third server');
  t.equal(rig.fake.volumes().length, 2, 'two volumes in all');
  await waitUntil(() => rig.fake.liveServers().length === 0 && rig.fake.volumes().every((v) => v.server === null), 30_000);
  t.equal(rig.fake.volumes().length, 2, 'idle deletion keeps the volumes');
});

t.test("the volume's location out of capacity: the boot goes cold in the next one, says so, and nothing leaks", async (t) => {
  const rig = await Rig.start({
    pool: { store: { volumeGb: 10 }, serverTypes: ['cx23', 'cx33'], locations: ['fsn1', 'nbg1'], idleTimeout: '2s' },
  });
  t.teardown(() => rig.stop());
  const input = await addBigInput(rig);
  const daemon = await rig.startDaemon();
  const nonce = `cold-${Date.now()}`;
  const first = await build(rig, daemon, warm(input, `${nonce}-a`));
  t.equal(first.code, 0, 'build A succeeded');
  const volume = rig.fake.volumes()[0];
  t.equal(volume?.location.name, 'fsn1', 'the volume lives in the first location');
  await waitUntil(() => rig.fake.liveServers().length === 0 && rig.fake.volumes()[0]?.server === null, 30_000);

  // Both server types are sold out in fsn1 for the next two creates.
  rig.fake.inject({ method: 'POST', path: '/servers', status: 412, code: 'resource_unavailable', message: 'sold out', times: 2 });
  const before = daemon.lines.length;
  const second = await build(rig, daemon, warm(input, `${nonce}-b`));
  t.equal(second.code, 0, 'build B succeeded, cold');
  t.match(
    second.stderr,
    new RegExp(
      `store volume ${volume?.name ?? '?'} is in fsn1, which cannot take a server now \\(cx23 in fsn1 \\(resource_unavailable\\), cx33 in fsn1 \\(resource_unavailable\\)\\); booting elsewhere with an empty store`,
    ),
  );
  const cold = rig.fake.servers()[1];
  t.equal(cold?.location, 'nbg1');
  t.notMatch(cold?.userData ?? '', /HC_Volume/, 'created without the volume');
  t.ok((await bytesUp(daemon, before)) > 64 * MIB, 'a cold store: the input went up again');
  t.equal(rig.fake.volumes()[0]?.server, null, 'the volume stayed detached');

  await waitUntil(() => rig.fake.liveServers().length === 0, 30_000);
  t.same(rig.fake.liveServers(), [], 'the cold worker idled out');
  t.equal(rig.fake.volumes().length, 1, 'no second volume');

  // With capacity back, the slot's volume is used again.
  const from = daemon.lines.length;
  const third = await build(rig, daemon, warm(input, `${nonce}-c`));
  t.equal(third.code, 0, 'build C succeeded');
  t.equal(rig.fake.servers()[2]?.location, 'fsn1');
  t.ok((await bytesUp(daemon, from)) < MIB, 'warm again');
});

t.test('SIGKILL with the volume attached: adopted after a restart, the slot kept, then handed on', async (t) => {
  const rig = await Rig.start({ pool: { store: { volumeGb: 10 }, idleTimeout: '4s', maxWorkers: 2, jobsPerWorker: 1 } });
  t.teardown(() => rig.stop());
  const input = await addBigInput(rig);
  const nonce = `kill-${Date.now()}`;
  const daemon = await rig.startDaemon();
  const first = await build(rig, daemon, warm(input, `${nonce}-a`));
  t.equal(first.code, 0, 'build A succeeded');
  daemon.proc.kill('SIGKILL');
  await daemon.exited;
  const server = rig.fake.liveServers()[0];
  const volume = rig.fake.volumes()[0];
  t.equal(volume?.server, server?.id, 'the volume is attached to the running server');

  const restarted = await rig.startDaemon();
  t.ok(
    restarted.lines.some((l) => /^step 3\/4: reconciled with the cloud/.test(l.msg) && l.adopted === 1),
    'the server was adopted',
  );
  const before = restarted.lines.length;
  const second = await build(rig, restarted, warm(input, `${nonce}-b`));
  t.equal(second.code, 0, 'build B succeeded');
  t.equal(rig.fake.servers().length, 1, 'on the adopted server');
  t.ok((await bytesUp(restarted, before)) < MIB, 'whose store had the input');

  // The adopted worker holds slot 0: a second worker, booted beside it, gets slot 1's volume.
  const sleepy = (n: number): string =>
    `(import ${join(ROOT, 'test', 'fixtures', 'build.nix')} { nonce = "${nonce}-s${n}"; sleep = "3"; })`;
  const pair = await build(rig, restarted, `[ ${sleepy(1)} ${sleepy(2)} ]`, 2);
  t.equal(pair.code, 0, 'two concurrent builds succeeded');
  t.equal(rig.fake.servers().length, 2, 'a second worker booted');
  t.same(
    rig.fake.volumes().map((v) => v.labels['nix-hcloud-builder/slot']),
    ['0', '1'],
    "with a volume of its own, not the adopted worker's",
  );
  t.notMatch(pair.stderr, /empty store/, 'nobody went cold waiting for slot 0');

  // Idle deletion frees the adopted worker's slot: the next worker gets its volume.
  await waitUntil(() => rig.fake.liveServers().length === 0 && rig.fake.volumes().every((v) => v.server === null), 30_000);
  const from = restarted.lines.length;
  const third = await build(rig, restarted, warm(input, `${nonce}-c`));
  t.equal(third.code, 0, 'build C succeeded');
  t.equal(rig.fake.servers().length, 3);
  t.equal(rig.fake.volumes()[0]?.server, rig.fake.servers()[2]?.id, "the new server has slot 0's volume");
  t.ok((await bytesUp(restarted, from)) < MIB, 'warm');
});

t.test('SIGKILL during a boot with the volume: the server is deleted at restart, the volume survives for the next worker', async (t) => {
  const rig = await Rig.start({ pool: { store: { volumeGb: 10 }, idleTimeout: '2s', bootTimeout: '20s' } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  rig.fake.behaveNext('never-ready');
  void rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`kboot-${Date.now()}`] });
  await daemon.waitForMsg(/boot step 4\/5/);
  daemon.proc.kill('SIGKILL');
  await daemon.exited;
  const volume = rig.fake.volumes()[0];
  t.ok(volume?.server, 'the volume is attached to the booting server');

  const restarted = await rig.startDaemon();
  await waitUntil(() => rig.fake.liveServers().length === 0, 20_000);
  t.same(rig.fake.liveServers(), [], 'the unadoptable server was deleted');
  t.equal(rig.fake.volumes().length, 1, 'the volume was not');
  const built = await rig.nixBuild(restarted, { scheme: 'ssh-ng', nonces: [`kboot-after-${Date.now()}`] });
  t.equal(built.code, 0, 'the next build works');
  t.equal(rig.fake.volumes()[0]?.server, rig.fake.servers()[1]?.id, 'on a worker with the same volume');
  t.equal(rig.fake.volumes().length, 1);
});

t.test('gcAtPercent: a store fuller than that is collected at boot, before the worker is ready', async (t) => {
  // The fake's volume is a folder on this machine's disk, which is more than 1 % full.
  const rig = await Rig.start({ pool: { store: { volumeGb: 10, gcAtPercent: 1 }, idleTimeout: '2s' } });
  t.teardown(() => rig.stop());
  const input = await addBigInput(rig);
  const daemon = await rig.startDaemon();
  const nonce = `gc-${Date.now()}`;
  const first = await build(rig, daemon, warm(input, `${nonce}-a`));
  t.equal(first.code, 0, 'build A succeeded');
  const volume = rig.fake.volumes()[0];
  const onVolume = join(rig.fake.volumeDir(volume?.id ?? 0), 'store', basename(input));
  t.ok(existsSync(onVolume), 'the input is on the volume');
  await waitUntil(() => rig.fake.liveServers().length === 0 && rig.fake.volumes()[0]?.server === null, 30_000);

  const before = daemon.lines.length;
  const second = await build(rig, daemon, warm(input, `${nonce}-b`));
  t.equal(second.code, 0, 'build B succeeded');
  const log = readFileSync(join(rig.fake.servers()[1]?.dir ?? '/nonexistent', 'cloud-init-output.log'), 'utf8');
  t.match(log, /the store is \d+% full \(gcAtPercent 1\); freeing \d+ bytes/, 'the boot collected garbage');
  // runcmd is one script: its listing, then its output. The check comes before the marker in it.
  const [listing, output] = log.split('Cloud-init (fake) runcmd output:\n', 2) as [string, string];
  t.match(output, /the store is \d+% full/, 'collected by the runcmd script');
  t.ok(listing.indexOf('nix-store --gc') < listing.indexOf('touch /run/nix-hcloud-builder/ready'), 'before the ready marker');
  t.ok((await bytesUp(daemon, before)) > 64 * MIB, 'so the input went up again');
});
