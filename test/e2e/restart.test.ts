/** The daemon killed with SIGKILL while a worker is up, then started again: adopted, used, and finally deleted. */
import t from 'tap';
import { Rig, TOKEN } from '../rig/rig.js';

t.test('a worker survives a daemon SIGKILL: adopted on restart, then deleted by down', async (t) => {
  const rig = await Rig.start({ pool: { idleTimeout: '10m' } });
  t.teardown(() => rig.stop());
  const first = await rig.startDaemon();
  const one = await rig.nixBuild(first, { scheme: 'ssh-ng', nonces: [`restart-a-${Date.now()}`] });
  t.equal(one.code, 0, one.stderr);
  t.equal(rig.fake.liveServers().length, 1);
  const listed = (await (await fetch(`${rig.fake.url}/servers`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as {
    servers: object[];
  };
  t.ok(listed.servers.length === 1 && !('datacenter' in listed.servers[0]!), 'the API as it answers today: no server.datacenter');

  first.proc.kill('SIGKILL');
  await first.exited;
  t.equal(rig.fake.liveServers().length, 1, 'the server outlives the killed daemon');

  const second = await rig.startDaemon();
  const reconciled = await second.waitForMsg(/reconciled/);
  t.equal(reconciled.adopted, 1, 'the worker was adopted');
  const two = await rig.nixBuild(second, { scheme: 'ssh', nonces: [`restart-b-${Date.now()}`] });
  t.equal(two.code, 0, two.stderr);
  t.equal(rig.fake.servers().length, 1, 'the adopted worker served the next build; no new server');

  const status = await rig.cli(['status', '--json']);
  const report = JSON.parse(status.stdout) as {
    workers: { phase: string; status: string; pool: string; hourlyPriceEur: string; costSoFarEur: number }[];
    spentThisMonthEur: number;
  };
  t.equal(report.workers.length, 1);
  t.match(report.workers[0], { phase: 'ready', status: 'running', pool: 'x86_64', hourlyPriceEur: /^\d+\.\d+$/ });
  const price = Number(report.workers[0]?.hourlyPriceEur);
  t.ok(price > 0, 'the hourly price came from GET /server_types');
  t.equal(report.workers[0]?.costSoFarEur, Math.round(price * 10_000) / 10_000, 'one started hour billed so far');
  t.equal(report.spentThisMonthEur, Math.round(price * 10_000) / 10_000);
  const human = await rig.cli(['status']);
  t.match(human.stdout, /spent this month: €\d+\.\d\d/);

  const down = await rig.cli(['down']);
  t.equal(down.code, 0, down.stderr);
  t.match(down.stdout, /deleting \S+ \(id \d+, cx23 in fsn1\)/, 'the location read from server.location');
  t.match(down.stdout, /deleted 1 server/);
  t.same(rig.fake.liveServers(), [], 'down deleted it, with the daemon running');
  await second.stop();
});

t.test('a daemon killed during a boot: the restart deletes the half-booted server', async (t) => {
  const rig = await Rig.start({ fake: { bootDelayMs: 4000 } });
  t.teardown(() => rig.stop());
  const first = await rig.startDaemon();
  const build = rig.nixBuild(first, { scheme: 'ssh-ng', nonces: [`boot-kill-${Date.now()}`] });
  await first.waitForMsg(/boot step 1\/5/);
  first.proc.kill('SIGKILL');
  await first.exited;
  const failed = await build;
  t.not(failed.code, 0, 'the build fails (no local builds allowed)');
  t.equal(rig.fake.liveServers().length, 1);

  const second = await rig.startDaemon();
  const reconciled = await second.waitForMsg(/reconciled/);
  t.equal(reconciled.adopted, 0);
  t.equal(reconciled.deleted, 1);
  await second.waitForMsg(/^deleted server/, 30_000);
  t.same(rig.fake.liveServers(), [], 'no server of ours is left');
  await second.stop();
});

t.test('serve --keep-workers: a stop leaves the ready worker running, and the next start adopts it', async (t) => {
  const rig = await Rig.start({ pool: { idleTimeout: '10m' } });
  t.teardown(() => rig.stop());
  const first = await rig.startDaemon(['--keep-workers']);
  const one = await rig.nixBuild(first, { scheme: 'ssh-ng', nonces: [`keep-a-${Date.now()}`] });
  t.equal(one.code, 0, one.stderr);
  t.equal(rig.fake.liveServers().length, 1);

  t.equal(await first.stop('SIGTERM'), 0, 'a clean stop');
  // Ending the kept connection must not be taken for a lost worker (which would delete it).
  await new Promise((r) => setTimeout(r, 3000));
  t.equal(rig.fake.liveServers().length, 1, 'the server is still there after the stop');
  t.notOk(
    first.lines.some((l) => /deleted server/.test(l.msg)),
    'the daemon deleted nothing',
  );

  const second = await rig.startDaemon();
  const reconciled = await second.waitForMsg(/reconciled/);
  t.equal(reconciled.adopted, 1, 'the next start adopted it');
  const two = await rig.nixBuild(second, { scheme: 'ssh-ng', nonces: [`keep-b-${Date.now()}`] });
  t.equal(two.code, 0, two.stderr);
  t.equal(rig.fake.servers().length, 1, 'and used it: no new server');
  await second.stop();
  t.same(rig.fake.liveServers(), [], 'a stop without --keep-workers deletes it');
});
