import { gunzipSync } from 'node:zlib';
import t from 'tap';
import { parse } from 'yaml';
import { READY_MARKER } from '../../src/core/config.js';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { instanceSelector, serverLabels, serverName } from '../../src/core/labels.js';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RUNCMD_ENVIRONMENT, USER_DATA_LIMIT, workerSetupCommands, workerUserData } from '../../src/daemon/user-data.js';
import { checkStoreScript, mountStoreScript, STORE_MARKER, STORE_SETTINGS_FILE } from '../../src/daemon/store-script.js';
import { volumeLabels, volumeName } from '../../src/core/labels.js';
import { packageRoot } from '../../src/core/package-file.js';
import { ZSTD_RELAY_PATH, ZSTD_RELAY_SOURCE } from '../../src/ssh/zstd-relay.js';

t.test('cloud-config pins the host key and authorises the login key', async (t) => {
  const host = generateKeyPair('host');
  const login = generateKeyPair('login');
  const text = workerUserData({ hostKey: host, loginPublicKey: login.publicKey });
  t.match(text, /^#cloud-config\n/);
  t.ok(Buffer.byteLength(text) < USER_DATA_LIMIT);
  const doc = parse(text) as Record<string, unknown>;
  t.same(doc.ssh_genkeytypes, ['ed25519'], "cloud-init's schema wants a non-empty list; the ed25519 key is given, so none is generated");
  t.same(doc.ssh_keys, { ed25519_private: host.privateKey, ed25519_public: host.publicKey });
  t.same(doc.users, [{ name: 'root', ssh_authorized_keys: [login.publicKey] }]);
  t.notOk(text.includes(login.privateKey), 'the login private key never leaves the daemon');
  const runcmd = doc.runcmd as string[];
  t.equal(runcmd[0], RUNCMD_ENVIRONMENT, 'the environment is set before anything else');
  t.match(
    runcmd[0],
    /^export HOME=\/root USER=root LOGNAME=root LANG=C\.UTF-8 PATH=\/usr\/local\/sbin:\/usr\/local\/bin:\/usr\/sbin:\/usr\/bin:\/sbin:\/bin$/,
  );
  t.match(runcmd.at(-1), READY_MARKER, 'the ready marker is written last');
  t.match(
    runcmd[2],
    /^step '1\/2 install Nix 2\.31\.2 unless the image has Nix'\n\(\n  if command -v nix-store/,
    'Nix is installed only where missing',
  );
  t.match(runcmd[3], /^step '2\/2 write the ready marker'\n/, 'each step logs a line');
});

t.test('labels and names follow the API rules', async (t) => {
  const labels = serverLabels('laptop', 'x86_64');
  for (const [k, v] of Object.entries(labels)) {
    t.match(k, /^([a-z0-9.-]+\/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/);
    t.match(v, /^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/);
  }
  t.equal(instanceSelector('laptop'), 'managed-by=nix-hcloud-builder,nix-hcloud-builder/instance=laptop');
  const name = serverName('my.host_1', 'x86_64', 'abc123');
  t.match(name, /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/);
  t.ok(serverName('a'.repeat(63), 'p', 's').length <= 63);
});

t.test('a warm store: the volume becomes /nix before Nix, and is checked before the ready marker', async (t) => {
  const host = generateKeyPair('host');
  const login = generateKeyPair('login');
  const doc = parse(workerUserData({ hostKey: host, loginPublicKey: login.publicKey, store: { volumeId: 4711, gcAtPercent: 85 } })) as {
    runcmd: string[];
    write_files: { path: string; permissions: string; content: string }[];
  };
  const [env, helpers, mount, install, check, ready] = doc.runcmd;
  t.equal(doc.runcmd.length, 6);
  t.equal(env, RUNCMD_ENVIRONMENT);
  t.match(helpers, /^step\(\) \{/);
  t.match(mount, /^step '1\/4 mount the store volume 4711 at \/nix'\n/);
  t.match(
    mount,
    /\) \|\| echo "nix-hcloud-builder: step 1\/4 failed \(status \$\?\); going on without it" >&2$/,
    'without the volume the worker goes on, cold',
  );
  t.match(mount, '/dev/disk/by-id/scsi-0HC_Volume_$id');
  t.match(mount, 'id=4711; target=/nix\n');
  t.match(mount, 'mount --bind "$dir" "$target"', 'the fake (or automount): the folder is bind-mounted');
  t.match(mount, /blkid -p[^\n]*\n[^\n]*"\$rc" -eq 2 \]; then mkfs\.ext4/, 'formatted only when blkid finds no file system');
  t.match(install, /command -v nix-store/);
  t.match(install, '/nix/var/nix/profiles/default/bin/nix-store', 'a Nix already on the volume is reused');
  t.match(check, STORE_MARKER, 'checked only when the volume is the store');
  t.match(check, 'nix-store --verify');
  t.notMatch(check, '--check-contents');
  t.match(check, /^step [^\n]*\n\(\n  at=85\n/);
  t.match(check, '-gt "$at" ]');
  t.match(check, 'nix-store --gc --max-freed');
  t.match(ready, READY_MARKER);
  t.match(install, /\) \|\| fail "status \$\?"$/, 'without Nix the boot fails');
  t.same(workerSetupCommands().length, 4, 'no store: environment, helpers, Nix, ready marker');
  // The same settings as data, for an image without cloud-init (nixos/scripts/store-volume.sh).
  t.same(doc.write_files, [{ path: STORE_SETTINGS_FILE, permissions: '0644', content: '{"volumeId":4711,"gcAtPercent":85}\n' }]);
  t.notOk(
    'write_files' in (parse(workerUserData({ hostKey: host, loginPublicKey: login.publicKey })) as object),
    'no store: no write_files',
  );
});

t.test('the store snippets pass shellcheck as POSIX sh', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-store-sh-'));
  const files = [
    ['mount.sh', mountStoreScript(12)],
    ['check.sh', checkStoreScript(80)],
    ...workerSetupCommands({ store: { volumeId: 12, gcAtPercent: 80 } }).map((c, i) => [`runcmd-${i}.sh`, c]),
  ].map(([name, text]) => {
    const file = join(dir, name as string);
    writeFileSync(file, `#!/bin/sh\n${text as string}\n`);
    return file;
  });
  const r = spawnSync('shellcheck', ['--shell=sh', ...files], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stdout + r.stderr);
});

t.test('the store snippets never end the runcmd script (cloud-init runs all entries as one script)', async (t) => {
  const runcmd = workerSetupCommands({ store: { volumeId: 12, gcAtPercent: 80 } });
  t.match(runcmd[2], /^step [^\n]*\n\(\n[\s\S]*\n\) \|\| echo [^\n]*$/, 'the mount is a subshell');
  t.match(runcmd[4], /^step [^\n]*\n\(\n[\s\S]*\n\) \|\| echo [^\n]*$/, 'the check is a subshell');
  // Without a mounted volume the check exits at once; what follows it still runs.
  t.notOk(existsSync(STORE_MARKER), 'this machine has no store marker');
  const r = spawnSync('sh', ['-c', `${checkStoreScript(80)}\necho after`], { encoding: 'utf8' });
  t.equal(r.stdout, 'after\n', r.stderr);
});

t.test('store volume labels and names', async (t) => {
  t.same(volumeLabels('laptop', 'x86_64', 1), {
    'managed-by': 'nix-hcloud-builder',
    'nix-hcloud-builder/instance': 'laptop',
    'nix-hcloud-builder/pool': 'x86_64',
    'nix-hcloud-builder/slot': '1',
  });
  t.equal(volumeName('laptop', 'x86_64', 0), 'nhb-laptop-x86-64-store-0');
  const long = volumeName('a'.repeat(63), 'b'.repeat(32), 17);
  t.ok(long.length <= 64);
  t.match(long, /-store-17$/);
  t.not(volumeName('a'.repeat(63), 'p', 1), volumeName('a'.repeat(63), 'p', 2));
});

t.test('with compression "zstd" the cloud-config writes the relay, executable, and stays under the limit', async (t) => {
  const host = generateKeyPair('host');
  const login = generateKeyPair('login');
  const plain = parse(workerUserData({ hostKey: host, loginPublicKey: login.publicKey })) as Record<string, unknown>;
  t.equal(plain.write_files, undefined, 'no relay without zstd');
  const text = workerUserData({ hostKey: host, loginPublicKey: login.publicKey, zstdRelay: true, store: { volumeId: 7, gcAtPercent: 80 } });
  t.ok(Buffer.byteLength(text) < USER_DATA_LIMIT, `${Buffer.byteLength(text)} bytes with the relay and a store volume`);
  const files = (parse(text) as { write_files: { path: string; permissions: string; content: string; encoding?: string }[] }).write_files;
  t.same(
    files.map((f) => f.path),
    [STORE_SETTINGS_FILE, ZSTD_RELAY_PATH],
    'the store settings and the relay',
  );
  const relay = files.find((f) => f.path === ZSTD_RELAY_PATH);
  t.equal(relay?.permissions, '0755');
  t.equal(relay?.encoding, 'gz+b64', "gzipped (cloud-init's gz+b64): as text it would take most of the limit");
  t.equal(
    gunzipSync(Buffer.from(relay?.content ?? '', 'base64')).toString('utf8'),
    readFileSync(join(packageRoot(), ZSTD_RELAY_SOURCE), 'utf8'),
    'the relay as the package ships it',
  );
});
