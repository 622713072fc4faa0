/**
 * The daemon's user data for a stock image, applied by real cloud-init (Debian 12's) in a real
 * boot: a Debian root with systemd booted under systemd-nspawn with the user data as its NoCloud
 * seed (test/rig/cloud-init-boot.sh). cloud-init writes the host key and the login key, writes the
 * files, and runs runcmd in cloud-final.service's environment, as on a server: the install step
 * downloads the rig's release tarball (served in the boot's network namespace), checks it and runs
 * its installer, whose Nix's install-systemd-multi-user.sh talks to the container's real systemd;
 * then the ready marker. Without the cloud-config's environment line, cloud-final gives runcmd no
 * HOME and the installer stops.
 */
import t from 'tap';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { RUNCMD_ENVIRONMENT, workerUserData } from '../../src/daemon/user-data.js';
import { ZSTD_RELAY_PATH } from '../../src/ssh/zstd-relay.js';
import { bootWithCloudInit, SERVED_URL } from '../rig/cloud-init-boot.js';
import { makeNixRelease, poolNixSetting } from '../rig/nix-release.js';

const dir = mkdtempSync(join(tmpdir(), 'nhb-cloud-init-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
mkdirSync(join(dir, 'release'));
const release = makeNixRelease(join(dir, 'release'));
const served = join(dir, 'served');
mkdirSync(join(served, `nix-${release.version}`), { recursive: true });
copyFileSync(release.file, join(served, `nix-${release.version}`, `nix-${release.version}-${release.system}.tar.xz`));

const host = generateKeyPair('host');
const login = generateKeyPair('login');
const userData = workerUserData({
  hostKey: host,
  loginPublicKey: login.publicKey,
  zstdRelay: true,
  nix: poolNixSetting(release, `${SERVED_URL}/nix-{version}/nix-{version}-{system}.tar.xz`),
});
/** The step lines (`fail` logs "step … failed: …" too: not those). */
const steps = (output: string): string[] =>
  [...output.matchAll(/^nix-hcloud-builder: step (\d\/\d .*)$/gm)].map((m) => m[1] as string).filter((s) => !/ failed: /.test(s));
const installStep = `1/2 install Nix ${release.version} unless the image has Nix`;

t.test('real cloud-init sets the keys, writes the files and runs runcmd to its last step in cloud-final', async (t) => {
  const boot = await bootWithCloudInit(userData, { serve: served, collect: [ZSTD_RELAY_PATH] });
  const diag = { output: boot.output, status: boot.status, units: boot.units, log: boot.log, console: boot.console.slice(-4000) };
  t.ok(boot.finished, "cloud-init's final stage finished", diag);
  t.match(boot.status, /^status: done$/m, 'cloud-init reports no error (every module of the cloud-config ran)', diag);
  t.same(steps(boot.output), [installStep, '2/2 write the ready marker'], 'runcmd logged each step', diag);
  t.match(boot.output, `nix-hcloud-builder: installed Nix ${release.version} (${release.system}, sha256 ${release.sha256})`);
  t.ok(boot.ready, 'the ready marker is written', diag);
  t.equal(boot.failed, undefined, 'no failure recorded');
  t.match(boot.units, /nix-daemon\.socket\s+loaded\s+active\s/, "the container's systemd listens on the nix-daemon socket", diag);
  t.equal(boot.files['/etc/ssh/ssh_host_ed25519_key.pub']?.trim(), host.publicKey.trim(), "sshd's host key is ours");
  t.match(boot.files['/root/.ssh/authorized_keys'], login.publicKey.trim(), "root's login key is ours");
  t.ok(boot.files[ZSTD_RELAY_PATH], 'write_files wrote the zstd relay');
});

t.test("without the cloud-config's environment line, cloud-final gives runcmd no HOME and Nix's installer stops", async (t) => {
  const header = userData.slice(0, userData.indexOf('\n') + 1);
  const config = JSON.parse(userData.slice(header.length)) as { runcmd: string[] };
  t.ok(config.runcmd.includes(RUNCMD_ENVIRONMENT), 'the cloud-config has the environment line');
  const withoutHome = header + JSON.stringify({ ...config, runcmd: config.runcmd.filter((c) => c !== RUNCMD_ENVIRONMENT) });
  const boot = await bootWithCloudInit(withoutHome, { serve: served });
  const diag = { output: boot.output, status: boot.status, units: boot.units, log: boot.log };
  t.ok(boot.finished, "cloud-init's final stage finished", diag);
  t.same(steps(boot.output), [installStep], 'runcmd stopped at the install step', diag);
  t.match(
    boot.failed,
    /^step 1\/2 install Nix .* failed: the installer of Nix .* failed: \S*\/install: \$HOME is not set/,
    'the reason',
    diag,
  );
  t.notOk(boot.ready, 'no ready marker');
});
