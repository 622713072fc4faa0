/**
 * One system call per turn of the event loop instead of one per SSH packet. ssh2 hands every
 * packet to its socket on its own, so a 128 KiB burst of session data towards a client whose
 * channel packets are 32 KiB becomes four `write(2)`s, and on loopback four wake-ups of the
 * reader. OpenSSH gathers what a turn of its loop produced and writes it at once. Corking the
 * socket at the first write of a tick and uncorking it when the tick's work is done
 * (`process.nextTick`) lets Node give the kernel those packets in one `writev(2)`: the same
 * bytes in the same order, no later than the end of the code that wrote them.
 */
import type { Socket } from 'node:net';

type Write = Socket['write'];

/** Makes `socket` gather the writes of each tick into one; returns the socket. */
export function batchWrites<S extends Pick<Socket, 'write' | 'cork' | 'uncork'>>(socket: S): S {
  const write: Write = socket.write;
  let corked = false;
  const uncork = (): void => {
    corked = false;
    socket.uncork();
  };
  // ssh2 writes through `socket.write(data)`, with no hook of its own: replace it on this socket only.
  const batched = function batchedWrite(this: S, ...args: Parameters<Write>): boolean {
    if (!corked) {
      corked = true;
      socket.cork();
      process.nextTick(uncork);
    }
    return write.apply(this, args);
  };
  // The overloads of write are one function at run time: a cast, not a wrapper per overload.
  socket.write = batched as Write;
  return socket;
}
