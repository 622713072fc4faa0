/** Hostile and broken clients at the network level: each is refused or dropped, the daemon keeps serving. */
import t from 'tap';
import { connect, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import ssh2 from 'ssh2';
import { Rig, waitUntil } from '../rig/rig.js';

function openSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port }, () => resolve(s));
    s.once('error', reject);
  });
}

function closed(s: Socket): Promise<void> {
  return new Promise((resolve) => (s.destroyed ? resolve() : s.once('close', () => resolve())));
}

function sshClient(port: number, key: string, user = 'x86_64'): Promise<ssh2.Client> {
  return new Promise((resolve, reject) => {
    const c = new ssh2.Client();
    c.once('ready', () => resolve(c))
      .once('error', reject)
      .connect({ host: '127.0.0.1', port, username: user, privateKey: key });
  });
}

t.test('hostile clients', async (t) => {
  const rig = await Rig.start({ config: { limits: { loginGrace: '1s', maxConnectionsPerSource: 5 } } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const key = readFileSync(rig.clientKeyFile, 'utf8');

  // Garbage instead of an SSH banner.
  const garbage = await openSocket(daemon.port);
  garbage.write(Buffer.concat([Buffer.from('GET / HTTP/1.1\r\n\r\n'), Buffer.alloc(4096, 0xff)]));
  garbage.resume();
  await closed(garbage);
  t.pass('garbage before the banner: connection closed');

  // A client that connects and never speaks is dropped after the login grace time.
  const silent = await openSocket(daemon.port);
  silent.resume();
  const t0 = Date.now();
  await closed(silent);
  const waited = Date.now() - t0;
  t.ok(waited >= 800 && waited < 5000, `silent client dropped after ${waited} ms (grace 1 s)`);

  // More connections from one address than allowed: the extra ones are closed at once.
  const sockets = await Promise.all(Array.from({ length: 8 }, () => openSocket(daemon.port)));
  for (const s of sockets) s.resume();
  const early = await Promise.all(
    sockets.map((s) => Promise.race([closed(s).then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 500))])),
  );
  t.equal(early.filter(Boolean).length, 3, '3 of 8 connections refused (cap 5 per source)');
  await Promise.all(sockets.map(closed));
  await waitUntil(() => false, 200);

  // Forwarding and X11 over an authenticated connection.
  const client = await sshClient(daemon.port, key);
  const forwardIn = await new Promise<Error | undefined>((resolve) => client.forwardIn('127.0.0.1', 0, (err) => resolve(err)));
  t.ok(forwardIn, 'remote port forwarding refused');
  const forwardOut = await new Promise<Error | undefined>((resolve) =>
    client.forwardOut('127.0.0.1', 1, '127.0.0.1', 22, (err) => resolve(err)),
  );
  t.ok(forwardOut, 'local port forwarding refused');
  const unixOut = await new Promise<Error | undefined>((resolve) =>
    client.openssh_forwardOutStreamLocal('/run/some.sock', (err) => resolve(err)),
  );
  t.ok(unixOut, 'unix socket forwarding refused');
  const x11 = await new Promise<{ err?: Error; stderr: string; code?: number }>((resolve) => {
    client.exec('nix-daemon --stdio', { x11: true }, (err, ch) => {
      if (err) return resolve({ err, stderr: '' });
      let stderr = '';
      ch.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      ch.on('exit', (code: number) => resolve({ stderr, code }));
      ch.end();
    });
  });
  t.ok(x11.err, `X11 request refused (${x11.err?.message ?? x11.stderr})`);
  client.end();

  t.equal(daemon.proc.exitCode, null, 'the daemon is still running');
  const ok = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`after-hostile-${Date.now()}`] });
  t.equal(ok.code, 0, 'and still builds', { stderr: ok.stderr });
  t.match(daemon.raw.join('\n'), /too many connections from this address/);
  t.match(daemon.raw.join('\n'), /no login within the login grace time/);
});
