/**
 * `setup --write`, then a plain `nix-build` through a real multi-user nix-daemon, with each tested
 * Nix version (test/rig/nix-client.ts) as the one setup finds on its PATH and as that nix-daemon
 * and nix-build: the machines lines name the ssh alias below 2.31 and host:port from 2.31. No --builders
 * flag and no NIX_SSHOPTS on the client. The daemon finds our machines lines in its own config
 * folder, logs in with the client key that setup made (and authorized), and the build runs on a
 * worker of the fake cloud.
 *
 * The machine's own nix-daemon shares the machine's /nix store and database (as any second client
 * of the store would), another version has a store of its own; each has its own socket and config
 * folder, so it changes nothing for other users of /nix. Below 2.31 it reads the ssh alias from setup's ssh config file through NIX_SSHOPTS="-F FILE" in the
 * daemon's environment only (a real install writes the same block into /etc/ssh/ssh_config).
 *
 * Then (alias versions) the NixOS module's way without a known host key: machines lines without field 8, and the
 * key in a GlobalKnownHostsFile named by the alias block (a wrong key there stops the build).
 *
 * Last, the machines line setup writes for a Nix that takes the port in the URI (≥ 2.31, forced
 * through the environment, whatever Nix is on PATH), used by ssh exactly as that Nix runs it.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { basename, join } from 'node:path';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { BUILD_NIX, CLI, Rig, run } from '../rig/rig.js';
import { rigNixConf } from '../rig/nix-config.js';
import { testedSuites } from '../rig/nix-client.js';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** ssh with binary stdin and stdout; ends once 8 bytes came back (the handshake's magic) or ssh exits. */
function sshBinary(args: string[], input: Buffer): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('ssh', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.stdout.on('data', (c: Buffer) => {
      chunks.push(c);
      if (Buffer.concat(chunks).length >= 8) child.kill('SIGKILL');
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdin.on('error', () => undefined);
    child.stdin.write(input);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(chunks), stderr });
    });
  });
}

