import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, DEFAULT_READY_COMMAND, loadConfig, parseConfig } from '../../src/core/config.js';
import { parseDuration } from '../../src/core/duration.js';

const minimal = { pools: { x86_64: { serverTypes: ['ccx33'] } } };

t.test('defaults fill everything a minimal config leaves out', async (t) => {
  const c = parseConfig(minimal, '/etc/nhb', { XDG_STATE_HOME: '/var/state' });
  t.same(c.listen, { host: '127.0.0.1', port: 2222 });
  t.equal(c.stateDir, '/var/state/nix-hcloud-builder');
  t.equal(c.hcloud.endpoint, 'https://api.hetzner.cloud/v1');
  const pool = c.pools.x86_64;
  t.ok(pool);
  t.same(pool?.serverTypes, ['ccx33']);
  t.same(pool?.locations, ['fsn1', 'nbg1', 'hel1']);
  t.same(pool?.image, { name: 'ubuntu-24.04' });
  t.equal(pool?.maxWorkers, 1);
  t.equal(pool?.idleTimeoutMs, 600_000);
  t.equal(pool?.readyCommand, DEFAULT_READY_COMMAND);
  t.equal(pool?.compression, 'zstd');
  t.equal(pool?.compressionLevel, 'auto');
  t.equal(pool?.compressionLevelMin, -5);
  t.equal(pool?.compressionLevelMax, 12);
  t.match(c.instance, /^[a-z0-9]([a-z0-9_.-]*[a-z0-9])?$/);
});

t.test('durations, paths and image forms', async (t) => {
  const c = parseConfig(
    {
      stateDir: 'state',
      authorizedKeysFile: 'keys',
      hcloud: { tokenFile: 'token', endpoint: 'http://127.0.0.1:9/v1/' },
      pools: {
        a: { serverTypes: ['cx23'], idleTimeout: '90s', bootTimeout: 300, image: 123 },
        b: { serverTypes: ['cax11'], idleTimeout: '1h30m', image: { labelSelector: 'role=worker' } },
        c: { serverTypes: ['cx23'], image: '456', compression: 'zlib' },
      },
    },
    '/srv/conf',
  );
  t.equal(c.pools.c?.compression, 'zlib');
  t.equal(c.stateDir, '/srv/conf/state');
  t.equal(c.authorizedKeysFile, '/srv/conf/keys');
  t.equal(c.hcloud.tokenFile, '/srv/conf/token');
  t.equal(c.hcloud.endpoint, 'http://127.0.0.1:9/v1');
  t.equal(c.pools.a?.idleTimeoutMs, 90_000);
  t.equal(c.pools.a?.bootTimeoutMs, 300_000);
  t.same(c.pools.a?.image, { id: 123 });
  t.equal(c.pools.b?.idleTimeoutMs, 5_400_000);
  t.same(c.pools.b?.image, { labelSelector: 'role=worker' });
  t.same(c.pools.c?.image, { id: 456 });
});

