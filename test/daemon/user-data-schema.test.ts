/**
 * Every user data the daemon writes is valid for real cloud-init (`cloud-init schema`, Debian's
 * package): an invalid key makes cloud-init report the boot as degraded, and a newer cloud-init may
 * refuse what an older one let pass.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { workerUserData, type WorkerUserDataInput } from '../../src/daemon/user-data.js';

const dir = mkdtempSync(join(tmpdir(), 'nhb-cloud-init-schema-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function schema(name: string, text: string): { status: number | null; out: string } {
  const file = join(dir, `${name}.yaml`);
  writeFileSync(file, text);
  const r = spawnSync('cloud-init', ['schema', '--config-file', file], { encoding: 'utf8' });
  if (r.error) throw new Error(`cloud-init is missing (scripts/ensure-deps.sh installs it): ${r.error.message}`);
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

t.test('cloud-init schema passes every variant of the user data', async (t) => {
  const host = generateKeyPair('host');
  const login = generateKeyPair('login');
  const base = { hostKey: host, loginPublicKey: login.publicKey };
  const store = { volumeId: 4711, gcAtPercent: 85 };
  const nix = {
    version: '2.33.1',
    url: 'https://mirror.example/nix-{version}-{system}.tar.xz',
    sha256: { 'aarch64-linux': 'ab'.repeat(32) },
  };
  const variants: Record<string, WorkerUserDataInput> = {
    plain: base,
    zstd: { ...base, zstdRelay: true },
    store: { ...base, store },
    'zstd-store': { ...base, zstdRelay: true, store },
    'own-nix-release': { ...base, zstdRelay: true, store, nix },
  };
  for (const [name, input] of Object.entries(variants)) {
    const r = schema(name, workerUserData(input));
    t.equal(r.status, 0, `${name}: ${r.out.trim()}`);
    t.match(r.out, 'Valid cloud-config', name);
  }
});

t.test('the check is real: cloud-init rejects what the daemon wrote before (ssh_genkeytypes: [])', async (t) => {
  const r = schema('empty-genkeytypes', '#cloud-config\nssh_genkeytypes: []\n');
  t.not(r.status, 0);
  t.match(r.out, /ssh_genkeytypes: \[\] is too short|should be non-empty/);
});
