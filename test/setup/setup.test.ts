import t, { type Test } from 'tap';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { loadConfig } from '../../src/core/config.js';
import { runSetup, type SetupOptions } from '../../src/setup/setup.js';
import { BEGIN_MARK, END_MARK, unifiedDiff, upsertMarkedBlock } from '../../src/setup/text.js';

const DEBIAN_SSH_CONFIG = [
  'Include /etc/ssh/ssh_config.d/*.conf',
  '',
  'Host *',
  '#   ForwardAgent no',
  '    SendEnv LANG LC_*',
  '    HashKnownHosts yes',
  '',
].join('\n');

function scene(
  t: Test,
  config: Record<string, unknown> = {},
): { dir: string; options: () => SetupOptions; files: () => Record<string, string> } {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-setup-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const configFile = join(dir, 'config.json');
  writeFileSync(
    configFile,
    JSON.stringify({
      stateDir: 'state',
      authorizedKeysFile: 'authorized_keys',
      listen: { port: 2222 },
      pools: { x86_64: { serverTypes: ['cx23'] } },
      ...config,
    }),
  );
  writeFileSync(join(dir, 'ssh_config'), DEBIAN_SSH_CONFIG);
  writeFileSync(join(dir, 'nix.conf'), 'sandbox = false\n');
  const options = (): SetupOptions => ({
    config: loadConfig(configFile),
    configFile,
    sshConfig: join(dir, 'ssh_config'),
    machines: join(dir, 'machines'),
    nixConf: join(dir, 'nix.conf'),
    clientKey: join(dir, 'root-ssh', 'nix-hcloud-builder'),
    // A Nix that needs the alias, whatever Nix this machine has.
    nix: { text: 'nix-daemon (Nix) 2.8.0', source: 'test' },
  });
  // Every file below dir, by relative path, with its content and mode.
  const files = (): Record<string, string> => {
    const out: Record<string, string> = {};
    const walk = (rel: string): void => {
      for (const name of readdirSync(join(dir, rel))) {
        const path = join(dir, rel, name);
        const st = statSync(path);
        if (st.isDirectory()) walk(join(rel, name));
        else out[join(rel, name)] = `${(st.mode & 0o777).toString(8)} ${readFileSync(path, 'utf8')}`;
      }
    };
    walk('');
    return out;
  };
  return { dir, options, files };
}

t.test('a dry run shows every change and writes nothing', async (t) => {
  const { dir, options, files } = scene(t);
  const before = files();
  const result = runSetup(options(), false);
  t.same(files(), before, 'no file was created or changed');
  t.notOk(existsSync(join(dir, 'root-ssh')), 'not even the key folder');
  t.equal(result.exitCode, 0);
  t.match(result.output, /create directory .*root-ssh \(mode 0700\)/);
  t.match(
    result.output,
    /create .*root-ssh\/nix-hcloud-builder: client key for nix-daemon \(ed25519\) \(mode 0600\)\n {2}\(private key: not shown\)/,
  );
  t.match(result.output, /update .*ssh_config: ssh alias "hcloud-builder"\n/);
  t.match(result.output, /\+Host hcloud-builder\n/);
  t.match(result.output, /\+ssh-ng:\/\/x86_64@hcloud-builder x86_64-linux /);
  t.notMatch(result.output, /BEGIN OPENSSH PRIVATE KEY/, 'private keys are never printed');
  t.match(result.output, /hint: builders-use-substitutes is off/);
  t.match(result.output, /change\(s\) to make: nothing written \(dry run\); run again with --write/);
});

