/**
 * Logging in to the endpoint: an authorized key's options (from=, expiry-time=, command=) hold at
 * login, and the limits before login: connections not logged in yet from everywhere together
 * (maxStartups) and failed attempts per connection (maxAuthTries).
 */
import t from 'tap';
import { connect, type Socket } from 'node:net';
import ssh2 from 'ssh2';
import type { NixCommand } from '../../src/ssh/nix-command.js';
import type { SessionLease, SessionPool } from '../../src/ssh/endpoint.js';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { login, startEndpoint } from './endpoint-harness.js';

/** A pool with a ready worker that records the command it is asked to run, and then fails it. */
class RecordingPool implements SessionPool {
  readonly commands: NixCommand[] = [];
  acquire(): Promise<SessionLease> {
    return Promise.resolve({
      worker: {
        record: { name: 'w1' },
        execNix: (command: NixCommand) => {
          this.commands.push(command);
          return Promise.reject(new Error('recorded, not run'));
        },
      },
      release: () => undefined,
    });
  }
}

function loginFails(port: number, privateKey: string): Promise<string> {
  const client = new ssh2.Client();
  return new Promise((resolve, reject) => {
    client.once('ready', () => {
      client.end();
      reject(new Error('logged in'));
    });
    client.once('error', (err) => resolve(err.message));
    client.connect({ host: '127.0.0.1', port, username: 'x86_64', privateKey });
  });
}

function execAndWait(client: ssh2.Client, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    client.exec(command, (err, channel) => {
      if (err) return reject(err);
      let text = '';
      channel.stderr.on('data', (chunk: Buffer) => (text += chunk.toString()));
      channel.on('close', () => resolve(text)).resume();
    });
  });
}

t.test('from=: a key is refused from an address its patterns do not allow', async (t) => {
  const refused = await startEndpoint(t, {}, (key) => `from="10.0.0.0/8,!127.0.0.1" ${key}`);
  t.match(await loginFails(refused.port, refused.clientKey), /authentication methods failed/);
  t.match(refused.logged(), /address not allowed for this key.*refused: public key not authorized now/);
  const allowed = await startEndpoint(t, {}, (key) => `from="127.0.0.*" ${key}`);
  await login(t, allowed.port, allowed.clientKey);
  t.pass('and accepted from one they allow');
});

t.test('expiry-time=: an expired key is refused', async (t) => {
  const expired = await startEndpoint(t, {}, (key) => `expiry-time="20200101Z" ${key}`);
  t.match(await loginFails(expired.port, expired.clientKey), /authentication methods failed/);
  t.match(expired.logged(), /key expired/);
  const valid = await startEndpoint(t, {}, (key) => `expiry-time="29991231Z" ${key}`);
  await login(t, valid.port, valid.clientKey);
});

t.test('command=: the forced command runs instead of what the client asks for', async (t) => {
  const pool = new RecordingPool();
  const { port, clientKey } = await startEndpoint(
    t,
    { pools: new Map([['x86_64', pool]]) },
    (key) => `restrict,command="nix-store --serve" ${key}`,
  );
  const client = await login(t, port, clientKey);
  t.match(await execAndWait(client, 'nix-daemon --stdio --store daemon'), /recorded, not run/);
  t.match(await execAndWait(client, 'rm -rf /'), /recorded, not run/, 'even a command the endpoint would refuse');
  t.same(pool.commands, [
    { program: 'nix-store', mode: 'serve', write: false },
    { program: 'nix-store', mode: 'serve', write: false },
  ]);
});

t.test('maxAuthTries: a connection is dropped after that many failed attempts', async (t) => {
  const { port, logged } = await startEndpoint(t, { maxAuthTries: 3 });
  const wrongKeys = Array.from({ length: 6 }, (_, i) => generateKeyPair(`wrong-${i}`).privateKey);
  let offered = 0;
  const client = new ssh2.Client();
  const ended = new Promise<string>((resolve) => {
    client.once('error', (err) => resolve(err.message));
    client.once('close', () => resolve('closed'));
    client.once('ready', () => resolve('logged in'));
  });
  client.connect({
    host: '127.0.0.1',
    port,
    username: 'x86_64',
    authHandler: (_methods, _partial, next) => {
      const key = wrongKeys[offered++];
      if (!key) return next(false as never);
      next({ type: 'publickey', username: 'x86_64', key } as never);
    },
  });
  t.not(await ended, 'logged in');
  t.equal(offered, 3, 'three keys offered (the "none" probe is free), then dropped');
  t.match(logged(), /dropped: too many failed login attempts/);
});

function openSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port }, () => resolve(socket));
    socket.once('error', reject);
  });
}

/** Resolves with the server's first bytes, or 'closed' if it closed without a word. */
function firstWords(socket: Socket): Promise<string> {
  return new Promise((resolve) => {
    socket.once('data', (chunk: Buffer) => resolve(chunk.toString().split('\r\n')[0] ?? ''));
    socket.once('close', () => resolve('closed'));
  });
}

t.test('maxStartups: connections not logged in, from all addresses together, are capped', async (t) => {
  const { port, clientKey, logged } = await startEndpoint(t, { maxStartups: 2, maxConnectionsPerSource: 100 });
  const waiting: Socket[] = [];
  t.teardown(() => waiting.forEach((s) => s.destroy()));
  for (let i = 0; i < 2; i++) {
    const socket = await openSocket(port);
    waiting.push(socket);
    t.match(await firstWords(socket), /^SSH-2\.0-nix-hcloud-builder/, `connection ${i + 1} is served`);
  }
  const third = await openSocket(port);
  t.equal(await firstWords(third), 'closed', 'a third one, not logged in either, is closed at once');
  t.match(logged(), /refused: too many connections not logged in yet/);
  const closed = new Promise((resolve) => (waiting[0] as Socket).once('close', resolve));
  (waiting.shift() as Socket).destroy();
  await closed;
  // The endpoint counts the closed one out when its side closes too: retry until it has.
  let client: ssh2.Client | undefined;
  for (let attempt = 0; !client && attempt < 50; attempt++) client = await login(t, port, clientKey).catch(() => undefined);
  t.ok(client, 'with one gone, a client logs in');
  const second = await openSocket(port);
  waiting.push(second);
  t.match(await firstWords(second), /^SSH-2\.0/, 'a logged-in connection does not count');
});