async function waitForFile(path: string, timeoutMs: number, what: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (Date.now() > deadline) throw new Error(`${path} did not appear within ${timeoutMs} ms: ${what()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

for (const client of testedSuites())
  t.test(`${client}'s Nix: setup --write, then a plain nix-build through a multi-user nix-daemon builds on a worker`, async (t) => {
    const rig = await Rig.start({ pool: { idleTimeout: '3s', maxWorkers: 1, jobsPerWorker: 2 }, client });
    // Setup reads the version of the Nix on its PATH: the client's. From 2.31 the port goes in the URI.
    const { version } = rig.client.install;
    const alias = version.major === 2 && version.minor < 31;
    t.teardown(() => rig.stop());
    const port = await freePort();
    rig.writeConfig({ listen: { host: '127.0.0.1', port } });

    // The nix-daemon's own config folder: no local builds possible, no network.
    const confDir = join(rig.dir, 'nix-conf');
    mkdirSync(confDir);
    // The rig's settings, less `builders =`: this daemon reads the machines file setup writes.
    writeFileSync(join(confDir, 'nix.conf'), rigNixConf(['builders']));
    const sshConfig = join(rig.dir, 'ssh_config');
    const clientKey = join(rig.dir, 'root-ssh', 'nix-hcloud-builder');
    const setupArgs = [
      CLI,
      'setup',
      '--config',
      rig.configFile,
      '--ssh-config',
      sshConfig,
      '--machines',
      join(confDir, 'machines'),
      '--nix-conf',
      join(confDir, 'nix.conf'),
      '--client-key',
      clientKey,
    ];

    const setupEnv = rig.client.env();
    const setup = await run(process.execPath, [...setupArgs, '--write'], { env: setupEnv });
    t.equal(setup.code, 0, 'setup --write succeeded', { stdout: setup.stdout, stderr: setup.stderr });
    const said = alias ? 'machines lines name the ssh alias' : 'machines lines name host:port, no ssh alias needed';
    t.ok(
      setup.stdout.startsWith(`${said}: Nix ${version.version} (nix-daemon --version)`),
      `Nix ${version.version} on PATH: ${alias ? 'the alias' : 'host:port'}`,
      { stdout: setup.stdout },
    );
    t.equal(existsSync(sshConfig), alias, alias ? 'an ssh alias block written' : 'no ssh config written');
    t.match(setup.stdout, /hint: builders-use-substitutes is off/);
    t.notMatch(setup.stdout, /unless told otherwise/, 'the machines file is the one nix-daemon reads by default');
    const again = await run(process.execPath, setupArgs, { env: setupEnv });
    t.match(again.stdout, /nothing to change\n$/, 'a second run finds nothing to change');
    const clientPublic = readFileSync(`${clientKey}.pub`, 'utf8').trim();
    t.match(readFileSync(`${rig.clientKeyFile}.pub`, 'utf8'), clientPublic, "the client key was added to the daemon's authorizedKeysFile");

    // Our daemon, after setup: it reads the authorized keys and the host key setup made.
    const hostKeyBefore = readFileSync(join(rig.dir, 'state', 'ssh_host_ed25519_key.pub'), 'utf8');
    const daemon = await rig.startDaemon();
    t.equal(daemon.port, port);
    t.equal(
      readFileSync(join(rig.dir, 'state', 'ssh_host_ed25519_key.pub'), 'utf8'),
      hostKeyBefore,
      'the daemon uses the host key in the machines lines',
    );

    // A multi-user nix-daemon with its own socket and config folder.
    // Its own socket: the machine's Nix shares /nix, so one beside the test's files; another version
    // has a store of its own, so the default place in it, where that Nix's build hook looks too.
    const ownStore = rig.client.install.root !== undefined;
    const socket = ownStore ? rig.client.local('/nix/var/nix/daemon-socket/socket') : join(rig.dir, 'nix-daemon.socket');
    const nixDaemonLog: string[] = [];
    const nixDaemon = spawn(rig.client.program('nix-daemon'), [], {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        HOME: '/root',
        NIX_CONF_DIR: confDir,
        NIX_USER_CONF_FILES: '',
        ...(ownStore ? {} : { NIX_DAEMON_SOCKET_PATH: socket }),
        // How this daemon's ssh finds the alias block (in a real install: /etc/ssh/ssh_config).
        ...(alias ? { NIX_SSHOPTS: `-F ${sshConfig}` } : {}),
      },
    });
    nixDaemon.stdout?.setEncoding('utf8').on('data', (d: string) => nixDaemonLog.push(d));
    nixDaemon.stderr?.setEncoding('utf8').on('data', (d: string) => nixDaemonLog.push(d));
    const nixDaemonExited = new Promise<void>((resolve) => nixDaemon.once('exit', () => resolve()));
    t.teardown(async () => {
      if (nixDaemon.pid !== undefined && nixDaemon.exitCode === null) {
        try {
          process.kill(-nixDaemon.pid, 'SIGTERM');
        } catch {
          // already gone
        }
        await nixDaemonExited;
      }
    });
    await waitForFile(socket, 20_000, () => nixDaemonLog.join(''));

    // The client: plain nix-build, no --builders, no NIX_SSHOPTS; it reads the same nix.conf as its
    // daemon, as both read /etc/nix on a real machine.
    const clientEnv: NodeJS.ProcessEnv = {
      ...process.env,
      NIX_REMOTE: 'daemon',
      ...(ownStore ? {} : { NIX_DAEMON_SOCKET_PATH: socket }),
      NIX_CONF_DIR: confDir,
    };
    delete clientEnv.NIX_SSHOPTS;
    const nonce = `setup-${process.pid}-${Date.now()}`;
    const build = await rig.client.run('nix-build', [BUILD_NIX, '--argstr', 'nonce', nonce, '--no-out-link', '--max-jobs', '0'], {
      env: clientEnv,
    });
    t.equal(build.code, 0, 'nix-build succeeded', { stderr: build.stderr, nixDaemon: nixDaemonLog.join('').slice(-3000) });
    const outPath = build.stdout.split('\n').find((l) => l.startsWith('/nix/store/'));
    t.ok(outPath, 'nix-build printed the output path');
    t.equal(
      readFileSync(rig.client.local(outPath as string), 'utf8'),
      `built by nix-hcloud-builder ${nonce}\n`,
      'the output was copied back',
    );

    const servers = rig.fake.servers();
    t.equal(servers.length, 1, 'our daemon booted one server');
    t.ok(existsSync(join(servers[0]?.storeDir ?? '', 'store', basename(outPath as string))), "the output was built in the worker's store");
    const session = daemon.lines.find((l) => l.msg === 'session started');
    t.ok(session, 'the build came through our endpoint');
    t.equal(session?.user, 'x86_64', 'as the pool user of the machines line');
    t.equal(session?.command, 'daemon', 'ssh-ng://: nix-daemon --stdio');
    if (!alias) return;

    // The NixOS module without `hostPublicKey`: no field 8 in the machines lines; the alias block
    // names a GlobalKnownHostsFile with the host key under the alias.
    const machinesFile = join(confDir, 'machines');
    writeFileSync(
      machinesFile,
      readFileSync(machinesFile, 'utf8')
        .split('\n')
        .map((l) => (l.startsWith('ssh-ng://') ? l.split(' ').slice(0, 7).join(' ') : l))
        .join('\n'),
    );
    const knownHosts = join(rig.dir, 'known_hosts');
    writeFileSync(
      sshConfig,
      readFileSync(sshConfig, 'utf8').replace('  IdentitiesOnly yes\n', `  IdentitiesOnly yes\n  GlobalKnownHostsFile ${knownHosts}\n`),
    );
    const knownHostsLine = (key: string): string => `hcloud-builder ${key.split(' ').slice(0, 2).join(' ')}\n`;
    writeFileSync(knownHosts, knownHostsLine(hostKeyBefore));
    const nonce2 = `${nonce}-known-hosts`;
    const build2 = await rig.client.run('nix-build', [BUILD_NIX, '--argstr', 'nonce', nonce2, '--no-out-link', '--max-jobs', '0'], {
      env: clientEnv,
    });
    t.equal(build2.code, 0, 'without field 8, the key in GlobalKnownHostsFile does', {
      stderr: build2.stderr,
      nixDaemon: nixDaemonLog.join('').slice(-3000),
    });
    const out2 = build2.stdout.split('\n').find((l) => l.startsWith('/nix/store/')) ?? '';
    t.ok(
      rig.fake.servers().some((s) => existsSync(join(s.storeDir, 'store', basename(out2)))),
      'built on a worker',
    );

    // ...and a wrong key there stops the build before anything is sent.
    writeFileSync(knownHosts, knownHostsLine(generateKeyPair('other').publicKey));
    const sessions = daemon.lines.filter((l) => l.msg === 'session started').length;
    const build3 = await rig.client.run(
      'nix-build',
      [BUILD_NIX, '--argstr', 'nonce', `${nonce}-wrong-key`, '--no-out-link', '--max-jobs', '0'],
      { env: clientEnv, timeoutMs: 60_000 },
    );
    t.not(build3.code, 0, 'a wrong host key fails the build');
    t.match(nixDaemonLog.join(''), /Host key verification failed/, 'ssh refused the endpoint');
    t.equal(daemon.lines.filter((l) => l.msg === 'session started').length, sessions, 'no session reached our daemon');
  });

