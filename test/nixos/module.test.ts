/**
 * The Nix side, as far as it runs without nixpkgs:
 *   - every .nix file parses (`nix-instantiate --parse`);
 *   - nixos/lib.nix (builtins only) computes the same JSON config, machines lines and ssh alias as
 *     `setup` does for the same settings (`nix-instantiate --eval --strict --json`);
 *   - the worker's scripts pass shellcheck, and fetch-keys.sh and ready-marker.sh run for real
 *     against a fake metadata service on 127.0.0.1 and a folder standing for /.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { READY_MARKER } from '../../src/core/config.js';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { runSetup } from '../../src/setup/setup.js';
import { loadConfig } from '../../src/core/config.js';
import { workerUserData } from '../../src/daemon/user-data.js';
import { attachVolumeLines, checkStoreLines, STORE_MARKER, STORE_SETTINGS_FILE } from '../../src/daemon/store-script.js';
import { ROOT, run } from '../rig/rig.js';

const SCRIPTS = join(ROOT, 'nixos', 'scripts');

function nixFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    if (['node_modules', '.git', 'dist', '.tap'].includes(name)) continue;
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...nixFiles(path));
    else if (name.endsWith('.nix')) out.push(path);
  }
  return out;
}

t.test('every .nix file parses', async (t) => {
  const files = nixFiles(ROOT)
    .map((f) => relative(ROOT, f))
    .sort();
  for (const expected of ['flake.nix', 'package.nix', 'nixos/lib.nix', 'nixos/module.nix', 'nixos/worker.nix', 'test/fixtures/build.nix']) {
    t.ok(files.includes(expected), `${expected} is checked`);
  }
  for (const file of files) {
    const r = spawnSync('nix-instantiate', ['--parse', join(ROOT, file)], { encoding: 'utf8' });
    t.equal(r.status, 0, `${file} parses`, { stderr: r.stderr });
  }
});

interface Case {
  name: string;
  settings: Record<string, unknown>;
  pools?: Record<string, unknown>;
  tokenFile?: string;
  alias?: string;
  clientKey?: string;
  /** The Nix that runs the builds (lib.nix's nixVersion/nixFlavour; setup's version line); none: lib.nix's default, the alias. */
  nix?: { version: string; flavour: 'nix' | 'lix'; line: string };
  /** lib.nix's portStyle, which is setup's port style. */
  style?: 'alias' | 'authority' | 'query';
}

const HOST_KEY = generateKeyPair('nix-hcloud-builder').publicKey;

const CASES: Case[] = [
  { name: 'defaults', settings: {}, pools: { x86_64: { serverTypes: ['ccx33'] } } },
  {
    name: 'everything set',
    settings: { listen: { host: '0.0.0.0', port: 2400 }, log: { level: 'debug' }, instance: 'ci' },
    pools: {
      x86_64: { serverTypes: ['ccx33', 'ccx43'], maxWorkers: 3, jobsPerWorker: 16, idleTimeout: '15m', speedFactor: 2.5 },
      arm: {
        serverTypes: ['cax41'],
        systems: ['aarch64-linux'],
        supportedFeatures: [],
        mandatoryFeatures: ['big-parallel'],
        image: { labelSelector: 'nhb=worker' },
      },
    },
    tokenFile: '/run/secrets/hcloud-token',
    alias: 'nhb',
    clientKey: '/var/lib/nhb/client_ed25519',
  },
  {
    name: 'pools from settings and from pools, IPv6 wildcard',
    settings: {
      listen: { host: '::', port: 22 },
      hcloud: { endpoint: 'http://127.0.0.1:9/v1' },
      pools: { a: { serverTypes: ['cx23'], speedFactor: 3 } },
    },
    pools: { b: { serverTypes: ['cx33'], systems: ['x86_64-linux', 'i686-linux'] } },
  },
  {
    name: 'Nix 2.31: the port in the URI',
    settings: { listen: { host: '0.0.0.0', port: 2400 } },
    pools: { x86_64: { serverTypes: ['ccx33'] } },
    nix: { version: '2.31.0', flavour: 'nix', line: 'nix (Nix) 2.31.0' },
    style: 'authority',
  },
  {
    name: 'Lix 2.93: ?port=',
    settings: {},
    pools: { x86_64: { serverTypes: ['ccx33'] } },
    alias: 'nhb',
    nix: { version: '2.93.0', flavour: 'lix', line: 'nix (Lix, like Nix) 2.93.0' },
    style: 'query',
  },
  {
    name: 'Nix 2.30: the alias',
    settings: {},
    pools: { x86_64: { serverTypes: ['ccx33'] } },
    nix: { version: '2.30.2', flavour: 'nix', line: 'nix (Nix) 2.30.2' },
    style: 'alias',
  },
  {
    name: 'Nix 2.34 on an IPv6 address: the alias',
    settings: { listen: { host: '::', port: 2400 } },
    pools: { x86_64: { serverTypes: ['ccx33'] } },
    nix: { version: '2.34.8', flavour: 'nix', line: 'nix (Nix) 2.34.8' },
    style: 'alias',
  },
];

