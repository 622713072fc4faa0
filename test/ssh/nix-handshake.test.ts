/**
 * The wire codec and the checks of protocol 1.38 (features, trust), which Nix 2.8 does not speak:
 * bytes built as Nix 2.26/2.34 sends them (worker-protocol-connection.cc, worker-protocol.cc).
 */
import t from 'tap';
import { Duplex, PassThrough } from 'node:stream';
import { EarlySession, HandshakeMismatch } from '../../src/ssh/early-session.js';
import {
  encodeStderrError,
  encodeStderrLast,
  encodeString,
  encodeStrings,
  encodeU64,
  parseHandshakeRecord,
  readStderrStream,
  WireEnd,
  WireReader,
  WORKER_MAGIC_1,
  WORKER_MAGIC_2,
  type WorkerHandshakeRecord,
} from '../../src/ssh/nix-handshake.js';

const V138 = 0x126;
const clientOpening = (features: string[]) => Buffer.concat([encodeU64(WORKER_MAGIC_1, V138), encodeStrings(features), encodeU64(0, 0)]);
const workerOpening = (r: WorkerHandshakeRecord) =>
  Buffer.concat([
    encodeU64(WORKER_MAGIC_2, r.version),
    encodeStrings(r.features ?? []),
    encodeString(r.nixVersion ?? ''),
    encodeU64(r.trust ?? 0),
    encodeStderrLast(r.startupMessages),
  ]);
const record: WorkerHandshakeRecord = {
  protocol: 'worker',
  version: V138,
  features: ['delete-dead-specific-referrers', 'realisation-with-path-not-hash'],
  nixVersion: '2.34.8',
  trust: 1,
  startupMessages: ['warning: hello'],
};

t.test('the reader takes bytes one at a time', async (t) => {
  const reader = new WireReader();
  const bytes = Buffer.concat([encodeU64(7), encodeString('abcdefghi'), encodeStrings(['x', 'yz'])]);
  const read = (async () => [await reader.u64(), await reader.string(), await reader.strings()])();
  for (const byte of bytes) reader.push(Buffer.from([byte]));
  t.same(await read, [7, 'abcdefghi', ['x', 'yz']]);
  reader.push(Buffer.from([1, 2]));
  reader.end();
  await t.rejects(reader.u64(), WireEnd, 'a short message at the end');
});

t.test(
  "a 1.38 record, read by a session with none from the worker's opening: features, version string, trust, startup lines",
  async (t) => {
    const toSession = new PassThrough();
    const session = new EarlySession(Duplex.from({ readable: toSession, writable: new PassThrough() }), 'worker', undefined);
    toSession.write(clientOpening(['realisation-with-path-not-hash']));
    const fromWorker = new PassThrough();
    fromWorker.write(workerOpening(record));
    const { record: got } = await session.splice(Duplex.from({ readable: fromWorker, writable: new PassThrough() }));
    t.same(got, record);
    t.same(parseHandshakeRecord(JSON.parse(JSON.stringify(got))), record, 'through JSON');
    t.equal(parseHandshakeRecord({ ...record, trust: 'yes' }), undefined, 'a malformed record is none');
  },
);

/** An early session over a client the test plays, spliced to a worker the test plays. */
async function spliceAgainst(worker: WorkerHandshakeRecord, clientFeatures: string[]) {
  const toSession = new PassThrough();
  const fromSession = new PassThrough();
  const session = new EarlySession(Duplex.from({ readable: toSession, writable: fromSession }), 'worker', record);
  toSession.write(clientOpening(clientFeatures));
  t.equal(await session.answered, true);
  const toWorker = new PassThrough();
  const fromWorker = new PassThrough();
  fromWorker.write(workerOpening(worker));
  return { splice: session.splice(Duplex.from({ readable: fromWorker, writable: toWorker })), told: fromSession.read() as Buffer };
}

t.test('answered early as recorded; the same answers splice cleanly', async (t) => {
  const { splice, told } = await spliceAgainst(record, ['realisation-with-path-not-hash']);
  t.same(told, workerOpening(record), 'the client got what the worker would have sent');
  const result = await splice;
  t.equal(result.changed, false);
  t.same(result.messages, ['warning: hello'], "the worker's own lines, for the log");
});

t.test('a feature the client uses is gone: a clear error with the new record', async (t) => {
  const changed = { ...record, features: ['delete-dead-specific-referrers'] };
  const err = (await (
    await spliceAgainst(changed, ['realisation-with-path-not-hash'])
  ).splice.catch((e: unknown) => e)) as HandshakeMismatch;
  t.type(err, HandshakeMismatch);
  t.match(err.message, /features \[\], not \[realisation-with-path-not-hash\]/);
  t.same(err.record, { ...changed, nixVersion: null, trust: null, startupMessages: [] });
});

t.test('a feature the client does not use changed: no difference to it', async (t) => {
  const result = await (
    await spliceAgainst({ ...record, features: ['realisation-with-path-not-hash'] }, ['realisation-with-path-not-hash'])
  ).splice;
  t.equal(result.changed, true, 'the record is refreshed');
});

t.test('another trust status: a clear error', async (t) => {
  const err = (await (await spliceAgainst({ ...record, trust: 2 }, [])).splice.catch((e: unknown) => e)) as HandshakeMismatch;
  t.type(err, HandshakeMismatch);
  t.match(err.message, /trust status 2, not 1/);
});

t.test("a refusal of the next operation reads back as the daemon's error, before and from 1.26", async (t) => {
  for (const version of [0x119, 0x122, V138]) {
    const reader = new WireReader();
    reader.push(Buffer.concat([encodeStderrError('nix-hcloud-builder: the boot failed', version), encodeU64(99)]));
    t.same(
      await readStderrStream(reader, version),
      { messages: [], error: 'nix-hcloud-builder: the boot failed' },
      `protocol 0x${version.toString(16)}`,
    );
    t.equal(await reader.u64(), 99, 'and nothing more');
  }
});