t.test('--write makes the changes with the right modes, and a second run changes nothing', async (t) => {
  const { dir, options, files } = scene(t);
  const first = runSetup(options(), true);
  t.equal(first.exitCode, 0, first.output);
  t.match(first.output, /made \d+ change\(s\)/);

  const key = join(dir, 'root-ssh', 'nix-hcloud-builder');
  t.equal(statSync(key).mode & 0o777, 0o600, 'client key 0600');
  t.equal(statSync(join(dir, 'root-ssh')).mode & 0o777, 0o700, 'its folder 0700');
  t.equal(statSync(join(dir, 'state')).mode & 0o777, 0o700, 'state folder 0700');
  t.equal(statSync(join(dir, 'state', 'ssh_host_ed25519_key')).mode & 0o777, 0o600, 'host key 0600');
  t.equal(statSync(join(dir, 'machines')).mode & 0o777, 0o644, 'machines file 0644');

  // The key is a real OpenSSH key: ssh-keygen derives the same public key from it.
  const derived = spawnSync('ssh-keygen', ['-y', '-f', key], { encoding: 'utf8' });
  t.equal(derived.status, 0, derived.stderr);
  const pub = readFileSync(`${key}.pub`, 'utf8').trim();
  t.equal(derived.stdout.split(' ').slice(0, 2).join(' '), pub.split(' ').slice(0, 2).join(' '));
  t.match(readFileSync(join(dir, 'authorized_keys'), 'utf8'), `${pub}\n`, 'the client key is authorized');

  const hostPub = readFileSync(join(dir, 'state', 'ssh_host_ed25519_key.pub'), 'utf8').trim();
  const machines = readFileSync(join(dir, 'machines'), 'utf8');
  t.equal(
    machines,
    [
      BEGIN_MARK,
      '# Managed by "nix-hcloud-builder setup": it replaces this block on every run.',
      `ssh-ng://x86_64@hcloud-builder x86_64-linux ${key} 8 1 big-parallel,nixos-test,benchmark - ${Buffer.from(hostPub).toString('base64')}`,
      END_MARK,
      '',
    ].join('\n'),
  );
  const ssh = readFileSync(join(dir, 'ssh_config'), 'utf8');
  t.ok(ssh.indexOf('Host hcloud-builder') < ssh.indexOf('Host *'), 'the alias comes before "Host *" (OpenSSH takes the first value)');
  t.ok(ssh.startsWith('Include /etc/ssh/ssh_config.d/*.conf\n'), 'the rest of the file is kept');
  t.match(ssh, /HashKnownHosts yes/);

  // OpenSSH itself reads the alias as intended.
  const g = spawnSync('ssh', ['-G', '-F', join(dir, 'ssh_config'), 'x86_64@hcloud-builder'], { encoding: 'utf8' });
  t.equal(g.status, 0, g.stderr);
  t.match(g.stdout, /^hostname 127\.0\.0\.1$/m);
  t.match(g.stdout, /^port 2222$/m);
  t.match(g.stdout, /^hostkeyalias hcloud-builder$/m);
  t.match(g.stdout, new RegExp(`^identityfile ${key}$`, 'm'));

  const after = files();
  const second = runSetup(options(), true);
  t.equal(second.plan.files.length + second.plan.dirs.length, 0, 'nothing left to change');
  t.match(second.output, /nothing to change/);
  t.same(files(), after, 'the second run changed no byte and no mode');
});

t.test('a changed config replaces the blocks in place and keeps modes and the rest of the files', async (t) => {
  const { dir, options } = scene(t);
  writeFileSync(join(dir, 'machines'), 'ssh://root@other x86_64-linux - 2\n');
  runSetup(options(), true);
  chmodSync(join(dir, 'ssh_config'), 0o640);
  writeFileSync(
    join(dir, 'config.json'),
    JSON.stringify({
      stateDir: 'state',
      authorizedKeysFile: 'authorized_keys',
      listen: { port: 2300 },
      pools: { x86_64: { serverTypes: ['cx23'] }, arm: { serverTypes: ['cax11'], systems: ['aarch64-linux'] } },
    }),
  );
  const result = runSetup(options(), false);
  t.match(result.output, /-  Port 2222\n {2}\+  Port 2300\n/, 'the diff shows the port change');
  runSetup(options(), true);
  const ssh = readFileSync(join(dir, 'ssh_config'), 'utf8');
  t.equal(ssh.split(BEGIN_MARK).length, 2, 'one block');
  t.match(ssh, /Port 2300/);
  t.notMatch(ssh, /Port 2222/);
  t.equal(statSync(join(dir, 'ssh_config')).mode & 0o777, 0o640, 'mode kept');
  const machines = readFileSync(join(dir, 'machines'), 'utf8').split('\n');
  t.equal(machines[0], 'ssh://root@other x86_64-linux - 2', 'other builders kept');
  t.equal(machines.filter((l) => l.startsWith('ssh-ng://')).length, 2, 'a line per pool');
  t.equal(readFileSync(join(dir, 'authorized_keys'), 'utf8').split('\n').filter(Boolean).length, 1, 'the key is added once');
});

