import t from 'tap';
import { EventEmitter } from 'node:events';
import { WriteGate } from '../../src/ssh/write-gate.js';

/** A socket stand-in: the test sets how much it holds unsent, and emits `drain`/`close`. */
class FakeSocket extends EventEmitter {
  writableLength = 0;
  destroyed = false;
}

t.test('open below the mark; waiters run at drain, in order, with one drain listener', async (t) => {
  const socket = new FakeSocket();
  const gate = new WriteGate(socket as never, 1000);
  t.ok(gate.open);
  let now = 0;
  gate.whenOpen(() => now++);
  t.equal(now, 1, 'runs at once while open');

  socket.writableLength = 1000;
  t.notOk(gate.open, 'closed at the mark');
  const order: number[] = [];
  for (let i = 0; i < 20; i++) gate.whenOpen(() => order.push(i));
  t.equal(socket.listenerCount('drain'), 1, 'one drain listener however many wait');
  t.same(order, [], 'nobody runs before drain');
  socket.writableLength = 0;
  socket.emit('drain');
  t.same(order, [...Array(20).keys()], 'all run at drain, in order');
  t.equal(socket.listenerCount('drain'), 0);

  // Closed again: a new wait registers a new listener.
  socket.writableLength = 5000;
  let later = 0;
  gate.whenOpen(() => later++);
  t.equal(socket.listenerCount('drain'), 1);
  socket.writableLength = 0;
  socket.emit('drain');
  t.equal(later, 1);
});

t.test('a socket that closes releases its waiters (their sessions end on their own)', async (t) => {
  const socket = new FakeSocket();
  const gate = new WriteGate(socket as never, 10);
  socket.writableLength = 100;
  let released = 0;
  gate.whenOpen(() => released++);
  gate.whenOpen(() => released++);
  socket.destroyed = true;
  socket.emit('close');
  t.equal(released, 2);
  t.ok(gate.open, 'a destroyed socket never holds anyone');
});
