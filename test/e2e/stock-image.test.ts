/**
 * A worker on a stock image that has no Nix, as Ubuntu's: cloud-init applies the user data, runcmd
 * runs in cloud-final's environment (no HOME, no USER), and the cloud-config's install step really
 * runs: it downloads a release tarball (made by the rig from this machine's Nix, laid out as
 * NixOS/nix's, served on 127.0.0.1 at the pool's `nix.url`), checks its sha256, and runs its
 * installer multi-user: the rig's stand-in for Nix's `install` and `install-multi-user.sh` (with
 * the real one's HOME check), which sources Nix's own install-systemd-multi-user.sh (Debian
 * trixie's copy) for the build users and the daemon's units. Then a real build runs on it and the
 * idle timer deletes it.
 *
 * And a tampered tarball (its hash does not match) is never run: the boot fails at once with that
 * reason on the build's stderr, and the server is deleted. And without the cloud-config's
 * environment line (taken out of the user data on its way to the fake), runcmd has no HOME and
 * the installer refuses, as Nix's does: the boot fails with its words.
 */
import t from 'tap';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Rig, waitUntil } from '../rig/rig.js';
import { makeNixRelease, poolNixSetting, serveNixRelease } from '../rig/nix-release.js';
import type { FakeServerInfo } from '../fake-hcloud/index.js';
import { tmpdir } from 'node:os';
import { RUNCMD_ENVIRONMENT } from '../../src/daemon/user-data.js';

const IMAGE = 'ubuntu-24.04-without-nix';
const releaseDir = join(tmpdir(), `nhb-nix-release-${process.pid}`);
mkdirSync(releaseDir, { recursive: true });
const release = makeNixRelease(releaseDir);
t.teardown(() => rmSync(releaseDir, { recursive: true, force: true }));

async function stockRig(
  t: { teardown: (fn: () => unknown) => void },
  fakeLog: string[],
): Promise<{ rig: Rig; server: Awaited<ReturnType<typeof serveNixRelease>> }> {
  const server = await serveNixRelease(release);
  t.teardown(() => server.close());
  const rig = await Rig.start({
    pool: {
      image: IMAGE,
      idleTimeout: '3s',
      bootTimeout: '120s',
      nix: poolNixSetting(release, server.url),
    },
    fake: { log: (l) => fakeLog.push(l) },
  });
  t.teardown(() => rig.stop());
  rig.fake.addImage({ name: IMAGE, type: 'system', description: 'Ubuntu 24.04 (stock, no Nix)', worker: 'stock' });
  return { rig, server };
}

t.test("a stock image without Nix: the cloud-config installs it with the release's installer, and a build runs", async (t) => {
  const fakeLog: string[] = [];
  const { rig, server } = await stockRig(t, fakeLog);
  const daemon = await rig.startDaemon();
  const result = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`stock-${Date.now()}`] });
  const s = rig.fake.servers()[0] as FakeServerInfo;
  const output = existsSync(join(s.dir, 'cloud-init-output.log')) ? readFileSync(join(s.dir, 'cloud-init-output.log'), 'utf8') : '';
  t.equal(result.code, 0, 'nix-build succeeded', { stderr: result.stderr, fake: fakeLog, output });
  const outPath = result.outPaths[0] as string;
  t.equal(s.bootMode, 'stock');
  t.same(server.statuses, [200], 'the tarball was downloaded once');
  t.ok(outPath && existsSync(join(s.storeDir, 'store', basename(outPath))), "built in the worker's own store");

  // One line per step, in order, and the installer really ran.
  const steps = [...output.matchAll(/^nix-hcloud-builder: step (\d\/\d .*)$/gm)].map((m) => m[1]);
  t.same(steps, [`1/2 install Nix ${release.version} unless the image has Nix`, '2/2 write the ready marker']);
  t.match(output, `nix-hcloud-builder: installed Nix ${release.version} (${release.system}, sha256 ${release.sha256})`);
  const installLog = (await rig.fake.readServerFile(s.id, '/var/log/nix-hcloud-builder-nix-install.log')) ?? '';
  t.match(installLog, 'install: a multi-user Nix from ', 'install handed over to install-multi-user');
  const installSteps = [...installLog.matchAll(/^install-multi-user: step (\d)\/8 /gm)].map((m) => Number(m[1]));
  t.same(installSteps, [1, 2, 3, 4, 5, 6, 7, 8], 'install-multi-user ran its steps in order', { installLog });
  t.match(installLog, `install-multi-user: done: Nix ${release.version} is installed`, 'and finished');
  t.match(installLog, 'Setting up the nix-daemon systemd service', "the daemon's units set up by Nix's install-systemd-multi-user.sh");
  // What the installer made, inside the server.
  t.match(await rig.fake.readServerFile(s.id, '/etc/group'), /^nixbld:x:30000:/m, 'the build group');
  t.match(
    await rig.fake.readServerFile(s.id, '/etc/passwd'),
    /^nixbld32:x:30032:30000:Nix build user 32:\/var\/empty:\/sbin\/nologin$/m,
    'the build users',
  );
  t.match(await rig.fake.readServerFile(s.id, '/etc/nix/nix.conf'), /^build-users-group = nixbld$/m, 'its nix.conf');
  t.match(
    await rig.fake.readServerFile(s.id, '/etc/profile.d/nix.sh'),
    '/nix/var/nix/profiles/default/etc/profile.d/nix-daemon.sh',
    'the shell profile',
  );
  const calls = readFileSync(join(s.dir, 'stub-calls.log'), 'utf8');
  t.match(
    calls,
    'systemctl enable /nix/var/nix/profiles/default/lib/systemd/system/nix-daemon.socket\n',
    "the daemon's socket enabled (stand-in)",
  );
  t.match(calls, 'systemctl start nix-daemon.socket\n');

  // Deleted by the idle timer.
  await waitUntil(() => rig.fake.liveServers().length === 0, 30_000);
  t.equal(rig.fake.liveServers().length, 0, 'the server was deleted');
});

