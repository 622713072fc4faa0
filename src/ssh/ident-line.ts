/**
 * The first line a client sends: its SSH identification line (RFC 4253 4.2), "SSH-2.0-…" and at
 * most 255 bytes with its CR LF. Only a server may send other lines before it, so a client whose
 * first line is anything else is not an SSH client, and OpenSSH's sshd drops it at once. ssh2
 * would wait for up to 8 KiB of a line without a newline, so the endpoint looks at the first bytes
 * itself and drops such a client at once instead of at the login grace time.
 */
import type { Socket } from 'node:net';

/** RFC 4253's limit on the identification line, CR LF included. */
export const MAX_IDENT_LINE = 255;

const PREFIX = Buffer.from('SSH-');

/** What the first bytes say: a valid start, an invalid one (why), or not enough yet. */
export type IdentVerdict = { valid: true } | { valid: false; why: string } | undefined;

/** Judges the first bytes a client sent (all of them so far, or at least the first MAX_IDENT_LINE). */
export function judgeIdentLine(first: Buffer): IdentVerdict {
  const head = Math.min(first.length, PREFIX.length);
  if (!first.subarray(0, head).equals(PREFIX.subarray(0, head))) return { valid: false, why: 'the first line does not start with "SSH-"' };
  const end = first.subarray(0, MAX_IDENT_LINE).indexOf(0x0a);
  if (end >= 0) return { valid: true };
  if (first.length >= MAX_IDENT_LINE) return { valid: false, why: `no end of line within the first ${MAX_IDENT_LINE} bytes` };
  return undefined;
}

/**
 * Watches the first bytes arriving on `socket` beside whoever else reads it, and calls `onInvalid`
 * as soon as they cannot be an identification line. Stops watching once the line is complete.
 */
export function watchIdentLine(socket: Socket, onInvalid: (why: string) => void): void {
  let first = Buffer.alloc(0);
  const onData = (chunk: Buffer): void => {
    first = Buffer.concat([first, chunk.subarray(0, MAX_IDENT_LINE - first.length)]);
    const verdict = judgeIdentLine(first);
    if (verdict === undefined) return;
    socket.removeListener('data', onData);
    if (!verdict.valid) onInvalid(verdict.why);
  };
  socket.on('data', onData);
}
