/**
 * Lix 2.93.0's way to start the remote program: it execs `bash`, writes `echo started`, waits for
 * `started` on stdout, then writes `exec nix-daemon --stdio` (or `exec nix-store --serve --write`)
 * and speaks the protocol right after that line. No shell runs here: the endpoint reads those two
 * lines itself, accepts exactly that form, and judges the exec line with the same allow-list as a
 * direct exec. Everything after the second newline is the protocol's first bytes.
 *
 * A state machine over the channel's bytes, so it is tested without a channel.
 */
import { CommandRefused, parseNixCommand, type NixCommand } from './nix-command.js';

/** The exec request that starts this form. Nothing else (no `sh`, no `bash -c …`). */
export const SHELL_BOOTSTRAP_COMMAND = 'bash';
const FIRST_LINE = 'echo started';
/** What a real `echo started` would print. */
export const STARTED_ANSWER = 'started\n';
const EXEC_PREFIX = 'exec ';
/** Longer lines are refused before they are buffered further (Lix's lines are well below 200 bytes). */
export const MAX_BOOTSTRAP_LINE = 4096;

export interface BootstrapProgress {
  /** Set once, on the push that completed `echo started`: answer `started\n` on stdout now. */
  answerStarted: boolean;
  /** Set on the push that completed the exec line. */
  done?: { command: NixCommand; rest: Buffer };
}

export class ShellBootstrap {
  private buffered: Buffer = Buffer.alloc(0);
  private sawFirstLine = false;
  private finished = false;

  constructor(private readonly maxLine = MAX_BOOTSTRAP_LINE) {}

  /** Feeds bytes from the client's stdin; throws CommandRefused on anything but the expected lines. */
  push(chunk: Buffer): BootstrapProgress {
    if (this.finished) throw new Error('ShellBootstrap: push after the command was read');
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    const progress: BootstrapProgress = { answerStarted: false };
    for (;;) {
      const nl = this.buffered.indexOf(0x0a);
      if (nl < 0) {
        if (this.buffered.length > this.maxLine) throw new CommandRefused(`shell input line is longer than ${this.maxLine} bytes`);
        return progress;
      }
      if (nl > this.maxLine) throw new CommandRefused(`shell input line is longer than ${this.maxLine} bytes`);
      const line = this.buffered.subarray(0, nl).toString('latin1');
      this.buffered = this.buffered.subarray(nl + 1);
      if (!this.sawFirstLine) {
        if (line !== FIRST_LINE) throw new CommandRefused(`shell input ${JSON.stringify(line.slice(0, 80))} is not "${FIRST_LINE}"`);
        this.sawFirstLine = true;
        progress.answerStarted = true;
        continue;
      }
      progress.done = { command: parseExecLine(line), rest: Buffer.from(this.buffered) };
      this.finished = true;
      this.buffered = Buffer.alloc(0);
      return progress;
    }
  }

  /** The client's stdin ended before the exec line: always a refusal. */
  end(): never {
    throw new CommandRefused(this.sawFirstLine ? 'shell input ended before the exec line' : `shell input ended before "${FIRST_LINE}"`);
  }
}

/** `exec <command>`: the command goes through the same allow-list as a direct exec request. */
export function parseExecLine(line: string): NixCommand {
  if (!line.startsWith(EXEC_PREFIX))
    throw new CommandRefused(
      `shell input ${JSON.stringify(line.slice(0, 80))} is not "exec nix-daemon --stdio" or "exec nix-store --serve …"`,
    );
  return parseNixCommand(line.slice(EXEC_PREFIX.length));
}

/** The two lines come at once in practice; a client that stalls between them is dropped. */
export const SHELL_BOOTSTRAP_TIMEOUT_MS = 10_000;

/** What reading the lines needs of the client's channel (an ssh2 ServerChannel). */
export interface BootstrapChannel {
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  on(event: 'end' | 'close', listener: () => void): unknown;
  removeListener(event: 'data', listener: (chunk: Buffer) => void): unknown;
  removeListener(event: 'end' | 'close', listener: () => void): unknown;
  pause(): unknown;
  unshift(chunk: Buffer): void;
  write(data: string): unknown;
}

/**
 * Reads `echo started` and the exec line from the channel, answers `started`, and resolves with
 * the parsed command. The channel is left paused, with the bytes after the exec line put back in
 * front of its stream for the session pipe. Rejects with CommandRefused on anything else, on EOF,
 * on close and after `timeoutMs`.
 */
export function readShellBootstrap(channel: BootstrapChannel, timeoutMs = SHELL_BOOTSTRAP_TIMEOUT_MS): Promise<NixCommand> {
  return new Promise((resolve, reject) => {
    const parser = new ShellBootstrap();
    let settled = false;
    const settle = (err: unknown, command?: NixCommand): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      channel.removeListener('data', onData);
      channel.removeListener('end', onEnd);
      channel.removeListener('close', onClose);
      channel.pause();
      if (command) resolve(command);
      else reject(err);
    };
    const onData = (chunk: Buffer): void => {
      if (settled) return;
      let progress: BootstrapProgress;
      try {
        progress = parser.push(chunk);
      } catch (err) {
        settle(err);
        return;
      }
      if (progress.answerStarted) channel.write(STARTED_ANSWER);
      if (progress.done) {
        // Paused before the bytes go back: the pipe's own 'data' listener receives them first.
        channel.pause();
        if (progress.done.rest.length > 0) channel.unshift(progress.done.rest);
        settle(undefined, progress.done.command);
      }
    };
    const onEnd = (): void => {
      try {
        parser.end();
      } catch (err) {
        settle(err);
      }
    };
    const onClose = (): void => settle(new CommandRefused('the client closed the session before the exec line'));
    const timer = setTimeout(() => settle(new CommandRefused(`no exec line within ${timeoutMs / 1000} s`)), timeoutMs);
    channel.on('data', onData);
    channel.on('end', onEnd);
    channel.on('close', onClose);
  });
}
