/** What is not a Nix build is refused with one clear line, and the daemon keeps serving. */
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { Rig, run } from '../rig/rig.js';

t.test('refusals', async (t) => {
  const rig = await Rig.start();
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const knownHosts = rig.knownHostsFile();
  const sshConfig = rig.sshConfig(daemon.port);
  const ssh = (user: string, key: string, extra: string[], command?: string) =>
    run(
      'ssh',
      [
        '-F',
        sshConfig,
        '-i',
        key,
        '-o',
        `UserKnownHostsFile=${knownHosts}`,
        '-o',
        'BatchMode=yes',
        ...extra,
        `${user}@hcloud-builder`,
        ...(command === undefined ? [] : [command]),
      ],
      { timeoutMs: 20_000 },
    );

  const stranger = generateKeyPair('stranger');
  const strangerKey = join(rig.dir, 'stranger');
  writeFileSync(strangerKey, stranger.privateKey, { mode: 0o600 });
  const wrongKey = await ssh('x86_64', strangerKey, [], 'nix-daemon --stdio');
  t.equal(wrongKey.code, 255, 'wrong key: ssh fails');
  t.match(wrongKey.stderr, /Permission denied \(publickey\)/);

  const password = await ssh('x86_64', strangerKey, ['-o', 'PreferredAuthentications=password,keyboard-interactive'], 'true');
  t.equal(password.code, 255, 'password and keyboard-interactive auth are not offered');

  const unknownPool = await ssh('nosuchpool', rig.clientKeyFile, [], 'nix-daemon --stdio');
  t.equal(unknownPool.code, 1);
  t.match(unknownPool.stderr, /unknown pool "nosuchpool": log in as one of x86_64/);

  const shell = await ssh('x86_64', rig.clientKeyFile, ['-T'], undefined);
  t.equal(shell.code, 1);
  t.match(shell.stderr, /no shell/);

  const pty = await ssh('x86_64', rig.clientKeyFile, ['-tt'], 'id');
  t.not(pty.code, 0);
  t.match(pty.stdout + pty.stderr, /PTY allocation request failed/);

  for (const command of [
    'id',
    'nix-daemon --stdio; rm -rf /',
    'nix-store --serve --store $(id)',
    `nix-daemon --stdio '${'x'.repeat(9000)}'`,
  ]) {
    const res = await ssh('x86_64', rig.clientKeyFile, [], command);
    t.equal(res.code, 1, `${command.slice(0, 40)}: exit 1`);
    t.match(res.stderr, /nix-hcloud-builder: command refused/, `${command.slice(0, 40)}: one clear line`);
    t.equal(res.stderr.trim().split('\n').length, 1, 'exactly one line');
  }

  // Agent forwarding: a real agent, `ssh -A`; the request is refused, the command still judged.
  const agentSock = join(rig.dir, 'agent.sock');
  const agent = await run('ssh-agent', ['-a', agentSock]);
  t.equal(agent.code, 0, 'ssh-agent started');
  const agentPid = /SSH_AGENT_PID=(\d+)/.exec(agent.stdout)?.[1];
  t.teardown(() => {
    if (agentPid) process.kill(Number(agentPid));
  });
  const forwarded = await run(
    'ssh',
    [
      '-F',
      sshConfig,
      '-i',
      rig.clientKeyFile,
      '-o',
      `UserKnownHostsFile=${knownHosts}`,
      '-o',
      'BatchMode=yes',
      '-A',
      'x86_64@hcloud-builder',
      'id',
    ],
    {
      env: { ...process.env, SSH_AUTH_SOCK: agentSock },
    },
  );
  t.equal(forwarded.code, 1);
  t.match(forwarded.stderr, /command refused/);
  await daemon.waitForMsg(/refused: agent forwarding/, 5000);

  const sftp = await ssh('x86_64', rig.clientKeyFile, ['-s'], 'sftp');
  t.equal(sftp.code, 1);
  t.match(sftp.stderr, /subsystem "sftp" is not available/);

  const forward = await ssh('x86_64', rig.clientKeyFile, ['-o', 'ExitOnForwardFailure=yes', '-L', '127.0.0.1:0:127.0.0.1:22'], 'true');
  t.not(forward.code, 0, 'local port forwarding refused');

  t.equal(rig.fake.servers().length, 0, 'no refused request created a server');
  t.equal(daemon.proc.exitCode, null, 'the daemon is still running');
  const status = await rig.cli(['status', '--json']);
  t.equal(status.code, 0);
  t.same((JSON.parse(status.stdout) as { workers: unknown[] }).workers, []);
});
