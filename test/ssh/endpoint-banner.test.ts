/**
 * The endpoint drops a client whose first line cannot be an SSH identification line at once (as
 * sshd does), not at the login grace time: a first line not starting with "SSH-", or one longer
 * than 255 bytes. ssh2 alone would wait for 8 KiB of such a line. Valid clients, including one
 * that sends its line in pieces, are untouched.
 */
import t from 'tap';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { judgeIdentLine, MAX_IDENT_LINE } from '../../src/ssh/ident-line.js';
import { LOGIN_GRACE_MS, login, startEndpoint } from './endpoint-harness.js';

function openSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port }, () => resolve(socket));
    socket.once('error', reject);
  });
}

/** Milliseconds until the server closed the socket, or undefined if it still is open after `withinMs`. */
async function closedWithin(socket: Socket, withinMs: number): Promise<number | undefined> {
  const started = Date.now();
  socket.resume();
  const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now() - started)));
  const result = await Promise.race([closed, sleep(withinMs).then(() => undefined)]);
  socket.destroy();
  return result;
}

t.test('judgeIdentLine', async (t) => {
  t.same(judgeIdentLine(Buffer.from('SSH-2.0-OpenSSH_9.6\r\n')), { valid: true });
  t.equal(judgeIdentLine(Buffer.from('SS')), undefined, 'a valid start: wait for more');
  t.equal(judgeIdentLine(Buffer.from('SSH-2.0-x')), undefined);
  t.match(judgeIdentLine(Buffer.from('G')), { valid: false });
  t.match(judgeIdentLine(Buffer.from('ssh-2.0-x\r\n')), { valid: false }, 'case matters');
  const longest = Buffer.from(`SSH-2.0-${'x'.repeat(MAX_IDENT_LINE - 10)}\r\n`);
  t.equal(longest.length, MAX_IDENT_LINE);
  t.same(judgeIdentLine(longest), { valid: true }, '255 bytes with CR LF is allowed');
  t.match(judgeIdentLine(Buffer.from(`SSH-2.0-${'x'.repeat(MAX_IDENT_LINE - 9)}\r\n`)), { valid: false }, '256 is not');
});

t.test('a first line that is not an SSH identification line is dropped at once', async (t) => {
  const { port, logged } = await startEndpoint(t);
  const cases: [string, Buffer][] = [
    ['4 KiB of garbage without a newline', Buffer.alloc(4096, 0xff)],
    ['an HTTP request line, no newline yet', Buffer.from('GET / HTTP/1.1')],
    ['"SSH-" and then 4 KiB without a newline', Buffer.concat([Buffer.from('SSH-2.0-'), Buffer.alloc(4096, 0x41)])],
  ];
  for (const [what, bytes] of cases) {
    const socket = await openSocket(port);
    socket.write(bytes);
    const ms = await closedWithin(socket, 1000);
    t.ok(ms !== undefined, `${what}: closed after ${ms ?? 'more than 1000'} ms (login grace ${LOGIN_GRACE_MS} ms)`);
  }
  t.match(logged(), /dropped: not an SSH identification line/);
});

t.test('valid clients are untouched', async (t) => {
  const { port, clientKey } = await startEndpoint(t);

  // An identification line in two pieces, then silence: still open (the grace time decides).
  // (Not more pieces: ssh2 1.17 loses all but the first and the last piece of a split line.)
  const slow = await openSocket(port);
  slow.write('SSH-');
  await sleep(50);
  slow.write('2.0-slow_client\r\n');
  t.equal(await closedWithin(slow, 1000), undefined, 'an identification line in two pieces: kept');

  const client = await login(t, port, clientKey);
  t.pass('an ssh2 client logs in');
  const stderr = await new Promise<string>((resolve, reject) => {
    client.exec('nix-daemon --stdio', (err, channel) => {
      if (err) return reject(err);
      let text = '';
      channel.stderr.on('data', (chunk: Buffer) => (text += chunk.toString()));
      channel.on('close', () => resolve(text)).resume();
    });
  });
  t.match(stderr, /unknown pool/, 'and gets an answer from the endpoint (no pools configured here)');
});
