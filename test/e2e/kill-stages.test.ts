/**
 * The daemon killed with SIGKILL at every stage of a worker's life. After a restart and one sweep,
 * no server of ours may be left that is not adopted; adopted ones go on their idle timer.
 */
import t from 'tap';
import { Rig, waitUntil, type DaemonProcess } from '../rig/rig.js';

interface Stage {
  name: string;
  /** Arms faults, starts the work, and resolves when it is time to kill. */
  reach(rig: Rig, daemon: DaemonProcess): Promise<unknown>;
}

const stages: Stage[] = [
  {
    name: 'during create (the server exists, its create answer has not arrived)',
    async reach(rig, daemon) {
      rig.fake.inject({ method: 'POST', path: '/servers', afterHandling: true, delayMs: 5000 });
      void rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`k-create-${Date.now()}`] });
      await waitUntil(() => rig.fake.liveServers().length === 1, 20_000);
    },
  },
  {
    name: 'during boot',
    async reach(rig, daemon) {
      rig.fake.behaveNext('never-ready');
      void rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`k-boot-${Date.now()}`] });
      await daemon.waitForMsg(/boot step 4\/5/);
    },
  },
  {
    name: 'while a build runs',
    async reach(rig, daemon) {
      void rig.nixBuild(daemon, { scheme: 'ssh', nonces: [`k-build-${Date.now()}`], sleep: 30 });
      await daemon.waitForMsg(/session started/);
    },
  },
  {
    name: 'during delete',
    async reach(rig, daemon) {
      const built = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`k-delete-${Date.now()}`] });
      if (built.code !== 0) throw new Error(built.stderr);
      rig.fake.inject({ method: 'DELETE', path: /^\/servers\/\d+$/, delayMs: 5000 });
      await daemon.waitForMsg(/idle timeout reached/);
      await new Promise((r) => setTimeout(r, 300));
    },
  },
];

t.test('SIGKILL at every stage leaves nothing billing after a restart', async (t) => {
  const rig = await Rig.start({ pool: { idleTimeout: '2s', bootTimeout: '20s' }, fake: { bootDelayMs: 500 } });
  t.teardown(() => rig.stop());
  for (const stage of stages) {
    const daemon = await rig.startDaemon();
    await stage.reach(rig, daemon);
    daemon.proc.kill('SIGKILL');
    await daemon.exited;
    const leftByKill = rig.fake.liveServers().length;

    const restarted = await rig.startDaemon();
    const reconciled = await restarted.waitForMsg(/reconciled/);
    t.equal(
      (reconciled.adopted as number) + (reconciled.deleted as number),
      reconciled.found,
      `${stage.name}: every server found was adopted or deleted`,
    );
    // Deletes go on in the background after the reconcile: wait for them before looking.
    await waitUntil(() => restarted.lines.filter((l) => /^deleted server/.test(l.msg)).length >= (reconciled.deleted as number), 30_000);
    const status = JSON.parse((await rig.cli(['status', '--json'])).stdout) as {
      workers: { name: string; phase: string; status: string }[];
    };
    for (const server of rig.fake.liveServers()) {
      const row = status.workers.find((w) => w.name === server.name);
      t.match(row, { phase: 'ready' }, `${stage.name}: live server ${server.name} is an adopted worker`);
    }
    await waitUntil(() => rig.fake.liveServers().length === 0, 30_000);
    t.same(rig.fake.liveServers(), [], `${stage.name}: nothing left billing (the kill left ${leftByKill})`);
    t.equal(await restarted.stop(), 0);
  }
  t.same(rig.fake.schemaErrors, []);
});
