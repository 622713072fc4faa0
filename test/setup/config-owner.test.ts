/** The daemon's config read as its own user: `~` and the default state folder in that user's home. */
import t from 'tap';
import { chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfigAsOwner } from '../../src/setup/config-owner.js';

t.test("no stateDir in the config: the daemon's user's default, not root's", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'config-owner-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'plain.json'), JSON.stringify({ pools: { x86_64: { serverTypes: ['cx23'] } }, authorizedKeysFile: '~/keys' }));
  chownSync(join(dir, 'plain.json'), 65534, 65534);
  const home = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .map((l) => l.split(':'))
    .find((f) => f[2] === '65534')?.[5];
  t.ok(home, 'uid 65534 has a home in /etc/passwd');
  const config = loadConfigAsOwner(join(dir, 'plain.json'));
  t.equal(config.stateDir, `${home}/.local/state/nix-hcloud-builder`);
  t.equal(config.authorizedKeysFile, `${home}/keys`);
  t.not(process.env.HOME, home, 'HOME is restored');
});
