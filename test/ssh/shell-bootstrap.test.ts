import t from 'tap';
import { PassThrough } from 'node:stream';
import { CommandRefused } from '../../src/ssh/nix-command.js';
import { parseExecLine, readShellBootstrap, ShellBootstrap } from '../../src/ssh/shell-bootstrap.js';

const SERVE_HELLO = Buffer.from('eb9d0c390000000007020000000000000', 'hex').subarray(0, 16);

t.test('the lines Lix 2.93.0 writes are accepted, and the bytes after them kept', async (t) => {
  const b = new ShellBootstrap();
  t.same(b.push(Buffer.from('echo started\n')), { answerStarted: true }, 'first line: answer started');
  const progress = b.push(Buffer.concat([Buffer.from('exec nix-store --serve --write\n'), SERVE_HELLO]));
  t.equal(progress.answerStarted, false);
  t.same(progress.done?.command, { program: 'nix-store', mode: 'serve', write: true });
  t.same(progress.done?.rest, SERVE_HELLO, 'the protocol bytes after the exec line');
  t.throws(() => b.push(Buffer.from('x')), /push after the command was read/);
});

t.test('both lines in one chunk, or one byte at a time', async (t) => {
  const whole = new ShellBootstrap().push(Buffer.from("echo started\nexec nix-daemon --stdio --store 'daemon'\n"));
  t.equal(whole.answerStarted, true);
  t.same(whole.done?.command, { program: 'nix-daemon', mode: 'daemon', write: false, store: 'daemon' });
  t.equal(whole.done?.rest.length, 0);

  const b = new ShellBootstrap();
  const text = 'echo started\nexec /nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix-2.24.10/bin/nix-daemon --stdio\nAB';
  let answered = 0;
  let done: ReturnType<ShellBootstrap['push']>['done'];
  for (const byte of Buffer.from(text)) {
    const p = b.push(Buffer.from([byte]));
    if (p.answerStarted) answered++;
    if (p.done) {
      done = p.done;
      break;
    }
  }
  t.equal(answered, 1, 'started is answered once');
  t.equal(done?.command.programPath, '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix-2.24.10/bin/nix-daemon');
  t.equal(done?.rest.toString(), '', 'nothing after the newline had arrived yet');
});

t.test('anything else on those lines is refused', async (t) => {
  const refused: [string, RegExp][] = [
    ['echo started; id\n', /is not "echo started"/],
    ['id\n', /is not "echo started"/],
    ['echo started\r\nexec nix-daemon --stdio\n', /is not "echo started"/],
    ['echo started\nexec nix-daemon --stdio; rm -rf /\n', /not allowed/],
    ['echo started\nexec nix-store --serve --store $(id)\n', /not allowed/],
    ['echo started\nexec nix-store --serve --store `id`\n', /not allowed/],
    ['echo started\nnix-daemon --stdio\n', /is not "exec nix-daemon --stdio"/],
    ['echo started\nexec bash\n', /not a Nix remote-store program/],
    ['echo started\nexec  nix-daemon --stdio && id\n', /not allowed/],
    [`echo started\nexec nix-daemon --stdio ${'x'.repeat(5000)}\n`, /longer than 4096 bytes/],
  ];
  for (const [input, reason] of refused) {
    t.throws(
      () => new ShellBootstrap().push(Buffer.from(input)),
      { name: 'CommandRefused', message: reason },
      JSON.stringify(input.slice(0, 60)),
    );
  }
});

t.test('an overlong line is refused before its newline arrives', async (t) => {
  const b = new ShellBootstrap();
  t.same(b.push(Buffer.alloc(4096, 0x61)), { answerStarted: false }, 'up to the limit: waits');
  t.throws(() => b.push(Buffer.from('a')), { name: 'CommandRefused', message: /longer than 4096 bytes/ });
});

t.test('EOF before a line is complete is refused', async (t) => {
  const none = new ShellBootstrap();
  none.push(Buffer.from('echo started'));
  t.throws(() => none.end(), { name: 'CommandRefused', message: /ended before "echo started"/ });
  const half = new ShellBootstrap();
  half.push(Buffer.from('echo started\nexec nix-daemon --stdio'));
  t.throws(() => half.end(), { name: 'CommandRefused', message: /ended before the exec line/ });
});

t.test('parseExecLine uses the same allow-list as a direct exec', async (t) => {
  t.same(parseExecLine('exec nix-store --serve'), { program: 'nix-store', mode: 'serve', write: false });
  t.throws(() => parseExecLine('exec nix-daemon'), CommandRefused);
  t.throws(() => parseExecLine('exec'), CommandRefused);
});

/** A stand-in for the client's channel: a readable stream of stdin plus what we write to stdout. */
function fakeChannel(): PassThrough & { written: string[] } {
  const stream = new PassThrough() as PassThrough & { written: string[] };
  stream.written = [];
  stream.write = ((data: string) => {
    stream.written.push(data);
    return true;
  }) as PassThrough['write'];
  return stream;
}

t.test('readShellBootstrap answers started and puts the protocol bytes back for the pipe', async (t) => {
  const channel = fakeChannel();
  const reading = readShellBootstrap(channel, 5000);
  channel.push(Buffer.from('echo started\n'));
  await new Promise((r) => setImmediate(r));
  t.same(channel.written, ['started\n'], 'started answered before the exec line came');
  channel.push(Buffer.concat([Buffer.from('exec nix-store --serve --write\n'), SERVE_HELLO]));
  channel.push(Buffer.from('more'));
  const command = await reading;
  t.equal(command.mode, 'serve');
  t.equal(channel.isPaused(), true, 'left paused for the pipe');
  const received: Buffer[] = [];
  // As the session pipe does: a listener, then resume().
  channel.on('data', (c: Buffer) => received.push(c));
  channel.resume();
  channel.push(null);
  await new Promise((r) => channel.once('end', r));
  t.same(Buffer.concat(received), Buffer.concat([SERVE_HELLO, Buffer.from('more')]), 'every byte after the exec line, in order');
});

t.test('readShellBootstrap refuses on EOF, close and timeout', async (t) => {
  const eof = fakeChannel();
  const eofRead = readShellBootstrap(eof, 5000);
  eof.push(Buffer.from('echo started\nexec nix-daemon --stdio'));
  eof.push(null);
  await t.rejects(eofRead, { name: 'CommandRefused', message: /ended before the exec line/ });

  const closed = fakeChannel();
  const closedRead = readShellBootstrap(closed, 5000);
  closed.destroy();
  await t.rejects(closedRead, { name: 'CommandRefused', message: /closed the session/ });

  const silent = fakeChannel();
  await t.rejects(readShellBootstrap(silent, 50), { name: 'CommandRefused', message: /no exec line within 0.05 s/ });
  t.equal(silent.listenerCount('data'), 0, 'its listeners are gone');
});