t.test('inline authorizedKeys: explains what to add, exit status 1 with --write', async (t) => {
  const { dir, options } = scene(t, { authorizedKeysFile: undefined, authorizedKeys: [] });
  const result = runSetup(options(), true);
  t.equal(result.exitCode, 1);
  const pub = readFileSync(join(dir, 'root-ssh', 'nix-hcloud-builder.pub'), 'utf8').trim();
  t.match(result.output, /to do by hand: the config sets no "authorizedKeysFile"/);
  t.match(result.output, `  ${pub}`);
  // Once the user added it inline, setup is content.
  writeFileSync(
    join(dir, 'config.json'),
    JSON.stringify({ stateDir: 'state', authorizedKeys: [pub], listen: { port: 2222 }, pools: { x86_64: { serverTypes: ['cx23'] } } }),
  );
  const again = runSetup(options(), true);
  t.equal(again.exitCode, 0, again.output);
  t.match(again.output, /nothing to change/);
});

t.test('nix.conf hints', async (t) => {
  const { dir, options } = scene(t);
  writeFileSync(join(dir, 'nix.conf'), 'builders-use-substitutes = true # saves uploads\n');
  let out = runSetup(options(), false).output;
  t.notMatch(out, /builders-use-substitutes is off/);
  t.notMatch(out, /unless told otherwise/, 'the machines file beside nix.conf is the default one');
  out = runSetup({ ...options(), machines: join(dir, 'elsewhere', 'machines') }, false).output;
  t.match(
    out,
    /Nix reads .*\/machines unless told otherwise: add "builders = @.*\/elsewhere\/machines"/,
    'a machines file elsewhere needs "builders = @…"',
  );
  writeFileSync(join(dir, 'nix.conf'), 'builders = @/etc/nix/other\n');
  out = runSetup(options(), false).output;
  t.match(out, /sets "builders = @\/etc\/nix\/other", so Nix does not read/);
  writeFileSync(join(dir, 'nix.conf'), `builders = @${join(dir, 'machines')}\nbuilders-use-substitutes = false\n`);
  out = runSetup(options(), false).output;
  t.notMatch(out, /Nix does not read|unless told otherwise/);
  t.match(out, /builders-use-substitutes is off/);
});

t.test('a Nix that takes the port in the URI: machines lines without the alias, ssh config left alone', async (t) => {
  const { dir, options } = scene(t);
  const nix = (text: string) => ({ ...options(), nix: { text, source: 'nix-daemon --version' } });
  const hostKeyField = (line: string | undefined): string => Buffer.from(line?.split(' ')[7] ?? '', 'base64').toString();

  const cpp = runSetup(nix('nix (Nix) 2.31.0'), true);
  t.equal(
    cpp.output.split('\n')[0],
    'machines lines name host:port, no ssh alias needed: Nix 2.31.0 (nix-daemon --version) takes a port in the builder URI (Nix ≥ 2.31)',
    'the first line says which and why',
  );
  t.equal(readFileSync(join(dir, 'ssh_config'), 'utf8'), DEBIAN_SSH_CONFIG, 'the ssh config is untouched');
  t.same(cpp.plan.sshBlock, []);
  const cppLine = cpp.plan.machinesLines[0];
  t.match(
    cppLine,
    new RegExp(`^ssh-ng://x86_64@127\\.0\\.0\\.1:2222 x86_64-linux ${join(dir, 'root-ssh', 'nix-hcloud-builder')} 8 1 `),
    'address and port in the URI; the key in field 3',
  );
  t.equal(hostKeyField(cppLine), readFileSync(join(dir, 'state', 'ssh_host_ed25519_key.pub'), 'utf8').trim(), 'the host key in field 8');
  t.match(readFileSync(join(dir, 'machines'), 'utf8'), cppLine);
  t.match(runSetup(nix('nix (Nix) 2.31.0'), false).output, /nothing to change\n$/, 'idempotent');

  const lix = runSetup(nix('nix (Lix, like Nix) 2.93.0'), true);
  t.match(lix.output, /^machines lines name \?port=, no ssh alias needed: Lix 2\.93\.0/);
  t.match(lix.plan.machinesLines[0], /^ssh-ng:\/\/x86_64@127\.0\.0\.1\?port=2222 x86_64-linux /);
  t.equal(readFileSync(join(dir, 'ssh_config'), 'utf8'), DEBIAN_SSH_CONFIG, 'still untouched');

  for (const older of ['nix (Nix) 2.30.2', 'nix (Lix, like Nix) 2.92.0', 'nix (Nix) 2.8.0']) {
    const r = runSetup(nix(older), false);
    t.match(r.output, /^machines lines name the ssh alias: .* cannot take a port/, older);
    t.match(r.plan.machinesLines[0], /^ssh-ng:\/\/x86_64@hcloud-builder /, `${older}: the alias`);
    t.match(r.output, /update .*ssh_config: ssh alias "hcloud-builder"/, `${older}: the alias block`);
  }
  // Back from the alias to a newer Nix: the old block is left, with a hint.
  runSetup(nix('nix (Nix) 2.8.0'), true);
  t.match(
    runSetup(nix('nix (Nix) 2.31.0'), false).output,
    /the machines lines no longer use the ssh alias: its block in .*ssh_config .* can be removed/,
  );
});

