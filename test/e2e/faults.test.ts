/**
 * Never leak a server, never hang a build: boot faults, API faults and worker death, each against
 * the fake cloud with real nix-build as the client.
 */
import t from 'tap';
import { Rig, TOKEN, waitUntil } from '../rig/rig.js';
import type { ServerBehaviour } from '../fake-hcloud/fake-cloud.js';

const bootFaults: [ServerBehaviour, RegExp][] = [
  ['never-running', /bootTimeout/],
  ['action-error', /action_failed|failed/],
  ['no-sshd', /bootTimeout/],
  ['wrong-host-key', /presented a host key other than the one it was created with/],
  ['never-ready', /bootTimeout/],
];

t.test('boot faults: each fails the build within bootTimeout with the reason, and deletes the server', async (t) => {
  const rig = await Rig.start({ pool: { bootTimeout: '4s', idleTimeout: '2s' } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  for (const [behaviour, reason] of bootFaults) {
    rig.fake.behaveNext(behaviour, 1);
    const started = Date.now();
    const result = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`fault-${behaviour}-${Date.now()}`] });
    const tookMs = Date.now() - started;
    t.not(result.code, 0, `${behaviour}: the build fails (no local builds allowed)`);
    t.match(result.stderr, reason, `${behaviour}: the reason reaches nix-build's stderr`);
    t.ok(tookMs < 4000 + 10_000, `${behaviour}: failed within bootTimeout plus slack (${tookMs} ms), no hang`);
    await waitUntil(() => rig.fake.liveServers().length === 0, 20_000);
    t.same(rig.fake.liveServers(), [], `${behaviour}: the server was deleted`);
  }
  t.equal(daemon.proc.exitCode, null, 'the daemon keeps serving');
  const ok = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`after-faults-${Date.now()}`] });
  t.equal(ok.code, 0, 'a healthy boot after all that works', { stderr: ok.stderr });
  t.same(rig.fake.schemaErrors, []);
});

t.test('API faults on create: unavailable location, rate limit, 503s, read-only token', async (t) => {
  const rig = await Rig.start({ pool: { serverTypes: ['cx23', 'cx33'], locations: ['fsn1', 'nbg1'], idleTimeout: '1s' } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();

  rig.fake.inject({
    method: 'POST',
    path: '/servers',
    status: 412,
    code: 'resource_unavailable',
    message: 'server location disabled',
    times: 1,
  });
  rig.fake.inject({ method: 'POST', path: '/servers', status: 503, code: 'unavailable', message: 'service unavailable', times: 2 });
  const reset = Math.floor(Date.now() / 1000) + 2;
  rig.fake.inject({
    method: 'GET',
    path: '/server_types',
    status: 429,
    code: 'rate_limit_exceeded',
    message: 'limit',
    headers: { 'RateLimit-Reset': String(reset), 'RateLimit-Remaining': '0' },
    times: 1,
  });
  const moved = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`moved-${Date.now()}`] });
  t.equal(moved.code, 0, 'built after the faults', { stderr: moved.stderr });
  const server = rig.fake.servers()[0];
  t.equal(server?.location, 'nbg1', 'fsn1 was unavailable: the next location was used');
  t.match(daemon.raw.join('\n'), /cannot create here/);
  await waitUntil(() => rig.fake.liveServers().length === 0, 20_000);

  rig.fake.inject({ method: 'POST', path: '/servers', status: 412, code: 'placement_error', message: 'no capacity', times: 4 });
  const nowhere = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`nowhere-${Date.now()}`] });
  t.not(nowhere.code, 0);
  t.match(
    nowhere.stderr,
    /no server could be created; tried cx23 in fsn1 \(placement_error\), cx23 in nbg1 \(placement_error\), cx33 in fsn1 \(placement_error\), cx33 in nbg1 \(placement_error\)/,
    'every type and location tried, in order, and named',
  );
  t.equal(rig.fake.servers().length, 1);

  rig.fake.inject({ method: 'POST', path: '/servers', status: 403, code: 'forbidden', message: 'insufficient permissions', times: 1 });
  const readOnly = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`ro-${Date.now()}`] });
  t.not(readOnly.code, 0);
  t.match(readOnly.stderr, /read-only|forbidden|permission/i, 'a 403 says what is wrong');
  t.equal(rig.fake.servers().length, 1, 'no server was created');
  t.equal(daemon.proc.exitCode, null);
});

t.test('a wrong token: the daemon refuses to start with a clear message, and says nothing of the token', async (t) => {
  const rig = await Rig.start();
  t.teardown(() => rig.stop());
  const proc = rig.spawnDaemon([], { HCLOUD_TOKEN: 'wrong-token-0123456789' });
  let stderr = '';
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const code = await new Promise((resolve) => proc.once('exit', resolve));
  t.equal(code, 1);
  t.match(stderr, /token/i);
  t.notMatch(stderr, /wrong-token-0123456789/);
  t.notMatch(stderr, new RegExp(TOKEN));
});

t.test('worker death mid-build: the build fails fast, the worker is dropped, the next build boots a new one', async (t) => {
  const rig = await Rig.start({ pool: { idleTimeout: '2s' } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const build = rig.nixBuild(daemon, { scheme: 'ssh', nonces: [`dies-${Date.now()}`], sleep: 60 });
  await daemon.waitForMsg(/session started/);
  const first = rig.fake.liveServers()[0];
  t.ok(first);
  const killedAt = Date.now();
  await rig.fake.killSshd(first?.id as number);
  const failed = await build;
  t.not(failed.code, 0, 'the build fails');
  t.ok(Date.now() - killedAt < 15_000, `and does not hang (${Date.now() - killedAt} ms)`);
  await daemon.waitForMsg(/lost the connection to the worker/);
  await waitUntil(() => rig.fake.liveServers().length === 0, 20_000);
  t.same(rig.fake.liveServers(), [], "the dead worker's server was deleted");

  const again = await rig.nixBuild(daemon, { scheme: 'ssh', nonces: [`reborn-${Date.now()}`] });
  t.equal(again.code, 0, 'the next build boots a new worker', { stderr: again.stderr });
  t.equal(rig.fake.servers().length, 2);
});

t.test('a frozen worker (no answer, TCP open): keepalives notice it within 3 × keepaliveInterval', async (t) => {
  const rig = await Rig.start({ pool: { idleTimeout: '2s', keepaliveInterval: '1s' } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const build = rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`frozen-${Date.now()}`], sleep: 120 });
  await daemon.waitForMsg(/session started/);
  const server = rig.fake.liveServers()[0];
  t.ok(rig.fake.freeze(server?.id as number) > 0, "the server's processes are stopped");
  const frozenAt = Date.now();
  const failed = await build;
  const tookMs = Date.now() - frozenAt;
  t.not(failed.code, 0, 'the build fails instead of hanging');
  t.ok(tookMs < 15_000, `noticed after ${tookMs} ms (3 × 1 s keepalive, plus slack)`);
  await daemon.waitForMsg(/lost the connection to the worker/);
  await waitUntil(() => rig.fake.liveServers().length === 0, 20_000);
  t.same(rig.fake.liveServers(), [], 'the frozen server was deleted');
});