t.test("a tampered tarball is never run: the boot fails with the hash mismatch on the build's stderr", async (t) => {
  const fakeLog: string[] = [];
  const { rig, server } = await stockRig(t, fakeLog);
  server.tamper(true);
  const daemon = await rig.startDaemon();
  const result = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`stock-tampered-${Date.now()}`] });
  t.not(result.code, 0, 'the build failed');
  t.match(
    result.stderr,
    new RegExp(
      `the worker's setup failed: step 1/2 install Nix ${release.version.replaceAll('.', '\\.')} unless the image has Nix failed: sha256 mismatch of http://127\\.0\\.0\\.1:\\d+/nix-${release.version}/nix-${release.version}-${release.system}\\.tar\\.xz: expected ${release.sha256}, got [0-9a-f]{64}; not running it`,
    ),
    'the reason is on stderr',
  );
  const s = rig.fake.servers()[0] as FakeServerInfo;
  t.notOk(existsSync(join(s.storeDir, 'store')), 'nothing was installed');
  await waitUntil(() => rig.fake.liveServers().length === 0, 30_000);
  t.equal(rig.fake.liveServers().length, 0, 'the server was deleted');
});

t.test("without the cloud-config's environment line, runcmd has no HOME and the installer refuses, as Nix's does", async (t) => {
  const fakeLog: string[] = [];
  const { rig, server } = await stockRig(t, fakeLog);
  // The user data is JSON: its runcmd without the entry that sets HOME.
  rig.fake.editUserData((userData) => {
    const header = userData.slice(0, userData.indexOf('\n') + 1);
    const config = JSON.parse(userData.slice(header.length)) as { runcmd: string[] };
    t.ok(config.runcmd.includes(RUNCMD_ENVIRONMENT), 'the cloud-config has the environment line');
    return header + JSON.stringify({ ...config, runcmd: config.runcmd.filter((c) => c !== RUNCMD_ENVIRONMENT) });
  });
  const daemon = await rig.startDaemon();
  const result = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`stock-no-home-${Date.now()}`] });
  t.not(result.code, 0, 'the build failed');
  t.same(server.statuses, [200], 'the tarball was downloaded');
  t.match(
    result.stderr,
    new RegExp(
      `the worker's setup failed: step 1/2 install Nix ${release.version.replaceAll('.', '\\.')} unless the image has Nix failed: the installer of Nix ${release.version.replaceAll('.', '\\.')} failed: \\S*/install: \\$HOME is not set`,
    ),
    "the installer's reason is on stderr",
  );
  const s = rig.fake.servers()[0] as FakeServerInfo;
  t.notOk(existsSync(join(s.storeDir, 'store')), 'nothing was installed');
  await waitUntil(() => rig.fake.liveServers().length === 0, 30_000);
  t.equal(rig.fake.liveServers().length, 0, 'the server was deleted');
});
