/** Money guards against the fake cloud: budget, the sweep of unknown servers, gc, lifetime caps, graceful stop. */
import t from 'tap';
import { serverLabels } from '../../src/core/labels.js';
import { Rig, TOKEN, waitUntil } from '../rig/rig.js';

async function createForeign(rig: Rig, name: string, labels: Record<string, string>): Promise<number> {
  const res = await fetch(`${rig.fake.url}/servers`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name, server_type: 'cx23', image: 'ubuntu-24.04', location: 'fsn1', labels }),
  });
  const body = (await res.json()) as { server: { id: number } };
  return body.server.id;
}

t.test('budget: a create that would pass the budget is refused with a message', async (t) => {
  const rig = await Rig.start({ config: { budget: { maxEurPerMonth: 0.001 } } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const result = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`budget-${Date.now()}`] });
  t.not(result.code, 0);
  t.match(result.stderr, /would exceed budget\.maxEurPerMonth \(€0\.00; spent this month €0\.00\)/);
  t.equal(rig.fake.servers().length, 0, 'no server created');
  const status = await rig.cli(['status']);
  t.match(status.stdout, /spent this month: €0\.00 of a €0\.00 budget/);
});

t.test('sweep and gc: servers with our label that no worker matches are deleted; others untouched', async (t) => {
  const rig = await Rig.start({ config: { sweepInterval: '1s' }, fake: { realServers: false } });
  t.teardown(() => rig.stop());
  const strayId = await createForeign(rig, 'stray-1', serverLabels(rig.instance, 'x86_64'));
  const otherId = await createForeign(rig, 'other-1', serverLabels('another-instance', 'x86_64'));
  const unlabelledId = await createForeign(rig, 'mine-by-hand', {});

  const status = await rig.cli(['status', '--json']);
  t.equal(status.code, 0, status.stderr);
  const unknown = (JSON.parse(status.stdout) as { workers: { id: number; phase: string; location: string }[] }).workers;
  t.equal(unknown.length, 1, 'only the server with our instance label');
  t.match(
    unknown[0],
    { id: strayId, phase: 'unknown to the daemon', location: 'fsn1' },
    'status lists the stray server, located by server.location',
  );

  const dry = await rig.cli(['gc', '--dry-run']);
  t.equal(dry.code, 0, dry.stderr);
  t.match(dry.stdout, /would delete stray-1 \(id \d+, cx23 in fsn1\): not in the state/);
  t.match(dry.stdout, /would delete 1 server/);
  t.ok(
    rig.fake.liveServers().some((s) => s.id === strayId),
    'dry run deleted nothing',
  );

  const gc = await rig.cli(['gc']);
  t.match(gc.stdout, /deleted 1 server/);
  await waitUntil(() => !rig.fake.liveServers().some((s) => s.id === strayId), 10_000);
  t.notOk(
    rig.fake.liveServers().some((s) => s.id === strayId),
    'gc deleted the stray server',
  );

  const daemon = await rig.startDaemon();
  const strayTwo = await createForeign(rig, 'stray-2', serverLabels(rig.instance, 'x86_64'));
  await daemon.waitForMsg(/sweep: our label, but no worker of ours/, 15_000);
  await waitUntil(() => !rig.fake.liveServers().some((s) => s.id === strayTwo), 10_000);
  t.notOk(
    rig.fake.liveServers().some((s) => s.id === strayTwo),
    'the periodic sweep deleted a server created behind our back',
  );
  const ids = rig.fake
    .liveServers()
    .map((s) => s.id)
    .sort();
  t.same(ids, [otherId, unlabelledId].sort(), "another instance's server and an unlabelled one are untouched");
});

t.test('maxLifetime: an idle worker past its lifetime is deleted even with a long idleTimeout', async (t) => {
  const rig = await Rig.start({ pool: { idleTimeout: '1h', maxLifetime: '4s' }, config: { sweepInterval: '1s' } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const built = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`lifetime-${Date.now()}`] });
  t.equal(built.code, 0, 'built', { stderr: built.stderr });
  const deleted = await daemon.waitForMsg(/deleted server/, 30_000);
  t.equal(deleted.reason, 'maxLifetime reached');
  t.same(rig.fake.liveServers(), []);
});

