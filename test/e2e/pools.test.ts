/** Several workers and pools: placement, slots, a second connection when channels run out, up, architectures. */
import t from 'tap';
import { Rig, run, waitUntil } from '../rig/rig.js';

function sessionsPerWorker(lines: { msg: string; worker?: unknown }[]): number[] {
  const counts = new Map<unknown, number>();
  for (const l of lines) if (l.msg === 'session started') counts.set(l.worker, (counts.get(l.worker) ?? 0) + 1);
  return [...counts.values()].sort();
}

t.test('placement: 4 overlapping builds, maxWorkers 2 × jobsPerWorker 2: two servers, two sessions each', async (t) => {
  const rig = await Rig.start({ pool: { maxWorkers: 2, jobsPerWorker: 2, idleTimeout: '2s' }, fake: { bootDelayMs: 1000 } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const result = await rig.nixBuild(daemon, {
    scheme: 'ssh-ng',
    nonces: [1, 2, 3, 4].map((i) => `place-${i}-${Date.now()}`),
    sleep: 3,
    maxJobs: 4,
  });
  t.equal(result.code, 0, 'built', { stderr: result.stderr });
  t.equal(rig.fake.servers().length, 2, 'maxWorkers servers, not more');
  t.same(sessionsPerWorker(daemon.lines), [2, 2], 'least loaded: two sessions on each worker');
  await waitUntil(() => rig.fake.liveServers().length === 0, 30_000);
  t.same(rig.fake.liveServers(), []);
});

t.test('a second connection when the worker refuses more channels (MaxSessions)', async (t) => {
  const rig = await Rig.start({ pool: { jobsPerWorker: 8, idleTimeout: '2s' }, fake: { maxSessions: 2, bootDelayMs: 1000 } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const result = await rig.nixBuild(daemon, {
    scheme: 'ssh',
    nonces: [1, 2, 3, 4].map((i) => `chan-${i}-${Date.now()}`),
    sleep: 3,
    maxJobs: 4,
  });
  t.equal(result.code, 0, 'all four built', { stderr: result.stderr });
  t.equal(rig.fake.servers().length, 1, 'on one server');
  const opened = daemon.lines.filter((l) => /opened another connection/.test(l.msg));
  t.ok(opened.length >= 1, `${opened.length} extra connection(s) opened`);
});

t.test('up: boots workers ahead of builds; they idle out', async (t) => {
  // Long enough that the warm workers outlive the CLI calls and nix-build's start on a loaded machine.
  const rig = await Rig.start({ pool: { maxWorkers: 2, idleTimeout: '15s' } });
  t.teardown(() => rig.stop());
  const noDaemon = await rig.cli(['up']);
  t.equal(noDaemon.code, 1);
  t.match(noDaemon.stderr, /no daemon is running/);
  const daemon = await rig.startDaemon();
  const up = await rig.cli(['up', 'x86_64', '--workers', '3']);
  t.equal(up.code, 0, up.stderr);
  t.match(up.stdout, /x86_64: 2 worker\(s\) ready/, 'capped at maxWorkers');
  t.match(up.stdout, /nix-hcloud-builder: created server/);
  t.equal(rig.fake.liveServers().length, 2);
  const unknown = await rig.cli(['up', 'nope']);
  t.match(unknown.stderr, /unknown pool "nope"/);
  const boots = (): number => daemon.lines.filter((l) => l.msg === 'booting a new worker').length;
  const bootsBefore = boots();
  const build = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`warm-${Date.now()}`] });
  t.equal(build.code, 0);
  t.equal(rig.fake.servers().length, 2, 'the build used a warm worker');
  t.equal(boots(), bootsBefore, 'and did not wait for a boot');
  await waitUntil(() => rig.fake.liveServers().length === 0, 60_000);
  t.same(rig.fake.liveServers(), [], 'pre-warmed workers idle out');
});

t.test('two pools of different architectures are served at once', async (t) => {
  const rig = await Rig.start({
    pools: {
      x86_64: { serverTypes: ['cx23'], systems: ['x86_64-linux', 'i686-linux'] },
      aarch64: { serverTypes: ['cax11'], systems: ['aarch64-linux'] },
    },
  });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const ping = (pool: string) =>
    run(
      'nix',
      [
        '--extra-experimental-features',
        'nix-command',
        'store',
        'ping',
        '--store',
        `ssh-ng://${pool}@hcloud-builder?ssh-key=${rig.clientKeyFile}`,
      ],
      {
        env: { ...process.env, NIX_SSHOPTS: `-F ${rig.sshConfig(daemon.port)} -o UserKnownHostsFile=${rig.knownHostsFile()}` },
      },
    );
  const [x86, arm] = await Promise.all([ping('x86_64'), ping('aarch64')]);
  t.equal(x86.code, 0, x86.stderr);
  t.equal(arm.code, 0, arm.stderr);
  t.match(x86.stdout + x86.stderr, /Store URL: ssh-ng:\/\/x86_64@hcloud-builder/);
  t.same(
    rig.fake
      .servers()
      .map((s) => s.serverType)
      .sort(),
    ['cax11', 'cx23'],
    'one server per pool, each of its own type',
  );
  await daemon.stop();

  rig.writeConfig({ pools: { aarch64: { serverTypes: ['cx23'], systems: ['aarch64-linux'] } } });
  const refused = rig.spawnDaemon();
  let stderr = '';
  refused.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  t.equal(await new Promise((r) => refused.once('exit', r)), 1);
  t.match(stderr, /pool "aarch64": server type "cx23" is x86, but the pool builds aarch64-linux \(arm\)/);
});
