/**
 * A smaller SSH window for the session channels of one client connection (Nix → our endpoint).
 *
 * ssh2 grants every channel 2 MiB of window and tops it up to 2 MiB whenever half is used, with
 * no option to change it. The window is what a peer may send before we read: a paused session
 * (its worker is slower than the Nix client) holds up to that much. Nix talks to the endpoint over
 * loopback or a LAN, where CLIENT_WINDOW keeps the pipe full; the worker leg, over the internet,
 * keeps ssh2's 2 MiB (a window caps a session's throughput at window ÷ round trip).
 *
 * This module is the policy; ssh2-internals.ts reaches into ssh2 for it, and
 * test/ssh/channel-window.test.ts checks the peer's view on a real connection.
 */
import type { Connection } from 'ssh2';
import { hookWindowGrants, type WindowCounter } from './ssh2-internals.js';

/** Window granted to a Nix client's session channel. */
export const CLIENT_WINDOW = 1024 * 1024;

/**
 * Applies `window` to every session channel the connection accepts from now on. When ssh2's
 * internals are not what this was written for, it changes nothing (ssh2's window applies).
 */
export function limitChannelWindows(connection: Connection, window: number = CLIENT_WINDOW): boolean {
  /** ssh2's counters of the channels we limit, by the peer's channel id (the id grants name). */
  const counters = new Map<number, WindowCounter>();
  return hookWindowGrants(connection, {
    confirm(channel, initial) {
      if (initial <= window) return initial;
      counters.set(channel.remote, channel.incoming);
      channel.onClose(() => {
        if (counters.get(channel.remote) === channel.incoming) counters.delete(channel.remote);
      });
      return window;
    },
    // ssh2 has already added `amount` to the counter: undo that, and grant up to our window once
    // half of it is used (as OpenSSH does), instead of ssh2's top-up to 2 MiB.
    adjust(remote, amount) {
      const counter = counters.get(remote);
      if (!counter) return amount;
      const left = counter.window - amount;
      if (left > window / 2) {
        counter.window = left;
        return 0;
      }
      counter.window = window;
      return window - left;
    },
  });
}