t.test('SIGTERM lets a running build finish, then deletes the worker; a second signal cuts the grace short', async (t) => {
  const rig = await Rig.start({ config: { shutdownGrace: '60s' }, pool: { idleTimeout: '1h' } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const build = rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`grace-${Date.now()}`], sleep: 4 });
  await daemon.waitForMsg(/session started/);
  await new Promise((r) => setTimeout(r, 500));
  daemon.proc.kill('SIGTERM');
  const result = await build;
  t.equal(result.code, 0, 'the running build finished during the grace period', { stderr: result.stderr });
  t.equal(await daemon.exited, 0);
  t.same(rig.fake.liveServers(), [], 'the worker was deleted on stop');

  const second = await rig.startDaemon();
  const long = rig.nixBuild(second, { scheme: 'ssh-ng', nonces: [`grace-cut-${Date.now()}`], sleep: 120 });
  await second.waitForMsg(/session started/);
  const t0 = Date.now();
  second.proc.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  second.proc.kill('SIGTERM');
  t.equal(await second.exited, 0);
  t.ok(Date.now() - t0 < 15_000, `second signal: stopped in ${Date.now() - t0} ms`);
  t.not((await long).code, 0, 'the cut build fails (Nix would retry elsewhere)');
  t.same(rig.fake.liveServers(), [], 'still deleted the worker');
});

t.test('hard lifetime cap: past twice maxLifetime a worker is deleted even with a session running', async (t) => {
  const rig = await Rig.start({ pool: { idleTimeout: '1h', maxLifetime: '3s' }, config: { sweepInterval: '1s' } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const started = Date.now();
  const build = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`hardcap-${Date.now()}`], sleep: 60 });
  t.not(build.code, 0, 'the endless build was cut');
  t.ok(Date.now() - started < 30_000, `within ${Date.now() - started} ms, not after the 60 s build`);
  const deleted = await daemon.waitForMsg(/deleted server/, 30_000);
  t.equal(deleted.reason, 'hard lifetime cap');
  t.same(rig.fake.liveServers(), []);
});

t.test('a delete that fails is retried, each wait twice the last, until the server is gone; the record stays meanwhile', async (t) => {
  const rig = await Rig.start({ pool: { idleTimeout: '1s' }, config: { deleteRetry: { firstWait: '200ms', maxWait: '2s' } } });
  t.teardown(() => rig.stop());
  const { daemon, lines } = await rig.startInProcessDaemon();
  t.teardown(() => daemon.stop());
  const pool = daemon.pools.get('x86_64');
  if (!pool) throw new Error('no pool x86_64');

  // Not retried by the API client (403), so each failure reaches the deletion queue's own retry.
  rig.fake.inject({
    method: 'DELETE',
    path: /^\/servers\/\d+$/,
    status: 403,
    code: 'forbidden',
    message: 'insufficient permissions',
    times: 3,
  });
  t.equal(await pool.warm(1, () => undefined), 1, 'one worker booted');
  const failures = (): { failures: number; retryInMs: number }[] =>
    lines
      .map((l) => JSON.parse(l) as { msg: string; failures: number; retryInMs: number })
      .filter((l) => /^deleting server \S+ failed; retrying in/.test(l.msg));

  await waitUntil(() => failures().length >= 1, 20_000);
  t.equal(pool.workers[0]?.record.phase, 'deleting', 'while the delete fails, the worker stays known, as "deleting"');
  t.equal(rig.fake.liveServers().length, 1, 'the server still exists (and bills)');
  t.equal(daemon.deletions.pending.length, 1, 'the deletion queue holds it');

  await waitUntil(() => rig.fake.liveServers().length === 0, 20_000);
  t.equal(rig.fake.liveServers().length, 0, 'the fourth attempt deleted it');
  t.same(
    failures().map((f) => [f.failures, f.retryInMs]),
    [
      [1, 200],
      [2, 400],
      [3, 800],
    ],
    'three failures, each wait twice the last',
  );
  t.match(lines.find((l) => l.includes('retrying in')) ?? '', /retrying in 200ms/, 'the wait is in the message');
  await waitUntil(() => pool.workers.length === 0, 5000);
  t.equal(pool.workers.length, 0, 'and then the record is dropped');
  t.same(daemon.deletions.pending, []);
});
