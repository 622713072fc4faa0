import t, { type Test } from 'tap';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { batchWrites } from '../../src/ssh/write-batch.js';

/** A connected pair on loopback: `client` writes, `received` collects what the server side read. */
async function socketPair(t: Test): Promise<{ client: Socket; received: Buffer[] }> {
  const received: Buffer[] = [];
  const server = createServer((peer) => peer.on('data', (chunk: Buffer) => received.push(chunk)));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const client = connect(port, '127.0.0.1');
  await once(client, 'connect');
  t.teardown(() => {
    client.destroy();
    server.close();
  });
  return { client, received };
}

/** Counts the writes the socket hands to its handle: one per `_write`, one per `_writev` (a batch). */
function handleWrites(socket: Socket): { single: number; batches: number[] } {
  const seen = { single: 0, batches: [] as number[] };
  const internals = socket as unknown as {
    _write: (...args: unknown[]) => void;
    _writev: (chunks: unknown[], ...rest: unknown[]) => void;
  };
  const write = internals._write;
  const writev = internals._writev;
  internals._write = function (...args: unknown[]) {
    seen.single++;
    Reflect.apply(write, this, args);
  };
  internals._writev = function (chunks: unknown[], ...rest: unknown[]) {
    seen.batches.push(chunks.length);
    Reflect.apply(writev, this, [chunks, ...rest]);
  };
  return seen;
}

async function receivedAll(received: Buffer[], bytes: number): Promise<Buffer> {
  for (let i = 0; i < 1000 && Buffer.concat(received).length < bytes; i++) await new Promise((r) => setTimeout(r, 5));
  return Buffer.concat(received);
}

t.test('the writes of one tick reach the handle as one batch, in order', async (t) => {
  const { client, received } = await socketPair(t);
  const seen = handleWrites(client);
  batchWrites(client);
  const packets = [0, 1, 2, 3].map((i) => Buffer.alloc(32 * 1024, i));
  for (const p of packets) client.write(p);
  t.equal(client.writableCorked, 1, 'held while the tick runs');
  t.same(seen, { single: 0, batches: [] }, 'nothing reached the handle yet');
  await nextTurn();
  t.equal(client.writableCorked, 0, 'released when the tick is done');
  t.same(seen, { single: 0, batches: [4] }, 'one writev of the four packets');
  t.same(await receivedAll(received, 128 * 1024), Buffer.concat(packets), 'the same bytes in the same order');
});

t.test('a write in a later tick is not held back for the next one', async (t) => {
  const { client, received } = await socketPair(t);
  const seen = handleWrites(client);
  batchWrites(client);
  client.write(Buffer.from('first'));
  await nextTurn();
  t.equal(client.writableCorked, 0);
  t.equal((await receivedAll(received, 5)).toString(), 'first', 'the first arrived without waiting for another write');
  client.write(Buffer.from('second'));
  await nextTurn();
  t.equal((await receivedAll(received, 11)).toString(), 'firstsecond');
  t.equal(seen.single + seen.batches.length, 2, 'one handle write per tick');
});

t.test('write keeps its answer and its callback', async (t) => {
  const { client } = await socketPair(t);
  batchWrites(client);
  let called = 0;
  t.equal(
    client.write(Buffer.alloc(10), () => called++),
    true,
    'below the high-water mark: true',
  );
  t.equal(client.write(Buffer.alloc(client.writableHighWaterMark)), false, 'past the mark: false, as without batching');
  await once(client, 'drain');
  t.equal(called, 1, 'the callback ran once the bytes were written');
});
