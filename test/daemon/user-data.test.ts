import t from 'tap';
import { parse } from 'yaml';
import { READY_MARKER } from '../../src/core/config.js';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { instanceSelector, serverLabels, serverName } from '../../src/core/labels.js';
import { USER_DATA_LIMIT, workerUserData } from '../../src/daemon/user-data.js';

t.test('cloud-config pins the host key and authorises the login key', async (t) => {
  const host = generateKeyPair('host');
  const login = generateKeyPair('login');
  const text = workerUserData({ hostKey: host, loginPublicKey: login.publicKey });
  t.match(text, /^#cloud-config\n/);
  t.ok(Buffer.byteLength(text) < USER_DATA_LIMIT);
  const doc = parse(text) as Record<string, unknown>;
  t.same(doc.ssh_genkeytypes, []);
  t.same(doc.ssh_keys, { ed25519_private: host.privateKey, ed25519_public: host.publicKey });
  t.same(doc.users, [{ name: 'root', ssh_authorized_keys: [login.publicKey] }]);
  t.notOk(text.includes(login.privateKey), 'the login private key never leaves the daemon');
  const runcmd = doc.runcmd as string[];
  t.match(runcmd.at(-1), READY_MARKER, 'the ready marker is written last');
  t.match(runcmd[0], /command -v nix-store/, 'Nix is installed only where missing');
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
