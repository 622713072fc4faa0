/**
 * A smaller SSH window for the session channels of one client connection (Nix → our endpoint).
 *
 * ssh2 grants every channel 2 MiB of window and tops it up to 2 MiB whenever half is used, with
 * no option to change it. The window is what a peer may send before we read: a paused session
 * (its worker is slower than the Nix client) holds up to that much. Nix talks to the endpoint over
 * loopback or a LAN, where CLIENT_WINDOW keeps the pipe full; the worker leg, over the internet,
 * keeps ssh2's 2 MiB (a window caps a session's throughput at window ÷ round trip).
 *
 * ssh2 1.17 keeps the window in `channel.incoming.window` and sends grants through its protocol
 * object; both are internal, so this module is the one place that touches them, and
 * test/ssh/channel-window.test.ts checks the peer's view on a real connection.
 */
import type { Connection } from 'ssh2';

/** Window granted to a Nix client's session channel. */
export const CLIENT_WINDOW = 1024 * 1024;

interface WindowCounter {
  window: number;
}

interface ProtocolInternals {
  channelOpenConfirm(remote: number, local: number, window: number, packetSize: number): void;
  channelWindowAdjust(remote: number, amount: number): void;
}

interface SessionInternals {
  _chanInfo?: { incoming?: WindowCounter; outgoing?: { id?: number } };
  once?: (event: 'close', listener: () => void) => unknown;
}

interface ConnectionInternals {
  _protocol?: Partial<ProtocolInternals>;
  _chanMgr?: { get?: (local: number) => unknown };
}

/**
 * Applies CLIENT_WINDOW to every session channel the connection accepts from now on. When
 * ssh2's internals are not what this was written for, it changes nothing (ssh2's window applies).
 */
export function limitChannelWindows(connection: Connection, window: number = CLIENT_WINDOW): boolean {
  const internals = connection as unknown as ConnectionInternals;
  const protocol = internals._protocol;
  const channels = internals._chanMgr;
  const confirm = protocol?.channelOpenConfirm;
  const adjust = protocol?.channelWindowAdjust;
  if (!protocol || !confirm || !adjust || typeof channels?.get !== 'function') return false;
  /** ssh2's counters of the channels we limit, by the peer's channel id (the id grants name). */
  const counters = new Map<number, WindowCounter>();

  // ssh2 registers the accepted session, then confirms it: take its counter down to our window in
  // the same step, so the peer and ssh2 never disagree. Anything else keeps ssh2's window.
  protocol.channelOpenConfirm = (remote, local, initial, packetSize) => {
    const session = channels.get?.(local) as SessionInternals | undefined;
    const counter = session?._chanInfo?.incoming;
    if (!session || !counter || typeof counter.window !== 'number' || session._chanInfo?.outgoing?.id !== remote || initial <= window) {
      return confirm.call(protocol, remote, local, initial, packetSize);
    }
    counter.window = window;
    counters.set(remote, counter);
    session.once?.('close', () => {
      if (counters.get(remote) === counter) counters.delete(remote);
    });
    return confirm.call(protocol, remote, local, window, packetSize);
  };

  // ssh2 has already added `amount` to the counter: undo that, and grant up to our window once
  // half of it is used (as OpenSSH does), instead of ssh2's top-up to 2 MiB.
  protocol.channelWindowAdjust = (remote, amount) => {
    const counter = counters.get(remote);
    if (!counter) return adjust.call(protocol, remote, amount);
    const left = counter.window - amount;
    if (left > window / 2) {
      counter.window = left;
      return;
    }
    counter.window = window;
    return adjust.call(protocol, remote, window - left);
  };
  return true;
}