t.test('an IPv6 endpoint keeps the alias', async (t) => {
  const { options } = scene(t, { listen: { host: '::1', port: 2222 } });
  const r = runSetup({ ...options(), nix: { text: 'nix (Nix) 2.31.0', source: 'test' } }, false);
  t.match(r.output, /^machines lines name the ssh alias: the endpoint listens on an IPv6 address/);
  t.match(r.plan.machinesLines[0], /^ssh-ng:\/\/x86_64@hcloud-builder /);
});

t.test('--substitutes sets builders-use-substitutes in nix.conf with the least change', async (t) => {
  const { dir, options } = scene(t);
  const nixConf = join(dir, 'nix.conf');
  const dry = runSetup({ ...options(), substitutes: true }, false);
  t.match(
    dry.output,
    /update .*nix\.conf: builders-use-substitutes: workers fetch inputs from the binary caches\n {2}--- .*nix\.conf\n {2}\+\+\+ .*nix\.conf\n {2}@@ -1,1 \+1,2 @@\n {3}sandbox = false\n {2}\+builders-use-substitutes = true\n/,
    'shown as a diff',
  );
  t.notMatch(dry.output, /builders-use-substitutes is off/, 'no hint when it is being set');
  t.equal(readFileSync(nixConf, 'utf8'), 'sandbox = false\n', 'the dry run wrote nothing');
  runSetup({ ...options(), substitutes: true }, true);
  t.equal(readFileSync(nixConf, 'utf8'), 'sandbox = false\nbuilders-use-substitutes = true\n', 'appended');
  t.notMatch(runSetup({ ...options(), substitutes: true }, false).output, /nix\.conf:/, 'a second run leaves it');

  writeFileSync(nixConf, '# mine\nbuilders-use-substitutes = false # slow uplink?\nsandbox = false\n');
  chmodSync(nixConf, 0o640);
  runSetup({ ...options(), substitutes: true }, true);
  t.equal(
    readFileSync(nixConf, 'utf8'),
    '# mine\nbuilders-use-substitutes = true\nsandbox = false\n',
    'an existing line is replaced in place',
  );
  t.equal(statSync(nixConf).mode & 0o777, 0o640, 'its mode kept');

  rmSync(nixConf);
  runSetup({ ...options(), substitutes: true }, true);
  t.equal(readFileSync(nixConf, 'utf8'), 'builders-use-substitutes = true\n', 'a missing nix.conf is created with the one line');
  writeFileSync(nixConf, 'sandbox = false\n');
  t.match(
    runSetup(options(), false).output,
    /hint: builders-use-substitutes is off .*setup --substitutes sets it/,
    'without the flag: only the hint',
  );
  t.equal(readFileSync(nixConf, 'utf8'), 'sandbox = false\n');
});