t.test('a host:port machines line (Nix ≥ 2.31) works with ssh as Nix runs it, with no ssh config', async (t) => {
  const rig = await Rig.start();
  t.teardown(() => rig.stop());
  const port = await freePort();
  rig.writeConfig({ listen: { host: '127.0.0.1', port } });
  const machines = join(rig.dir, 'machines');
  const setup = await run(
    process.execPath,
    [
      CLI,
      'setup',
      '--config',
      rig.configFile,
      '--ssh-config',
      join(rig.dir, 'ssh_config'),
      '--machines',
      machines,
      '--nix-conf',
      join(rig.dir, 'nix.conf'),
      '--client-key',
      join(rig.dir, 'root-ssh', 'key'),
      '--write',
    ],
    {
      env: { ...process.env, NIX_HCLOUD_BUILDER_NIX_VERSION: 'nix (Nix) 2.31.0' },
    },
  );
  t.equal(setup.code, 0, setup.stderr);
  t.notOk(existsSync(join(rig.dir, 'ssh_config')), 'no ssh config written');
  const line =
    readFileSync(machines, 'utf8')
      .split('\n')
      .find((l) => l.startsWith('ssh-ng://')) ?? '';
  const [uri, , keyFile, , , , , hostKey] = line.split(' ');
  t.equal(uri, `ssh-ng://x86_64@127.0.0.1:${port}`);
  await rig.startDaemon();

  // What Nix 2.31 runs for that line (ssh.cc): field 8 under the URI's bare host in a temporary
  // known_hosts, field 3 as -i, the port as -p. `-F /dev/null`: no ssh config at all.
  const knownHosts = join(rig.dir, 'nix-host-key');
  writeFileSync(knownHosts, `127.0.0.1 ${Buffer.from(hostKey ?? '', 'base64').toString()}\n`);
  const ssh = (hostKeys: string) =>
    sshBinary(
      [
        'x86_64@127.0.0.1',
        '-x',
        '-F',
        '/dev/null',
        '-o',
        'BatchMode=yes',
        '-o',
        'StrictHostKeyChecking=yes',
        '-o',
        'GlobalKnownHostsFile=/dev/null',
        '-i',
        keyFile ?? '',
        `-oUserKnownHostsFile=${hostKeys}`,
        `-p${port}`,
        '--',
        'nix-store',
        '--serve',
        '--write',
      ],
      Buffer.from('eb9d0c39000000000702000000000000', 'hex'),
    );
  const serve = await ssh(knownHosts);
  t.equal(serve.stdout.subarray(0, 8).toString('hex'), 'cbee525400000000', 'the worker answered the serve handshake', {
    stderr: serve.stderr,
  });
  writeFileSync(knownHosts, `127.0.0.1 ${generateKeyPair('other').publicKey}\n`);
  const wrong = await ssh(knownHosts);
  t.equal(wrong.code, 255, 'another key under that host: refused');
  t.match(wrong.stderr, /Host key verification failed/);
});
