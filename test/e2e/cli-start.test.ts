/**
 * The CLI started the way an npm install starts it: the bin file itself, through its shebang
 * (`env -S node --single-threaded-gc`), not `node cli.js` as the other tests do.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { chmodSync } from 'node:fs';
import { CLI, DaemonProcess, nodeFlagsOf, Rig, TOKEN } from '../rig/rig.js';

t.test('through its shebang, the daemon runs with the node flags the tests and the bench use', async (t) => {
  const rig = await Rig.start({ fake: { realServers: false } });
  t.teardown(() => rig.stop());
  chmodSync(CLI, 0o755); // npm makes a package's bin executable when it installs it
  const daemon = new DaemonProcess(
    spawn(CLI, ['serve', '--config', rig.configFile], {
      env: { ...process.env, HCLOUD_TOKEN: TOKEN },
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  const first = await daemon.waitForMsg(/^step 1\/4/, 30_000);
  t.same(first.nodeFlags, ['--single-threaded-gc'], 'node got the flag from the shebang');
  t.same(nodeFlagsOf(CLI), first.nodeFlags, 'the harness and the bench start it with the same flags');
  const listening = await daemon.waitForMsg(/listening for Nix/, 30_000);
  t.ok(listening.port, 'and it serves');
  t.equal(await daemon.stop(), 0, 'stops cleanly on SIGTERM');
});
