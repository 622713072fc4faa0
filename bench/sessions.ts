/**
 * What the daemon's `session ended` lines say about the sessions of one pool in a slice of its
 * log: the bytes on the daemon → worker hop and the zstd levels they settled on.
 */
import type { LinkBytes } from '../test/rig/link.js';
import type { LogLine } from '../test/rig/rig.js';
import type { BenchRig } from './rig.js';

export interface SessionsSeen {
  /** `wireUp`/`wireDown` with a codec, else `up`/`down` (the same bytes then). */
  wire: LinkBytes;
  /** The `zstd` field of the biggest session (`{ up: "level 7", down: "level 3" }`), if it has one. */
  settled?: { up?: string; down?: string };
}

/**
 * Waits until every session of `pool` started since log line `from` has ended (the daemon logs the
 * end a moment after the client exits), then sums their lines.
 */
export async function sessionsSince(b: BenchRig, pool: string, from: number): Promise<SessionsSeen> {
  const mine = (msg: string): LogLine[] => b.daemon.lines.slice(from).filter((l) => l.user === pool && l.msg === msg);
  await b.daemon.waitFor(() => mine('session ended').length >= mine('session started').length);
  const wire = { up: 0, down: 0 };
  let biggest: LogLine | undefined;
  const size = (l: LogLine): number => Number(l.up) + Number(l.down);
  for (const l of mine('session ended')) {
    wire.up += Number(l.wireUp ?? l.up ?? 0);
    wire.down += Number(l.wireDown ?? l.down ?? 0);
    if (!biggest || size(l) > size(biggest)) biggest = l;
  }
  const zstd = biggest?.zstd as SessionsSeen['settled'] | undefined;
  return { wire, ...(zstd ? { settled: zstd } : {}) };
}