t.test("files for the daemon belong to the config file's owner", async (t) => {
  const { dir, options } = scene(t, { stateDir: 'home/.local/state/nix-hcloud-builder' });
  chownSync(join(dir, 'config.json'), 65534, 65534);
  runSetup(options(), true);
  for (const p of [
    'home',
    'home/.local',
    'home/.local/state/nix-hcloud-builder',
    'home/.local/state/nix-hcloud-builder/ssh_host_ed25519_key',
    'authorized_keys',
  ]) {
    t.equal(statSync(join(dir, p)).uid, 65534, `${p} belongs to the daemon's user`);
  }
  t.equal(statSync(join(dir, 'root-ssh', 'nix-hcloud-builder')).uid, process.getuid?.(), 'the client key belongs to root');
});

t.test('marked blocks', async (t) => {
  t.equal(
    upsertMarkedBlock(null, ['a']),
    `${BEGIN_MARK}\n# Managed by "nix-hcloud-builder setup": it replaces this block on every run.\na\n${END_MARK}\n`,
  );
  t.equal(upsertMarkedBlock('x\n', ['a']).split('\n')[1], '', 'an empty line before the block');
  t.equal(upsertMarkedBlock('Host *\n  Port 22\n', ['Host a'], true).split('\n')[0], BEGIN_MARK, 'before the first Host');
  t.equal(upsertMarkedBlock('Port 1\n', ['Host a'], true).split('\n')[0], 'Port 1', 'global lines stay global');
  t.throws(() => upsertMarkedBlock(`${BEGIN_MARK}\nfoo\n`, ['a']), { name: 'SetupError', message: /no "# END/ });
  t.throws(() => upsertMarkedBlock(`${BEGIN_MARK}\n${END_MARK}\n${BEGIN_MARK}\n${END_MARK}\n`, ['a']), { message: /twice/ });
  t.same(unifiedDiff('f', 'a\nb\nc\n', 'a\nB\nc\n'), ['--- f', '+++ f', '@@ -1,3 +1,3 @@', ' a', '-b', '+B', ' c']);
  t.same(unifiedDiff('f', null, 'a\n'), ['--- /dev/null', '+++ f', '@@ -0,0 +1,1 @@', '+a']);
});

t.test('the CLI: setup --write, then setup finds nothing to do', async (t) => {
  const { dir, options } = scene(t);
  const o = options();
  const args = [
    '--import',
    'tsx',
    join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts'),
    'setup',
    '--config',
    o.configFile,
    '--ssh-config',
    o.sshConfig!,
    '--machines',
    o.machines!,
    '--nix-conf',
    o.nixConf!,
    '--client-key',
    o.clientKey!,
    '--alias',
    'hb',
  ];
  const env = { ...process.env, NIX_HCLOUD_BUILDER_NIX_VERSION: 'nix (Nix) 2.8.0' };
  const w = spawnSync(process.execPath, [...args, '--write'], { encoding: 'utf8', env });
  t.equal(w.status, 0, w.stderr);
  t.match(readFileSync(join(dir, 'machines'), 'utf8'), /^ssh-ng:\/\/x86_64@hb /m);
  t.match(w.stdout, /^machines lines name the ssh alias: Nix 2\.8\.0 \(\$NIX_HCLOUD_BUILDER_NIX_VERSION\)/);
  const again = spawnSync(process.execPath, args, { encoding: 'utf8', env });
  t.equal(again.status, 0, again.stderr);
  t.match(again.stdout, /nothing to change\n$/);
  const subst = spawnSync(process.execPath, [...args, '--substitutes', '--write'], {
    encoding: 'utf8',
    env: { ...env, NIX_HCLOUD_BUILDER_NIX_VERSION: 'nix (Nix) 2.31.0' },
  });
  t.equal(subst.status, 0, subst.stderr);
  t.match(readFileSync(join(dir, 'nix.conf'), 'utf8'), /^builders-use-substitutes = true$/m, '--substitutes reaches setup');
  t.match(readFileSync(join(dir, 'machines'), 'utf8'), /^ssh-ng:\/\/x86_64@127\.0\.0\.1:2222 /m, 'the override reaches setup');
  const bad = spawnSync(process.execPath, [...args, '--alias', 'no spaces'], { encoding: 'utf8' });
  t.equal(bad.status, 1);
  t.match(bad.stderr, /^nix-hcloud-builder: ssh alias "no spaces"/);
});
