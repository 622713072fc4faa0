/**
 * One daemon per instance: two daemons on one project with their own state folders and the
 * default instance never sweep each other's workers; a second daemon claiming an instance that a
 * live daemon holds refuses to start; the same state folder after a SIGKILL starts at once.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LABEL_INSTANCE } from '../../src/core/labels.js';
import { Rig, type DaemonProcess } from '../rig/rig.js';

/** Resolves after `count` more sweeps of the daemon than it has logged so far. */
async function sweeps(daemon: DaemonProcess, count: number): Promise<void> {
  const seen = daemon.lines.filter((l) => l.msg === 'sweep done').length;
  await daemon.waitFor(() => daemon.lines.filter((l) => l.msg === 'sweep done').length >= seen + count, 60_000);
}

t.test("two daemons at the default instance, with their own state folders: each keeps its worker through the other's sweeps", async (t) => {
  const rig = await Rig.start({ pool: { idleTimeout: '10m' }, config: { sweepInterval: '1s' } });
  t.teardown(() => rig.stop());
  const configs = [rig.otherConfig('a'), rig.otherConfig('b')];
  const daemons: DaemonProcess[] = [];
  for (const config of configs) {
    daemons.push(await rig.startDaemon([], undefined, config));
    const up = await rig.cli(['up'], undefined, config);
    t.equal(up.code, 0, up.stderr);
  }
  const instances = ['a', 'b'].map((name) => readFileSync(join(rig.dir, `state-${name}`, 'instance'), 'utf8').trim());
  t.not(instances[0], instances[1], 'two state folders, two instances');
  for (const instance of instances) t.match(instance, /^[a-z0-9_.-]+-[a-z0-9]{6}$/, 'host name plus a kept suffix');
  t.same(
    rig.fake
      .liveServers()
      .map((s) => s.labels[LABEL_INSTANCE])
      .sort(),
    [...instances].sort(),
    'one worker each, labelled with its own instance',
  );

  for (const daemon of daemons) await sweeps(daemon, 3);
  t.equal(rig.fake.liveServers().length, 2, 'both workers are still there after three sweeps of each');
  for (const daemon of daemons)
    t.notOk(
      daemon.lines.some((l) => /^sweep: our label/.test(l.msg)),
      "neither took the other's worker for its own",
    );

  // Started again, each keeps its instance (and so finds and adopts its worker).
  t.equal(await daemons[0]?.stop('SIGKILL'), null);
  const again = await rig.startDaemon([], undefined, configs[0]);
  const reconciled = await again.waitForMsg(/reconciled/);
  t.match(reconciled, { found: 1, adopted: 1 });
  const started = again.lines.find((l) => l.msg === 'instance lease held');
  t.match(started, { instance: instances[0], instanceOrigin: 'state folder' });
  await again.stop();
  await daemons[1]?.stop();
  t.same(rig.fake.liveServers(), [], 'each stop deleted its own worker');
});

t.test("a second daemon claiming a live daemon's instance refuses to start; a restart of the first after SIGKILL does not", async (t) => {
  const rig = await Rig.start({ fake: { realServers: false }, config: { sweepInterval: '1s' } });
  t.teardown(() => rig.stop());
  const first = await rig.startDaemon();
  const second = rig.spawnDaemon([], undefined, rig.otherConfig('intruder', { instance: rig.instance }));
  const refused = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    let stderr = '';
    second.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    second.once('exit', (code) => resolve({ code, stderr }));
  });
  t.not(refused.code, 0, 'the second daemon exits with an error');
  t.match(refused.stderr, new RegExp(`another nix-hcloud-builder daemon runs as instance "${rig.instance}" in this Hetzner project`));
  t.notMatch(refused.stderr, /listening for Nix/);

  t.equal(await first.stop('SIGKILL'), null);
  const restarted = await rig.startDaemon();
  t.ok(
    restarted.lines.some((l) => l.msg === 'taking the instance lease over'),
    "the killed daemon's own lease is taken over at once",
  );
  t.equal(await restarted.stop(), 0);
  t.same(rig.fake.listSshKeys(), [], 'a clean stop deletes the lease');

  const intruder = await rig.startDaemon([], undefined, rig.otherConfig('intruder', { instance: rig.instance }));
  t.ok(
    intruder.lines.some((l) => l.msg === 'instance lease held'),
    'with the first stopped, the instance is free',
  );
  await intruder.stop();
});
