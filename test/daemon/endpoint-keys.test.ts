/** The endpoint's host key and authorized keys, in a temporary state folder. */
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../src/core/config.js';
import { ensureHostKey, loadAuthorizedKeys } from '../../src/daemon/endpoint-keys.js';
import { hostKeyPaths } from '../../src/ssh/keys.js';

function folder(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'endpoint-keys-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

t.test('the host key is made once, private for the owner, and kept across starts', async (t) => {
  const dir = folder(t);
  const first = ensureHostKey(dir);
  t.match(first.publicKey, /^ssh-ed25519 \S+ nix-hcloud-builder$/);
  t.equal(statSync(hostKeyPaths(dir).privateKey).mode & 0o777, 0o600);
  t.same(ensureHostKey(dir), first);
});

t.test("authorized keys: the config's lines, then the file's; an unreadable file is named", async (t) => {
  const dir = folder(t);
  const file = join(dir, 'authorized_keys');
  writeFileSync(file, 'ssh-ed25519 BBBB from-file\n');
  const config = (authorizedKeysFile: string) =>
    parseConfig(
      { stateDir: dir, authorizedKeys: ['ssh-ed25519 AAAA inline'], authorizedKeysFile, pools: { x86: { serverTypes: ['cx23'] } } },
      '/',
    );
  t.same(loadAuthorizedKeys(config(file)), ['ssh-ed25519 AAAA inline', 'ssh-ed25519 BBBB from-file', '']);
  t.throws(() => loadAuthorizedKeys(config(join(dir, 'missing'))), {
    message: `cannot read authorizedKeysFile ${join(dir, 'missing')}: ENOENT`,
  });
});