function evalNix(expr: string, args: Record<string, string>): unknown {
  const argv = ['--eval', '--strict', '--json', '-E', expr];
  for (const [k, v] of Object.entries(args)) argv.push('--argstr', k, v);
  const r = spawnSync('nix-instantiate', argv, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`nix-instantiate failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const LIB_EXPR = `{ caseJson, hostPublicKey, stateDir }:
  let
    nhb = import ${join(ROOT, 'nixos', 'lib.nix')};
    c = builtins.fromJSON caseJson;
    client = (if c ? alias then { inherit (c) alias; } else { }) // (if c ? clientKey then { inherit (c) clientKey; } else { });
    nix = if c ? nix then { nixVersion = c.nix.version; nixFlavour = c.nix.flavour; } else { };
    config = nhb.mkConfig ({ settings = c.settings // { inherit stateDir; }; pools = c.pools or { }; } // (if c ? tokenFile then { inherit (c) tokenFile; } else { }));
  in {
    inherit config;
    style = nhb.portStyle (nix // { inherit config; });
    machines = nhb.machinesLines (client // nix // { inherit config hostPublicKey; });
    ssh = nhb.sshHostBlock (client // { inherit config; });
    buildMachines = nhb.buildMachines (client // { inherit config hostPublicKey; });
  }`;

for (const c of CASES) {
  t.test(`nixos/lib.nix computes what setup writes: ${c.name}`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'nhb-nixlib-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const stateDir = join(dir, 'state');
    mkdirSync(stateDir);
    writeFileSync(join(stateDir, 'ssh_host_ed25519_key.pub'), `${HOST_KEY}\n`);
    const nix = evalNix(LIB_EXPR, { caseJson: JSON.stringify(c), hostPublicKey: `${HOST_KEY}\n`, stateDir }) as {
      config: Record<string, unknown>;
      style: string;
      machines: string[];
      ssh: string[];
      buildMachines: Record<string, unknown>[];
    };

    // The JSON config from Nix is one the daemon accepts...
    const configFile = join(dir, 'config.json');
    writeFileSync(configFile, JSON.stringify(nix.config));
    const config = loadConfig(configFile);
    if (c.tokenFile) t.equal(config.hcloud.tokenFile, c.tokenFile);
    const poolNames = Object.keys({ ...(c.settings.pools as object | undefined), ...c.pools }).sort();
    t.same(Object.keys(config.pools), poolNames, 'every pool, from settings and from pools');

    // ...and setup, given it, writes what Nix computed.
    const result = runSetup(
      {
        config,
        configFile,
        sshConfig: join(dir, 'ssh_config'),
        machines: join(dir, 'machines'),
        nixConf: join(dir, 'nix.conf'),
        clientKey: c.clientKey,
        alias: c.alias,
        nix: { text: c.nix?.line ?? 'nix-daemon (Nix) 2.8.0', source: 'test' },
      },
      false,
    );
    t.equal(nix.style, c.style ?? 'alias', 'without nixVersion: the alias');
    t.equal(nix.style, result.plan.portChoice.style, `setup chose the same: ${result.plan.portChoice.reason}`);
    t.same(nix.machines, result.plan.machinesLines, 'machines lines');
    if (nix.style === 'alias') t.same(nix.ssh, result.plan.sshBlock, 'ssh alias block');
    else t.same(result.plan.sshBlock, [], 'setup writes no alias block, which lib.nix leaves to its caller');
    for (const line of nix.machines) t.match(result.output, `+${line}\n`, 'setup prints the line');
    if (!c.clientKey) return;
    t.same(
      nix.buildMachines[0],
      {
        hostName: c.alias,
        protocol: 'ssh-ng',
        sshUser: 'arm',
        sshKey: c.clientKey,
        systems: ['aarch64-linux'],
        maxJobs: 8,
        speedFactor: 1,
        supportedFeatures: [],
        mandatoryFeatures: ['big-parallel'],
        publicHostKey: Buffer.from(HOST_KEY).toString('base64'),
      },
      'nix.buildMachines entry',
    );
  });
}

t.test('nixos/lib.nix refuses what setup refuses', async (t) => {
  const refuse = (caseJson: Case, pattern: RegExp): void => {
    t.throws(() => evalNix(LIB_EXPR, { caseJson: JSON.stringify(caseJson), hostPublicKey: HOST_KEY, stateDir: '/x' }), {
      message: pattern,
    });
  };
  refuse({ name: 'port 0', settings: { listen: { port: 0 } }, pools: { a: { serverTypes: ['cx23'] } } }, /listen\.port.*fixed port/);
  refuse({ name: 'localhost', settings: {}, pools: { a: { serverTypes: ['cx23'] } }, alias: 'localhost' }, /not "localhost"/);
  refuse({ name: 'relative key', settings: {}, pools: { a: { serverTypes: ['cx23'] } }, clientKey: 'key' }, /absolute path/);
});

interface StubEval {
  module: {
    options: string[];
    nix: { distributedBuilds: boolean; buildMachines: Record<string, unknown>[] };
    ssh: string;
    serviceConfig: Record<string, unknown>;
    failedAssertions: string[];
    configJson: string;
    prepare: string;
  };
  worker: {
    fileSystems: Record<string, { device: string; fsType: string }>;
    nix: { settings: Record<string, unknown> };
    openssh: { settings: Record<string, unknown> };
    services: Record<
      string,
      {
        ExecStart: string;
        Type: string;
        before?: string[];
        after?: string[];
        requires?: string[];
        requiredBy?: string[];
        wants?: string[];
        wantedBy?: string[];
      }
    >;
    kernelModules: string[];
    scriptTexts: string[];
    rawImageIsLazy: boolean;
    packages: { name: string; text: string }[];
  };
}

/** nix.package as the module sees it, and the module's machinesStyle option. */
interface NixTarget {
  nix?: { pname: string; version: string };
  machinesStyle?: 'auto' | 'alias' | 'port';
}

function evalStubs(hostPublicKey?: string, extraSettings?: Record<string, unknown>, target: NixTarget = {}): StubEval {
  // --read-write-mode: the modules write their generated files (config JSON, a script) with
  // builtins.toFile, and the test reads them back.
  const argv = [
    '--read-write-mode',
    '--eval',
    '--strict',
    '--json',
    join(ROOT, 'test', 'fixtures', 'nixos-stubs.nix'),
    '--arg',
    'root',
    ROOT,
  ];
  if (hostPublicKey) argv.push('--argstr', 'hostPublicKey', hostPublicKey);
  if (extraSettings) argv.push('--argstr', 'extraSettingsJson', JSON.stringify(extraSettings));
  if (target.nix) argv.push('--argstr', 'nixPackageJson', JSON.stringify(target.nix));
  if (target.machinesStyle) argv.push('--argstr', 'machinesStyle', target.machinesStyle);
  const r = spawnSync('nix-instantiate', argv, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`nix-instantiate failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as StubEval;
}

t.test('nixos/module.nix, evaluated with stand-ins for lib and pkgs', async (t) => {
  const { module } = evalStubs();
  t.same(module.options, [
    'clientKeyFile',
    'enable',
    'hostPublicKey',
    'machinesStyle',
    'package',
    'pools',
    'settings',
    'sshAlias',
    'tokenFile',
  ]);
  t.equal(module.nix.distributedBuilds, true);

  // The JSON config it renders is one the daemon accepts, with the module's paths.
  const dir = mkdtempSync(join(tmpdir(), 'nhb-module-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'config.json'), module.configJson);
  const config = loadConfig(join(dir, 'config.json'));
  t.equal(config.stateDir, '/var/lib/nix-hcloud-builder');
  t.equal(config.authorizedKeysFile, '/var/lib/nix-hcloud-builder/authorized_keys');
  t.equal(config.hcloud.tokenFile, '/run/credentials/nix-hcloud-builder.service/hcloud-token', 'the token comes as a systemd credential');
  t.same(module.serviceConfig.LoadCredential, ['hcloud-token:/run/secrets/hcloud-token']);
  t.equal(config.listen.port, 2400);
  t.equal(config.pools.x86_64?.maxWorkers, 2);

  t.match(
    module.serviceConfig.ExecStart,
    /^\/stub\/nix-hcloud-builder\/bin\/nix-hcloud-builder serve --config \/nix\/store\/\w+-nix-hcloud-builder\.json$/,
  );
  t.equal(module.serviceConfig.User, 'nix-hcloud-builder');
  t.equal(module.serviceConfig.Restart, 'on-failure');
  t.equal(module.serviceConfig.TimeoutStopSec, '3min');
  t.same(module.failedAssertions, [], 'a pool and a token: no assertion fails');
  t.equal(module.serviceConfig.CapabilityBoundingSet, '', 'no capabilities');
  t.same(module.serviceConfig.SystemCallFilter, ['@system-service', '~@privileged']);
  t.match(module.serviceConfig, {
    ProtectSystem: 'strict',
    ProtectProc: 'invisible',
    ProcSubset: 'pid',
    PrivateUsers: true,
    RemoveIPC: true,
    ProtectClock: true,
  });
  t.notOk('MemoryDenyWriteExecute' in module.serviceConfig, 'V8 needs writable and executable memory');

  // nix.buildMachines and the alias: what setup would write for the same config.
  const setup = runSetup(
    {
      config,
      configFile: join(dir, 'config.json'),
      sshConfig: join(dir, 'ssh'),
      machines: join(dir, 'machines'),
      nixConf: join(dir, 'nix.conf'),
    },
    false,
  );
  t.equal(
    module.ssh,
    `${setup.plan.sshBlock.join('\n')}\n  GlobalKnownHostsFile /var/lib/nix-hcloud-builder/known_hosts\n`,
    'without hostPublicKey: the alias reads the key the service made',
  );
  t.same(
    module.nix.buildMachines.map((m) => m.publicHostKey),
    [undefined],
    'and no host key in the machines',
  );
  t.match(module.prepare, /ssh-keygen -q -t ed25519 -N "" -C nix-hcloud-builder -f "\$key"/);
  const syntax = spawnSync('bash', ['-n'], { input: module.prepare, encoding: 'utf8' });
  t.equal(syntax.status, 0, `the prepare script is valid bash: ${syntax.stderr}`);

  const withKey = evalStubs(HOST_KEY).module;
  t.equal(withKey.ssh, `${setup.plan.sshBlock.join('\n')}\n`, 'with hostPublicKey: exactly the alias setup writes');
  t.equal(withKey.nix.buildMachines[0]?.publicHostKey, Buffer.from(HOST_KEY).toString('base64'));
  t.notMatch(withKey.prepare, /ssh_host_ed25519_key/, 'and the service makes no host key');
});

/** A nix.buildMachines entry as NixOS writes it to /etc/nix/machines (nix-remote-build.nix). */
function machinesFileLine(m: Record<string, unknown>): string {
  const list = (v: unknown): string => ((v as string[]).length === 0 ? '-' : (v as string[]).join(','));
  const features = [...(m.supportedFeatures as string[]), ...(m.mandatoryFeatures as string[])];
  return [
    `${String(m.protocol)}://${String(m.sshUser)}@${String(m.hostName)}`,
    list(m.systems),
    m.sshKey,
    m.maxJobs,
    m.speedFactor,
    list(features),
    list(m.mandatoryFeatures),
    m.publicHostKey ?? '-',
  ].join(' ');
}

interface VersionCase {
  name: string;
  nix: { pname: string; version: string };
  listenHost?: string;
  uri: string;
  alias: boolean;
}

/** What `nix-daemon --version` of that package prints (what setup reads). */
const versionLine = (nix: { pname: string; version: string }): string =>
  `nix-daemon (${nix.pname === 'lix' ? 'Lix, like Nix' : 'Nix'}) ${nix.version}`;

const VERSION_CASES: VersionCase[] = [
  {
    name: 'Nix 2.8',
    nix: { pname: 'nix', version: '2.8.0' },
    uri: 'ssh-ng://x86_64@hcloud-builder',
    alias: true,
  },
  {
    name: 'Nix 2.31',
    nix: { pname: 'nix', version: '2.31.0' },
    uri: 'ssh-ng://x86_64@127.0.0.1:2400',
    alias: false,
  },
  {
    name: 'Nix 2.34',
    nix: { pname: 'nix', version: '2.34.8' },
    uri: 'ssh-ng://x86_64@127.0.0.1:2400',
    alias: false,
  },
  {
    name: 'Nix 2.32 pre-release',
    nix: { pname: 'nix', version: '2.32.0pre20250901_abcdef0' },
    uri: 'ssh-ng://x86_64@127.0.0.1:2400',
    alias: false,
  },
  {
    name: 'Lix 2.93',
    nix: { pname: 'lix', version: '2.93.0' },
    uri: 'ssh-ng://x86_64@127.0.0.1?port=2400',
    alias: false,
  },
  {
    name: 'Lix 2.92',
    nix: { pname: 'lix', version: '2.92.3' },
    uri: 'ssh-ng://x86_64@hcloud-builder',
    alias: true,
  },
  {
    name: 'Nix 2.34 on an IPv6 listen address',
    nix: { pname: 'nix', version: '2.34.8' },
    listenHost: '::1',
    uri: 'ssh-ng://x86_64@hcloud-builder',
    alias: true,
  },
];

for (const c of VERSION_CASES) {
  t.test(`nixos/module.nix writes the machines lines setup writes for ${c.name}`, async (t) => {
    const listen = { host: c.listenHost ?? '127.0.0.1', port: 2400 };
    const { module } = evalStubs(HOST_KEY, { listen }, { nix: c.nix });
    const lines = module.nix.buildMachines.map(machinesFileLine);
    t.equal(lines[0]?.split(' ')[0], c.uri, 'the store URI');

    const dir = mkdtempSync(join(tmpdir(), 'nhb-module-version-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, 'config.json'), module.configJson);
    // setup reads the host key from the state directory: the one the module was given.
    writeFileSync(join(dir, 'ssh_host_ed25519_key.pub'), `${HOST_KEY}\n`);
    const config = { ...loadConfig(join(dir, 'config.json')), stateDir: dir };
    const setup = runSetup(
      {
        config,
        configFile: join(dir, 'config.json'),
        sshConfig: join(dir, 'ssh'),
        machines: join(dir, 'machines'),
        nixConf: join(dir, 'nix.conf'),
        nix: { text: versionLine(c.nix), source: 'test' },
      },
      false,
    );
    t.equal(setup.plan.portChoice.style === 'alias', c.alias, `setup: ${setup.plan.portChoice.reason}`);
    t.same(lines, setup.plan.machinesLines, 'the same lines as setup');
    t.equal(
      module.ssh,
      c.alias ? `${setup.plan.sshBlock.join('\n')}\n` : '',
      c.alias ? 'the alias block setup writes' : 'no ssh alias block',
    );
  });
}

t.test('nixos/module.nix: machinesStyle overrides the choice', async (t) => {
  const uriOf = (
    hostPublicKey: string | undefined,
    target: NixTarget,
    listenHost = '127.0.0.1',
  ): { uri: string | undefined; ssh: string; failed: string[] } => {
    const { module } = evalStubs(hostPublicKey, { listen: { host: listenHost, port: 2400 } }, target);
    return {
      uri: module.nix.buildMachines[0] && machinesFileLine(module.nix.buildMachines[0]).split(' ')[0],
      ssh: module.ssh,
      failed: module.failedAssertions,
    };
  };
  const nix234 = { pname: 'nix', version: '2.34.8' };
  const alias = uriOf(HOST_KEY, { nix: nix234, machinesStyle: 'alias' });
  t.equal(alias.uri, 'ssh-ng://x86_64@hcloud-builder', '"alias" on a Nix that takes the port');
  t.match(alias.ssh, /^Host hcloud-builder\n {2}HostName 127\.0\.0\.1\n {2}Port 2400\n/, 'with its Host block');
  t.same(
    uriOf(HOST_KEY, { nix: { pname: 'nix', version: '2.8.0' }, machinesStyle: 'port' }),
    { uri: 'ssh-ng://x86_64@127.0.0.1:2400', ssh: '', failed: [] },
    '"port" on a Nix named 2.8',
  );
  t.same(
    uriOf(HOST_KEY, { nix: { pname: 'lix', version: '2.92.0' }, machinesStyle: 'port' }).uri,
    'ssh-ng://x86_64@127.0.0.1?port=2400',
    '"port" on Lix: ?port=',
  );
  t.same(
    uriOf(HOST_KEY, { nix: { pname: 'determinate-nix', version: '3.8.0' } }).uri,
    'ssh-ng://x86_64@hcloud-builder',
    'auto: a package that is neither nix nor lix gets the alias',
  );

  // Without hostPublicKey ssh finds the service's key only through the alias block.
  const noKey = uriOf(undefined, { nix: nix234 });
  t.equal(noKey.uri, 'ssh-ng://x86_64@hcloud-builder', 'auto without hostPublicKey: the alias');
  t.match(noKey.ssh, /GlobalKnownHostsFile \/var\/lib\/nix-hcloud-builder\/known_hosts\n$/);
  t.match(
    uriOf(undefined, { nix: nix234, machinesStyle: 'port' }).failed,
    [/machinesStyle = "port" needs hostPublicKey/],
    '"port" without hostPublicKey is refused',
  );
  t.throws(() => evalStubs(HOST_KEY, { listen: { host: '::1', port: 2400 } }, { nix: nix234, machinesStyle: 'port' }), {
    message: /machinesStyle "port": the endpoint listens on ::1, an IPv6 address/,
  });
});

t.test('nixos/module.nix refuses settings it sets itself, and its own values win', async (t) => {
  const { module } = evalStubs(undefined, { stateDir: '/srv/nhb', hcloud: { tokenFile: '/etc/token' } });
  t.same(
    module.failedAssertions.map((m) => /settings\.([\w.]+) is set by this module/.exec(m)?.[1]),
    ['stateDir', 'hcloud.tokenFile'],
  );
  const config = JSON.parse(module.configJson) as { stateDir: string; hcloud: { tokenFile: string } };
  t.equal(config.stateDir, '/var/lib/nix-hcloud-builder', 'the state directory the sandbox allows');
  t.equal(config.hcloud.tokenFile, '/run/credentials/nix-hcloud-builder.service/hcloud-token');
});

t.test('nixos/worker.nix, evaluated with stand-ins for lib and pkgs', async (t) => {
  const { worker } = evalStubs();
  t.same(worker.fileSystems['/'], { device: 'rpool/root', fsType: 'zfs' }, 'root on ZFS');
  t.equal(worker.nix.settings['max-jobs'], 'auto', 'max-jobs = the number of cores');
  t.same(worker.nix.settings['trusted-users'], ['root']);
  t.ok(Number(worker.openssh.settings.MaxSessions) >= 64, 'MaxSessions raised');
  t.match(String(worker.openssh.settings.MaxStartups), /^\d+:\d+:\d+$/);
  const s = worker.services;
  t.ok(s['zpool-expand']?.before?.includes('sshd.service'), 'zpool-expand runs before sshd');
  t.ok(
    s['nix-hcloud-builder-keys']?.before?.includes('sshd.service') && s['nix-hcloud-builder-keys']?.requiredBy?.includes('sshd.service'),
    'sshd needs the keys from the user data',
  );
  t.same(
    s['nix-hcloud-builder-ready']?.requires,
    ['zpool-expand.service', 'nix-hcloud-builder-keys.service'],
    'no marker unless the disk grew and the keys came',
  );
  t.ok(s['nix-hcloud-builder-ready']?.after?.includes('sshd.service'));
  const store = s['nix-hcloud-builder-store'];
  t.ok(
    store?.after?.includes('nix-hcloud-builder-keys.service'),
    "the store unit runs after the keys unit, which leaves it the volume's settings",
  );
  t.ok(store?.after?.includes('local-fs.target'));
  t.same(store?.before, ['nix-hcloud-builder-ready.service'], 'and before the ready marker');
  t.same(store?.wantedBy, ['multi-user.target']);
  t.same(worker.kernelModules, ['overlay'], 'the overlay module is loaded at boot');
  t.ok(s['nix-hcloud-builder-ready']?.after?.includes('nix-hcloud-builder-store.service'), 'the ready unit waits for it');
  t.same(
    s['nix-hcloud-builder-ready']?.wants,
    ['nix-hcloud-builder-store.service'],
    "but only wants it: a worker whose volume fails builds on the image's store",
  );
  for (const name of Object.keys(s)) t.equal(s[name]?.Type, 'oneshot', `${name} is a oneshot`);
  t.same(
    worker.scriptTexts,
    ['fetch-keys.sh', 'zpool-expand.sh', 'ready-marker.sh', 'store-volume.sh'].map((f) => readFileSync(join(SCRIPTS, f), 'utf8')),
    'the image runs the scripts the tests run',
  );
  t.ok(worker.rawImageIsLazy, 'system.build.rawImage is defined (built only with nixpkgs)');
  const relay = worker.packages.find((p) => p.name === 'nix-hcloud-builder-zstd-relay');
  t.ok(relay, 'the zstd relay is on the system PATH');
  const source = /python3 -I -S (\S+) "\$@"/.exec(relay?.text ?? '')?.[1];
  t.equal(
    source && readFileSync(source, 'utf8'),
    readFileSync(join(ROOT, 'worker', 'zstd-relay.py'), 'utf8'),
    'it runs worker/zstd-relay.py, the file the cloud-config writes, with the options of its #! line (-I -S)',
  );
  t.match(relay?.text ?? '', /NIX_HCLOUD_BUILDER_LIBZSTD=\/stub\/zstd\/lib\/libzstd\.so\.1/, 'with libzstd named');
});

t.test('the worker scripts pass shellcheck', async (t) => {
  const scripts = readdirSync(SCRIPTS).filter((f) => f.endsWith('.sh'));
  t.same(scripts.sort(), ['fetch-keys.sh', 'ready-marker.sh', 'store-volume.sh', 'zpool-expand.sh']);
  const r = spawnSync('shellcheck', ['--shell=bash', ...scripts.map((s) => join(SCRIPTS, s))], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stdout + r.stderr);
});

t.test('store-volume.sh runs the lines stock images run to attach and check the volume', async (t) => {
  const text = readFileSync(join(SCRIPTS, 'store-volume.sh'), 'utf8');
  // Each as a function whose body is a subshell with `set +e`: the lines expect no errexit, and
  // their `exit` ends only the function.
  const fn = (name: string, lines: string[]): string => `${name}() (\n  set +e\n${lines.map((l) => `  ${l}`).join('\n')}\n)\n`;
  t.ok(
    text.includes(fn('attach_volume', attachVolumeLines())),
    `attach_volume is attachVolumeLines() of src/daemon/store-script.ts; paste:\n${fn('attach_volume', attachVolumeLines())}`,
  );
  t.ok(
    text.includes(fn('check_store', checkStoreLines())),
    `check_store is checkStoreLines(); paste:\n${fn('check_store', checkStoreLines())}`,
  );
  t.match(text, `\nsettings=\${NHB_STORE_SETTINGS:-${STORE_SETTINGS_FILE}}\n`, 'it reads the settings file fetch-keys.sh writes');
  t.match(text, `\nmarker=${STORE_MARKER}\n`, 'and writes the marker the daemon checks');
  t.match(readFileSync(join(SCRIPTS, 'fetch-keys.sh'), 'utf8'), `\nsettings_path=${STORE_SETTINGS_FILE}\n`);
});

function serve(handler: (n: number) => { status: number; body: string }): Promise<{ server: Server; url: string; requests: () => number }> {
  let n = 0;
  const server = createServer((req, res) => {
    const answer = req.url === '/hetzner/v1/userdata' ? handler(++n) : { status: 404, body: 'not found' };
    res.writeHead(answer.status, { 'content-type': 'text/plain' }).end(answer.body);
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      resolve({ server, url: `http://127.0.0.1:${port}/hetzner/v1/userdata`, requests: () => n });
    }),
  );
}

t.test('fetch-keys.sh takes the host key and authorized key from the user data', async (t) => {
  const hostKey = generateKeyPair('worker-host');
  const login = generateKeyPair('nix-hcloud-builder-login');
  const userData = workerUserData({ hostKey, loginPublicKey: login.publicKey });
  // The metadata service answers only on the second try, as when the network comes up late.
  const meta = await serve((n) => (n === 1 ? { status: 503, body: 'later' } : { status: 200, body: userData }));
  t.teardown(() => meta.server.close());
  const root = mkdtempSync(join(tmpdir(), 'nhb-worker-root-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));

  const r = await run('bash', [join(SCRIPTS, 'fetch-keys.sh')], {
    env: { ...process.env, NHB_METADATA_URL: meta.url, NHB_ROOT: root, NHB_FETCH_ATTEMPTS: '5' },
  });
  t.equal(r.code, 0, r.stderr);
  t.equal(meta.requests(), 2, 'it tried again after the failure');
  t.match(r.stdout, /1 authorized key\(s\) for root/);
  const key = join(root, 'etc/ssh/ssh_host_ed25519_key');
  t.equal(readFileSync(key, 'utf8'), hostKey.privateKey, 'the host key, byte for byte');
  t.equal(statSync(key).mode & 0o777, 0o600);
  t.equal(readFileSync(`${key}.pub`, 'utf8'), `${hostKey.publicKey}\n`);
  t.equal(statSync(`${key}.pub`).mode & 0o777, 0o644);
  t.equal(readFileSync(join(root, 'root/.ssh/authorized_keys'), 'utf8'), `${login.publicKey}\n`);
  t.equal(statSync(join(root, 'root/.ssh/authorized_keys')).mode & 0o777, 0o600);
  t.equal(statSync(join(root, 'root/.ssh')).mode & 0o777, 0o700);
  // sshd will read it: ssh-keygen derives the same public key from the private one.
  const derived = spawnSync('ssh-keygen', ['-y', '-f', key], { encoding: 'utf8' });
  t.equal(derived.stdout.split(' ').slice(0, 2).join(' '), hostKey.publicKey.split(' ').slice(0, 2).join(' '));
});

t.test("fetch-keys.sh leaves the store volume's settings for store-volume.sh when the user data has them", async (t) => {
  const hostKey = generateKeyPair('worker-host');
  const login = generateKeyPair('nix-hcloud-builder-login');
  const root = mkdtempSync(join(tmpdir(), 'nhb-worker-root-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const settings = join(root, STORE_SETTINGS_FILE);
  for (const store of [{ volumeId: 4711, gcAtPercent: 85 }, undefined]) {
    const meta = await serve(() => ({
      status: 200,
      body: workerUserData({ hostKey, loginPublicKey: login.publicKey, ...(store ? { store } : {}) }),
    }));
    const r = await run('bash', [join(SCRIPTS, 'fetch-keys.sh')], {
      env: { ...process.env, NHB_METADATA_URL: meta.url, NHB_ROOT: root, NHB_FETCH_ATTEMPTS: '2' },
    });
    meta.server.close();
    t.equal(r.code, 0, r.stderr);
    if (store) {
      t.same(JSON.parse(readFileSync(settings, 'utf8')), store, 'the settings, as the daemon gave them');
      t.equal(statSync(settings).mode & 0o777, 0o644);
      t.match(r.stdout, 'store volume settings {"volumeId":4711,"gcAtPercent":85}');
    } else {
      t.notOk(existsSync(settings), 'no store: no settings file (and an old one is gone)');
    }
  }
  const bad = workerUserData({ hostKey, loginPublicKey: login.publicKey, store: { volumeId: 1, gcAtPercent: 80 } }).replace(
    '\\"volumeId\\":1',
    '\\"volume\\":1',
  );
  const meta = await serve(() => ({ status: 200, body: bad }));
  t.teardown(() => meta.server.close());
  const r = await run('bash', [join(SCRIPTS, 'fetch-keys.sh')], {
    env: { ...process.env, NHB_METADATA_URL: meta.url, NHB_ROOT: join(root, 'bad'), NHB_FETCH_ATTEMPTS: '2' },
  });
  t.not(r.code, 0, 'malformed settings fail the unit');
  t.match(r.stderr, /store volume settings in the user data are not/);
});

t.test('fetch-keys.sh fails clearly and writes nothing on bad user data or no service', async (t) => {
  const meta = await serve(() => ({ status: 200, body: '#cloud-config\n{"users": []}\n' }));
  t.teardown(() => meta.server.close());
  const root = mkdtempSync(join(tmpdir(), 'nhb-worker-root-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const env = { ...process.env, NHB_METADATA_URL: meta.url, NHB_ROOT: root, NHB_FETCH_ATTEMPTS: '2' };
  const bad = await run('bash', [join(SCRIPTS, 'fetch-keys.sh')], { env });
  t.not(bad.code, 0);
  t.match(bad.stderr, /no ssh_keys\.ed25519_private/);
  t.notOk(existsSync(join(root, 'etc')), 'nothing written');

  const gone = await run('bash', [join(SCRIPTS, 'fetch-keys.sh')], {
    env: { ...env, NHB_METADATA_URL: `${meta.url.replace('/hetzner', '/nothing')}` },
  });
  t.not(gone.code, 0);
  t.match(gone.stderr, /no user data from .* after 2 attempts/);
});

t.test('ready-marker.sh writes the marker the default readyCommand waits for', async (t) => {
  t.match(readFileSync(join(SCRIPTS, 'ready-marker.sh'), 'utf8'), `\nmarker=${READY_MARKER}\n`, 'the same path as READY_MARKER');
  const root = mkdtempSync(join(tmpdir(), 'nhb-worker-root-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const r = await run('bash', [join(SCRIPTS, 'ready-marker.sh')], { env: { ...process.env, NHB_ROOT: root } });
  t.equal(r.code, 0, r.stderr);
  t.ok(existsSync(join(root, READY_MARKER)), 'marker written (after nix-store answered)');
  const noNix = await run('/bin/bash', [join(SCRIPTS, 'ready-marker.sh')], {
    env: { PATH: '/nonexistent', NHB_ROOT: join(root, 'second') },
  });
  t.not(noNix.code, 0, 'no marker while Nix does not answer');
  t.notOk(existsSync(join(root, 'second', READY_MARKER)));
});
