/**
 * The early handshake, end to end: a first build records what the worker answered; once the
 * worker idled out, a session on the cold pool gets its answer while the boot is held (so before
 * it is done), and a real build goes through the splice; a stale record fails one session with a
 * clear line and is corrected; a pool whose last boot failed makes Nix wait (it can fall back).
 */
import t, { type Test } from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Rig, waitUntil, type DaemonProcess } from '../rig/rig.js';
import { testedSuites } from '../rig/nix-client.js';
import { hello } from '../rig/nix-handshake.js';

const answeredEarly = (daemon: DaemonProcess): number => daemon.lines.filter((l) => l.msg === 'answered early').length;

interface StateHandshakes {
  handshakes: { pool: string; record: { protocol: string; version: number } }[];
}

/** A rig whose first ssh-ng build recorded the worker's handshake. */
async function recorded(t: Test, name: string): Promise<{ rig: Rig; daemon: DaemonProcess }> {
  const rig = await Rig.start({ pool: { idleTimeout: '1s' } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const first = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`${name}-first-${Date.now()}`] });
  t.equal(first.code, 0, 'the first build succeeded', { stderr: first.stderr });
  await daemon.waitForMsg(/recorded the worker's handshake/);
  return { rig, daemon };
}

for (const client of testedSuites()) {
  for (const scheme of ['ssh-ng', 'ssh'] as const) {
    const mode = scheme === 'ssh-ng' ? 'daemon' : 'serve';
    t.test(
      `${scheme}://, ${client}'s Nix: a cold pool answers from the record before its boot is done, and builds through the splice`,
      async (t) => {
        const rig = await Rig.start({ pool: { idleTimeout: '1s' }, client });
        t.teardown(() => rig.stop());
        const daemon = await rig.startDaemon();

        const first = await rig.nixBuild(daemon, { scheme, nonces: [`first-${scheme}-${client}-${Date.now()}`] });
        t.equal(first.code, 0, 'the first build succeeded', { stderr: first.stderr });
        t.equal(answeredEarly(daemon), 0, 'no record yet: the first session waited for the worker');
        await daemon.waitForMsg(/recorded the worker's handshake/);
        await rig.idledOut(daemon, 0);

        // The server's create action is held: the boot cannot end while the session is answered.
        const release = rig.fake.holdActions('create_server');
        const program = mode === 'daemon' ? ['nix-daemon', '--stdio'] : ['nix-store', '--serve', '--write'];
        const answer = await hello(mode, 'ssh', rig.sshArgs(daemon, program));
        t.equal(daemon.lines.filter((l) => /is ready after/.test(l.msg)).length, 1, 'answered while the second boot is not done');
        t.match(answer.version, /^\d+\.\d+$/);
        release();
        await rig.idledOut(daemon, 1);
        // Log lines come in order: one of the hello session (if it sent its opening whole) is in.
        const before = answeredEarly(daemon);

        const second = await rig.nixBuild(daemon, { scheme, nonces: [`second-${scheme}-${client}-${Date.now()}`] });
        t.equal(second.code, 0, 'a build answered early goes on with the worker after its boot', { stderr: second.stderr });
        // After `# accept` Nix drops stderr lines of ssh-ng sessions: these come as protocol log messages.
        t.match(second.stderr, /nix-hcloud-builder: worker \S+ is ready after/, "the boot's progress still reaches the user");
        await daemon.waitFor(() => answeredEarly(daemon) === before + 1);
        t.pass("the daemon says it answered the build's opening whole early");
        t.equal(await daemon.stop(), 0);
      },
    );
  }
}

t.test('a stale record fails that session with one clear line and is corrected; the next session succeeds', async (t) => {
  const started = await recorded(t, 'stale');
  const rig = started.rig;
  let daemon = started.daemon;
  t.equal(await daemon.stop(), 0);

  // The record as if the worker's Nix had spoken an older protocol last time.
  const file = join(rig.dir, 'state', 'state.json');
  const state = JSON.parse(readFileSync(file, 'utf8')) as StateHandshakes;
  const entry = state.handshakes.find((h) => h.record.protocol === 'worker');
  t.ok(entry, "the worker protocol's record is in the state file");
  const real = entry?.record.version as number;
  (entry as StateHandshakes['handshakes'][number]).record.version = real - 1;
  writeFileSync(file, JSON.stringify(state));

  daemon = await rig.startDaemon();
  const stale = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`stale-${Date.now()}`] });
  t.not(stale.code, 0, 'the session answered from the stale record fails');
  t.match(
    stale.stderr,
    /nix-hcloud-builder: the worker's Nix answered the handshake differently than recorded \(protocol/,
    'with one clear line',
  );
  await daemon.waitFor(() => answeredEarly(daemon) === 1);
  await waitUntil(
    () =>
      (JSON.parse(readFileSync(file, 'utf8')) as StateHandshakes).handshakes.find((h) => h.record.protocol === 'worker')?.record.version ===
      real,
    10_000,
  );
  t.pass('the record is corrected in the state file');

  const next = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`stale-next-${Date.now()}`] });
  t.equal(next.code, 0, 'the next session succeeds', { stderr: next.stderr });
  await rig.idledOut(daemon, 0);
  const cold = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`stale-cold-${Date.now()}`] });
  t.equal(cold.code, 0, 'and a session answered early from the corrected record succeeds', { stderr: cold.stderr });
  await daemon.waitFor(() => answeredEarly(daemon) === 2);
  t.equal(await daemon.stop(), 0);
});