t.test('errors name the key and the expected value', async (t) => {
  const cases: [unknown, RegExp][] = [
    [[], /expected a JSON object/],
    [{}, /"pools"/],
    [{ pools: {} }, /at least one pool/],
    [{ pools: { x86_64: {} } }, /"pools\.x86_64\.serverTypes": expected a list/],
    [{ pools: { x86_64: { serverTypes: [] } } }, /"pools\.x86_64\.serverTypes": expected at least one/],
    [{ pools: { x86_64: { serverTypes: ['cx23'], idleTimeout: 'soon' } } }, /"pools\.x86_64\.idleTimeout": expected a duration/],
    [{ pools: { x86_64: { serverTypes: ['cx23'], maxWorkers: 0 } } }, /"pools\.x86_64\.maxWorkers": expected an integer from 1/],
    [{ pools: { x86_64: { serverTypes: ['cx23'], maxWorker: 2 } } }, /"pools\.x86_64\.maxWorker" is not known/],
    [{ pools: { 'Bad Name': { serverTypes: ['cx23'] } } }, /"pools\.Bad Name": a pool name/],
    [
      { pools: { x86_64: { serverTypes: ['cx23'], compression: 'lz4' } } },
      /"pools\.x86_64\.compression": expected one of "none", "zlib", "zstd", got "lz4"/,
    ],
    [{ pools: { x86_64: { serverTypes: ['cx23'], compression: 'zstd', compressionLevel: 22 } } }, /"pools\.x86_64\.compressionLevel"/],
    [
      { pools: { x86_64: { serverTypes: ['cx23'], compressionLevel: 0 } } },
      /"pools\.x86_64\.compressionLevel": expected "auto" or an integer/,
    ],
    [{ pools: { x86_64: { serverTypes: ['cx23'], compressionLevel: 'fast' } } }, /"pools\.x86_64\.compressionLevel": expected "auto"/],
    [
      { pools: { x86_64: { serverTypes: ['cx23'], compressionLevelMin: 9, compressionLevelMax: 3 } } },
      /"pools\.x86_64\.compressionLevelMin": expected at most compressionLevelMax \(3\), got 9/,
    ],
    [{ ...minimal, listen: { port: 'x' } }, /"listen\.port": expected an integer/],
    [{ ...minimal, lsten: {} }, /"lsten" is not known/],
    [{ ...minimal, hcloud: { tokenFile: 'a', tokenCommand: 'b' } }, /one of them, not both/],
    [{ ...minimal, hcloud: { endpoint: 'ftp://x' } }, /"hcloud\.endpoint": expected an http/],
    [
      { ...minimal, hcloud: { endpoint: 'http://api.hetzner.cloud/v1' } },
      /"hcloud\.endpoint": expected an https URL \(plain http sends the API token in clear text/,
    ],
    [{ ...minimal, hcloud: { endpoint: 'http://192.168.1.5:8080/v1' } }, /"hcloud\.endpoint": expected an https URL/],
    [{ ...minimal, log: { level: 'loud' } }, /"log\.level": expected one of/],
    [{ ...minimal, instance: '-x-' }, /"instance"/],
  ];
  for (const [input, message] of cases) {
    t.throws(() => parseConfig(input, '/'), { name: 'ConfigError', message }, JSON.stringify(input));
  }
});

t.test('pools.<name>.store: the warm store', async (t) => {
  t.equal(parseConfig(minimal, '/').pools.x86_64?.store, undefined, 'no store unless asked for');
  const c = parseConfig(
    {
      pools: {
        x86_64: { serverTypes: ['ccx33'], store: { volumeGb: 200 } },
        arm: { serverTypes: ['cax11'], store: { volumeGb: 10, gcAtPercent: 95 } },
      },
    },
    '/',
  );
  t.same(c.pools.x86_64?.store, { volumeGb: 200, gcAtPercent: 80 });
  t.same(c.pools.arm?.store, { volumeGb: 10, gcAtPercent: 95 });
  const pool = (store: unknown) => ({ pools: { x86_64: { serverTypes: ['ccx33'], store } } });
  const cases: [unknown, RegExp][] = [
    [pool({}), /"pools\.x86_64\.store\.volumeGb": expected an integer from 10 to 10240 \(GB/],
    [pool({ volumeGb: 9 }), /"pools\.x86_64\.store\.volumeGb": expected an integer from 10 to 10240, got 9/],
    [pool({ volumeGb: 10241 }), /store\.volumeGb": expected an integer from 10 to 10240/],
    [pool({ volumeGb: 20.5 }), /store\.volumeGb": expected an integer/],
    [pool({ volumeGb: '200' }), /store\.volumeGb": expected an integer/],
    [pool({ volumeGb: 200, gcAtPercent: 100 }), /"pools\.x86_64\.store\.gcAtPercent": expected an integer from 1 to 99/],
    [pool({ volumeGb: 200, gcAtPercent: 0 }), /store\.gcAtPercent": expected an integer from 1 to 99/],
    [pool({ volumeGb: 200, size: 1 }), /"pools\.x86_64\.store\.size" is not known/],
    [pool(200), /"pools\.x86_64\.store": expected an object/],
  ];
  for (const [input, message] of cases) {
    t.throws(() => parseConfig(input, '/'), { name: 'ConfigError', message }, JSON.stringify(input));
  }
});

t.test('loadConfig reports unreadable and invalid files', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-config-'));
  t.throws(() => loadConfig(join(dir, 'missing.json')), new ConfigError(`cannot read config file ${join(dir, 'missing.json')}: ENOENT`));
  writeFileSync(join(dir, 'bad.json'), '{ pools: ');
  t.throws(() => loadConfig(join(dir, 'bad.json')), { message: /is not valid JSON/ });
  writeFileSync(join(dir, 'ok.json'), JSON.stringify(minimal));
  t.equal(loadConfig(join(dir, 'ok.json')).pools.x86_64?.name, 'x86_64');
});

t.test('parseDuration', async (t) => {
  t.equal(parseDuration(90), 90_000);
  t.equal(parseDuration('90'), 90_000);
  t.equal(parseDuration('90s'), 90_000);
  t.equal(parseDuration('10m'), 600_000);
  t.equal(parseDuration('1h30m'), 5_400_000);
  t.equal(parseDuration('250ms'), 250);
  for (const bad of ['', '10 minutes', '5x', '-3', -1, null, {}]) t.throws(() => parseDuration(bad), JSON.stringify(bad));
});

t.test('pools.<name>.nix: the pinned release by default; another one only with its hashes', async (t) => {
  const pool = (nix: unknown, systems?: string[]) =>
    parseConfig({ pools: { p: { serverTypes: ['cx23'], ...(systems ? { systems } : {}), nix } } }, '/').pools.p?.nix;
  const pinned = parseConfig(minimal, '/').pools.x86_64?.nix;
  t.equal(pinned?.version, '2.31.2');
  t.equal(pinned?.url, 'https://releases.nixos.org/nix/nix-{version}/nix-{version}-{system}.tar.xz');
  t.same(Object.keys(pinned?.sha256 ?? {}), ['x86_64-linux', 'aarch64-linux'], 'both architectures: a pool can be arm');
  t.same(pool({ version: '2.31.2' }), pinned, 'the pinned version named: its hashes');
  const hash = 'ab'.repeat(32);
  t.same(pool({ version: '2.33.1', sha256: { 'x86_64-linux': hash } }), {
    version: '2.33.1',
    url: pinned?.url,
    sha256: { 'x86_64-linux': hash },
  });
  t.same(
    pool({ version: '2.33.1', url: 'http://mirror.example/nix-{version}-{system}.tar.xz', sha256: { 'aarch64-linux': hash } }, [
      'aarch64-linux',
    ])?.url,
    'http://mirror.example/nix-{version}-{system}.tar.xz',
  );
  const bad: [unknown, RegExp, string[]?][] = [
    [{ version: '2.33.1' }, /"pools\.p\.nix\.sha256": expected the sha256 of Nix 2\.33\.1's x86_64-linux tarball/],
    [
      { version: '2.33.1', sha256: { 'x86_64-linux': hash } },
      /the sha256 of Nix 2\.33\.1's aarch64-linux tarball \(the pool builds aarch64-linux\)/,
      ['aarch64-linux'],
    ],
    [
      { version: '2.33.1', sha256: { 'x86_64-linux': 'AB'.repeat(32) } },
      /"pools\.p\.nix\.sha256\.x86_64-linux": expected the tarball's sha256 as 64 lowercase hex digits/,
    ],
    [{ version: '2.33.1', sha256: { x86_64: hash } }, /"pools\.p\.nix\.sha256\.x86_64" is not known/],
    [{ version: '2; rm -rf /' }, /"pools\.p\.nix\.version": expected a Nix release version/],
    [{ url: 'https://x/$(reboot)' }, /"pools\.p\.nix\.url": expected an http\(s\) URL/],
    [{ url: 'ftp://x/nix.tar.xz' }, /"pools\.p\.nix\.url"/],
    [{ versoin: '2.33.1' }, /"pools\.p\.nix\.versoin" is not known/],
  ];
  for (const [nix, message, systems] of bad) t.throws(() => pool(nix, systems), { name: 'ConfigError', message }, JSON.stringify(nix));
});

t.test('instance: unset, it is the host name plus a suffix kept in the state folder; a state from before keeps its own', async (t) => {
  const { hostPart, newDefaultInstance } = await import('../../src/core/instance.js');
  const dir = mkdtempSync(join(tmpdir(), 'nhb-instance-'));
  const fresh = parseConfig({ ...minimal, stateDir: dir }, '/');
  t.equal(fresh.instanceOrigin, 'new', 'nothing kept yet: made now, kept by the daemon at start');
  t.match(fresh.instance, /^[a-z0-9_.-]+-[a-z0-9]{6}$/);
  t.not(parseConfig({ ...minimal, stateDir: dir }, '/').instance, fresh.instance, 'two state folders get two instances');
  writeFileSync(join(dir, 'instance'), 'nixos-k3x9q2\n');
  t.match(
    parseConfig({ ...minimal, stateDir: dir }, '/'),
    { instance: 'nixos-k3x9q2', instanceOrigin: 'state folder' },
    'stable once kept',
  );
  t.match(
    parseConfig({ ...minimal, stateDir: dir, instance: 'mine' }, '/'),
    { instance: 'mine', instanceOrigin: 'config' },
    'an explicit instance stays as it is',
  );

  const legacy = mkdtempSync(join(tmpdir(), 'nhb-instance-'));
  writeFileSync(join(legacy, 'state.json'), JSON.stringify({ version: 1, instance: 'nixos', workers: [] }));
  t.match(
    parseConfig({ ...minimal, stateDir: legacy }, '/'),
    { instance: 'nixos', instanceOrigin: 'state folder' },
    "a state folder from before the suffix keeps its servers' instance",
  );

  const long = newDefaultInstance(`${'a'.repeat(70)}.example.org`);
  t.ok(long.length <= 63, `label value length ${long.length}`);
  t.match(long, /^a+-[a-z0-9]{6}$/);
  t.equal(hostPart('--NixOS--'), 'nixos', 'alphanumeric ends');
  t.equal(hostPart('---'), 'default');
});

t.test('deleteRetry: waits from the config; the max no shorter than the first', async (t) => {
  t.same(parseConfig(minimal, '/').deleteRetry, { firstWaitMs: 10_000, maxWaitMs: 300_000 });
  t.same(parseConfig({ ...minimal, deleteRetry: { firstWait: '200ms', maxWait: '1s' } }, '/').deleteRetry, {
    firstWaitMs: 200,
    maxWaitMs: 1000,
  });
  t.throws(
    () => parseConfig({ ...minimal, deleteRetry: { firstWait: '1m', maxWait: '10s' } }, '/'),
    /"deleteRetry\.maxWait": expected a duration no shorter than deleteRetry\.firstWait/,
  );
  t.throws(() => parseConfig({ ...minimal, deleteRetry: { first: '1m' } }, '/'), /"deleteRetry\.first" is not known/);
});
