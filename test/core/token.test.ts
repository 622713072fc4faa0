import t from 'tap';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../src/core/config.js';
import { loadToken } from '../../src/core/token.js';

const dir = mkdtempSync(join(tmpdir(), 'nhb-token-'));
const base = { pools: { p: { serverTypes: ['cx23'] } } };

t.test('environment wins, then file, then command', async (t) => {
  writeFileSync(join(dir, 'token'), 'from-file\n', { mode: 0o600 });
  const withFile = parseConfig({ ...base, hcloud: { tokenFile: 'token' } }, dir);
  t.same(loadToken(withFile, { HCLOUD_TOKEN: 'from-env' }), { token: 'from-env', source: 'environment variable HCLOUD_TOKEN' });
  t.equal(loadToken(withFile, {}).token, 'from-file');
  t.notOk(loadToken(withFile, {}).warning);
  const withCommand = parseConfig({ ...base, hcloud: { tokenCommand: 'echo from-command' } }, dir);
  t.equal(loadToken(withCommand, {}).token, 'from-command');
});

t.test('bad token sources give clear errors that do not contain the token', async (t) => {
  t.throws(() => loadToken(parseConfig(base, dir), {}), { name: 'TokenError', message: /no Hetzner API token/ });
  t.throws(() => loadToken(parseConfig({ ...base, hcloud: { tokenFile: 'missing' } }, dir), {}), {
    message: /cannot read the Hetzner API token file .*missing \(hcloud\.tokenFile\): ENOENT/,
  });
  // A path that cannot be read as a file (root reads any mode, so a folder stands in).
  const unreadable = parseConfig({ ...base, hcloud: { tokenFile: '.' } }, dir);
  t.throws(() => loadToken(unreadable, {}), { message: /cannot read the Hetzner API token file .* \(hcloud\.tokenFile\): EISDIR/ });
  writeFileSync(join(dir, 'empty'), '\n');
  t.throws(() => loadToken(parseConfig({ ...base, hcloud: { tokenFile: 'empty' } }, dir), {}), { message: /is empty/ });
  const failing = parseConfig({ ...base, hcloud: { tokenCommand: 'exit 3' } }, dir);
  t.throws(() => loadToken(failing, {}), { message: 'hcloud.tokenCommand failed with exit status 3' });
  writeFileSync(join(dir, 'open'), 'tok', { mode: 0o644 });
  chmodSync(join(dir, 'open'), 0o644);
  t.match(loadToken(parseConfig({ ...base, hcloud: { tokenFile: 'open' } }, dir), {}).warning, /can be read by other users/);
});