t.test('a boot that fails after an early answer fails the build with the reason; then the pool makes Nix wait', async (t) => {
  const { rig, daemon } = await recorded(t, 'fail');
  await rig.idledOut(daemon, 0);

  rig.fake.inject({ method: 'POST', path: '/servers', status: 412, code: 'placement_error', message: 'no capacity', times: 1 });
  const failed = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`fail-${Date.now()}`] });
  t.not(failed.code, 0, 'the build fails');
  t.match(
    failed.stderr,
    /nix-hcloud-builder: the worker's boot failed after its handshake was answered early: no server could be created/,
    'with the reason',
  );
  await daemon.waitFor(() => answeredEarly(daemon) === 1);

  rig.fake.inject({ method: 'POST', path: '/servers', status: 412, code: 'placement_error', message: 'no capacity', times: 1 });
  const waited = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`fail-again-${Date.now()}`] });
  t.not(waited.code, 0);
  t.match(waited.stderr, /no server could be created/);
  t.notMatch(waited.stderr, /answered early/, 'after a failed boot the session was not answered early');
  t.equal(answeredEarly(daemon), 1, 'the daemon did not answer early');
  t.equal(daemon.proc.exitCode, null, 'the daemon keeps serving');
  t.equal(await daemon.stop(), 0);
});

t.test('a pool whose budget allows no further boot never answers early: Nix may fall back', async (t) => {
  // One hour of the fake's cx23 in fsn1 fits, a second does not: the first boot spends the budget.
  const rig = await Rig.start({ pool: { idleTimeout: '1s' }, config: { budget: { maxEurPerMonth: 0.01 } } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const first = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`budget-first-${Date.now()}`] });
  t.equal(first.code, 0, 'the first build succeeded', { stderr: first.stderr });
  await daemon.waitForMsg(/recorded the worker's handshake/);
  await rig.idledOut(daemon, 0);

  const refused = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`budget-second-${Date.now()}`] });
  t.not(refused.code, 0, 'the build fails (this test gives Nix nothing to fall back to)');
  t.match(refused.stderr, /would exceed budget\.maxEurPerMonth/, 'with the budget as the reason');
  t.notMatch(refused.stderr, /after its handshake was answered early/);
  await daemon.waitForMsg(/not answering early: a boot would be refused/);
  t.equal(answeredEarly(daemon), 0, 'the session was not answered early');
  t.equal(await daemon.stop(), 0);
});
