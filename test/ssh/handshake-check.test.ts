/** The pure half of the early handshake: the `info` answer from a record, and what counts as a different answer. */
import t from 'tap';
import { answerDifference, infoAnswer, recordOf } from '../../src/ssh/handshake-check.js';
import { encodeStderrLast, encodeString, encodeU64, type WorkerHandshakeRecord } from '../../src/ssh/nix-handshake.js';

const v = (minor: number): number => (1 << 8) | minor;
const record: WorkerHandshakeRecord = {
  protocol: 'worker',
  version: v(38),
  features: ['a', 'b'],
  nixVersion: '2.34.8',
  trust: 1,
  startupMessages: ['hello'],
};

t.test('the info answer follows the negotiated version', (t) => {
  t.same(infoAnswer(record, v(32)), encodeStderrLast(['hello']), 'before 1.33: the startup messages alone');
  t.same(infoAnswer(record, v(34)), Buffer.concat([encodeString('2.34.8'), encodeStderrLast(['hello'])]), '1.33: the version string');
  t.same(infoAnswer(record, v(38)), Buffer.concat([encodeString('2.34.8'), encodeU64(1), encodeStderrLast(['hello'])]), '1.35: and trust');
  t.equal(infoAnswer({ ...record, trust: null }, v(38)), undefined, 'a record without trust cannot answer a 1.35 client');
  t.not(infoAnswer({ ...record, trust: null }, v(34)), undefined, 'but can a 1.34 one');
  t.end();
});

t.test('a difference counts only where this client can see it', (t) => {
  const client = { clientVersion: v(34), clientFeatures: ['a'] };
  t.equal(answerDifference('hello', record, { version: v(37) }, client, v(34)), undefined, 'both above the client: the same 1.34');
  t.equal(answerDifference('hello', record, { version: v(33) }, client, v(33)), 'protocol 1.33, not 1.38');
  t.equal(answerDifference('features', record, { features: ['a'] }, client, v(38)), undefined, "'b' is not the client's");
  t.equal(answerDifference('features', record, { features: ['b'] }, client, v(38)), 'features [], not [a]');
  t.equal(answerDifference('info', record, { trust: 0 }, client, v(34)), undefined, 'no trust status before 1.35');
  t.equal(answerDifference('info', record, { trust: 0 }, client, v(35)), 'trust status 0, not 1');
  t.equal(answerDifference('features', { protocol: 'serve', version: v(7) }, {}, client, v(7)), undefined, 'serve has one phase');
  t.end();
});

t.test('the record a session leaves', (t) => {
  t.same(recordOf('serve', { version: 0x207 }), { protocol: 'serve', version: 0x207 });
  t.same(
    recordOf('worker', { version: v(34), nixVersion: '2.8.0' }),
    { protocol: 'worker', version: v(34), features: null, nixVersion: '2.8.0', trust: null, startupMessages: [] },
    'what it did not see is null',
  );
  t.end();
});
