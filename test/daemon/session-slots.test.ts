/** The pool's count of sessions per worker. */
import t from 'tap';
import { SessionSlots } from '../../src/daemon/session-slots.js';

t.test('slots are counted per worker, given back one by one, and forgotten with the worker', async (t) => {
  const slots = new SessionSlots<string>();
  t.equal(slots.of('a'), 0);
  slots.reserve('a');
  slots.reserve('a');
  slots.reserve('b');
  t.equal(slots.of('a'), 2);
  t.equal(slots.release('a'), 1);
  t.equal(slots.of('b'), 1);
  slots.forget('b');
  t.equal(slots.of('b'), 0);
});
