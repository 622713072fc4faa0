import t from 'tap';
import { EventEmitter } from 'node:events';
import { PassThrough } from 'node:stream';
import { HIGH_WATER, pipeSession, SerialWriter } from '../../src/ssh/session-pipe.js';
import { limitReadBuffer } from '../../src/ssh/ssh2-internals.js';
import { ZstdDecoder, ZstdEncoder } from '../../src/ssh/zstd-codec.js';

/** A channel whose writes complete only when the test says so, like an SSH channel waiting for window. */
function slowChannel() {
  const pending: (() => void)[] = [];
  const order: string[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const writer = (name: string) => ({
    write(chunk: Buffer, cb: () => void): boolean {
      order.push(`${name}:${chunk.length}`);
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      pending.push(() => {
        inFlight--;
        cb();
      });
      return false;
    },
  });
  const channel = { ...writer('out'), stderr: writer('err') };
  return {
    channel,
    pending,
    order,
    get maxInFlight() {
      return maxInFlight;
    },
  };
}

t.test('crossing the high-water mark while a write is in flight still resumes the source', async (t) => {
  const slow = slowChannel();
  let paused = 0;
  let resumed = 0;
  const w = new SerialWriter(
    slow.channel as never,
    () => resumed++,
    () => paused++,
  );
  const chunk = Buffer.alloc(32 * 1024);
  // The first write starts below the mark; the mark is crossed while it is in flight.
  for (let i = 0; i < HIGH_WATER / chunk.length; i++) w.push(false, chunk);
  t.equal(paused, 1, 'paused once at the mark');
  // Completing writes one by one drains the queue below the mark: the source must be resumed.
  while (slow.pending.length > 0) (slow.pending.shift() as () => void)();
  t.equal(resumed, 1, 'resumed once below the mark');
  await w.drained();
  t.equal(slow.maxInFlight, 1, 'one write at a time');
});

t.test('stdout and stderr are written strictly one after another, in order', async (t) => {
  const slow = slowChannel();
  const w = new SerialWriter(
    slow.channel as never,
    () => undefined,
    () => undefined,
  );
  w.push(false, Buffer.alloc(1));
  w.push(true, Buffer.alloc(2));
  w.push(false, Buffer.alloc(3));
  w.push(true, Buffer.alloc(4));
  while (slow.pending.length > 0) (slow.pending.shift() as () => void)();
  t.same(slow.order, ['out:1', 'err:2', 'out:3', 'err:4']);
  t.equal(slow.maxInFlight, 1, 'never a stdout and a stderr write pending together (the ssh2 1.17 hang)');
});

t.test("with a gate, a write counts as done only once the client's socket takes it", async (t) => {
  const slow = slowChannel();
  const waiting: (() => void)[] = [];
  let gateOpen = false;
  const gate = {
    get open() {
      return gateOpen;
    },
    whenOpen: (then: () => void) => (gateOpen ? then() : waiting.push(then)),
  };
  let resumed = 0;
  let paused = 0;
  const w = new SerialWriter(
    slow.channel as never,
    () => resumed++,
    () => paused++,
    gate,
  );
  const chunk = Buffer.alloc(64 * 1024);
  for (let i = 0; i < HIGH_WATER / chunk.length; i++) w.push(false, chunk);
  t.equal(paused, 1);
  (slow.pending.shift() as () => void)();
  t.equal(slow.order.length, 1, 'the channel took the write, but the socket is full: the next write waits');
  t.equal(waiting.length, 1);
  gateOpen = true;
  (waiting.shift() as () => void)();
  t.equal(slow.order.length, 2, 'the socket drained: the next write goes');
  while (slow.pending.length > 0) (slow.pending.shift() as () => void)();
  await w.drained();
  t.equal(resumed, 1, 'and the source was resumed below the mark');
});

t.test('limitReadBuffer lowers a stream read high-water mark (ssh2 sets 2 MiB)', async (t) => {
  const stream = new PassThrough({ highWaterMark: 2 * 1024 * 1024 });
  limitReadBuffer(stream, 32 * 1024);
  t.equal(stream.readableHighWaterMark, 32 * 1024);
  t.equal(stream.push(Buffer.alloc(40 * 1024)), false, 'push() now says stop above 32 KiB');
});

/** Stand-ins for the two channels: the test decides when the worker's writes complete. */
function fakeChannels() {
  const client = Object.assign(new EventEmitter(), {
    paused: false,
    pause() {
      this.paused = true;
      return this;
    },
    resume() {
      this.paused = false;
      return this;
    },
    write: (_c: Buffer, cb: () => void) => {
      cb();
      return true;
    },
    stderr: {
      write: (_c: Buffer, cb: () => void) => {
        cb();
        return true;
      },
    },
    exit: (code?: unknown): void => void code,
    end: () => undefined,
  });
  const pending: (() => void)[] = [];
  const worker = Object.assign(new EventEmitter(), {
    writableLength: 0,
    writable: true,
    write(chunk: Buffer, cb: () => void) {
      this.writableLength += chunk.length;
      pending.push(() => {
        this.writableLength -= chunk.length;
        cb();
      });
      return this.writableLength < HIGH_WATER;
    },
    end: () => undefined,
    close: () => undefined,
    pause: () => undefined,
    resume: () => undefined,
    stderr: Object.assign(new EventEmitter(), { pause: () => undefined, resume: () => undefined }),
  });
  return { client, worker, pending };
}

t.test("uploads pause while the worker connection's socket is full, and resume when it drains", async (t) => {
  const { client, worker, pending } = fakeChannels();
  const waiting: (() => void)[] = [];
  const gate = { open: true, whenOpen: (then: () => void) => (gate.open ? then() : waiting.push(then)) };
  void pipeSession(client as never, worker as never, { toWorker: gate });
  t.notOk(client.paused, 'flowing at first');

  client.emit('data', Buffer.alloc(32 * 1024));
  t.notOk(client.paused, 'below every mark');
  gate.open = false; // other sessions filled the shared socket
  client.emit('data', Buffer.alloc(32 * 1024));
  t.ok(client.paused, 'paused: the socket holds more than its mark');
  while (pending.length > 0) (pending.shift() as () => void)();
  t.ok(client.paused, 'the channel took the writes, but the socket has not drained: still paused');
  t.equal(waiting.length, 1, 'one wait registered, not one per write');
  gate.open = true;
  (waiting.shift() as () => void)();
  t.notOk(client.paused, 'resumed at drain');
});

t.test('uploads pause while HIGH_WATER bytes wait for the worker channel, and resume below it', async (t) => {
  const { client, worker, pending } = fakeChannels();
  void pipeSession(client as never, worker as never);
  const chunk = Buffer.alloc(32 * 1024);
  for (let i = 0; i < HIGH_WATER / chunk.length; i++) client.emit('data', chunk);
  t.ok(client.paused, 'paused at the mark');
  (pending.shift() as () => void)();
  t.notOk(client.paused, 'resumed once a write completed below the mark');
});

t.test("a worker's zstd stream cut inside a frame ends the session with a line and a failure, not as a success", async (t) => {
  for (const cut of [false, true]) {
    const { client, worker } = fakeChannels();
    const out: string[] = [];
    const err: string[] = [];
    const exits: unknown[] = [];
    client.write = (chunk: Buffer, cb: () => void) => (out.push(chunk.toString()), cb(), true);
    client.stderr.write = (chunk: Buffer, cb: () => void) => (err.push(chunk.toString()), cb(), true);
    client.exit = (code: unknown) => void exits.push(code);
    const relay = new ZstdEncoder({ level: 3 });
    // A flush makes everything so far readable: only the frame's end is missing when cut.
    const stream = [...relay.push(Buffer.from('the answer')), ...relay.flush(), ...(cut ? [] : relay.end())];
    const done = pipeSession(client as never, worker as never, {}, { encoder: new ZstdEncoder({ level: 3 }), decoder: new ZstdDecoder() });
    for (const part of stream) worker.emit('data', part);
    worker.emit('exit', 0);
    worker.emit('end');
    worker.stderr.emit('end');
    worker.emit('close');
    await done;
    t.same(out, ['the answer'], `${cut ? 'cut' : 'whole'}: the bytes that came are passed on`);
    if (cut) {
      t.match(err.join(''), /^nix-hcloud-builder: the worker's zstd stream ended inside a frame \(cut off\); its output is incomplete\n$/);
      t.same(exits, [1], 'the command said 0, the session says 1');
    } else {
      t.same(err, [], 'a whole stream: no line');
      t.same(exits, [0], "the command's status");
    }
  }
});

t.test("a worker's frame that inflates 1000:1 reaches the client as it takes it, never all in memory at once", async (t) => {
  const { client, worker } = fakeChannels();
  const held: (() => void)[] = [];
  let written = 0;
  let mostQueued = 0;
  let queued = 0;
  client.write = (chunk: Buffer, cb: () => void) => {
    queued += chunk.length;
    mostQueued = Math.max(mostQueued, queued);
    held.push(() => {
      queued -= chunk.length;
      written += chunk.length;
      cb();
    });
    return true;
  };
  let workerPaused = false;
  worker.pause = () => void (workerPaused = true);
  worker.resume = () => void (workerPaused = false);
  const exits: unknown[] = [];
  client.exit = (code: unknown) => void exits.push(code);
  const size = 64 * 1024 * 1024;
  const relay = new ZstdEncoder({ level: 3 });
  const stream = Buffer.concat([...relay.push(Buffer.alloc(size)), ...relay.end()]);
  t.ok(stream.length * 1000 < size, `${size} bytes of zeros in ${stream.length}`);
  const done = pipeSession(client as never, worker as never, {}, { encoder: new ZstdEncoder({ level: 3 }), decoder: new ZstdDecoder() });
  worker.emit('data', stream);
  worker.emit('exit', 0);
  worker.emit('end');
  worker.stderr.emit('end');
  worker.emit('close');
  t.ok(workerPaused, 'the worker is paused while the client is behind');
  t.ok(written + queued < 1024 * 1024, `decoded only as far as the client takes it (${written + queued} bytes so far)`);
  while (held.length > 0) (held.shift() as () => void)();
  await done;
  t.equal(written, size, 'every byte reached the client');
  t.ok(mostQueued <= HIGH_WATER + 128 * 1024, `at most ${mostQueued} bytes waited for the client at once`);
  t.same(exits, [0], "the command's status, once all of it is out");
});
