/**
 * The only commands a client may run through us: the two Nix remote-store programs.
 * The command sent on to the worker is rebuilt from the parsed form, never passed through raw:
 * the worker's sshd hands it to a shell, so `--store $(id)` must not run `id` anywhere.
 */
export type NixProgram = 'nix-daemon' | 'nix-store';

export interface NixCommand {
  program: NixProgram;
  /** The program as given when it was a path in the Nix store (remote-program=/nix/store/…/bin/nix-daemon). */
  programPath?: string;
  mode: 'daemon' | 'serve';
  write: boolean;
  store?: string;
}

export class CommandRefused extends Error {
  override name = 'CommandRefused';
}

const MAX_COMMAND_LENGTH = 4096;
/**
 * A program given as a path must be a file of a store path: /nix/store/<hash>-<name>/…/nix-daemon.
 * Nothing else on the worker is trusted to be Nix: with a warm store, a binary someone left on
 * the volume outside the store would run in every later worker. No component starts with "."
 * (so no "." or ".."); the hash is Nix's base-32. worker/zstd-relay.py checks the same in string
 * tests (a test runs both on the same cases, every character among them).
 */
export const PROGRAM_PATH =
  /^\/nix\/store\/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+_=-][A-Za-z0-9+._=-]*(?:\/[A-Za-z0-9+_=-][A-Za-z0-9+._=-]*)*\/(nix-daemon|nix-store)$/;
// No quote, `$`, `;`, parentheses or backquote: even though the value is re-quoted, there is no reason to carry them.
export const STORE_URI = /^[A-Za-z0-9._~:/?#@&+,=%-]+$/;

/** Splits like a shell would for plain words and quoted words; anything that a shell would expand is refused. */
function words(command: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < command.length) {
    const c = command[i] as string;
    if (c === ' ' || c === '\t') {
      i++;
      continue;
    }
    let word = '';
    while (i < command.length && command[i] !== ' ' && command[i] !== '\t') {
      const ch = command[i] as string;
      if (ch === "'") {
        const end = command.indexOf("'", i + 1);
        if (end < 0) throw new CommandRefused('unbalanced quote');
        word += command.slice(i + 1, end);
        i = end + 1;
      } else if (ch === '"') {
        const end = command.indexOf('"', i + 1);
        if (end < 0) throw new CommandRefused('unbalanced quote');
        const inner = command.slice(i + 1, end);
        if (/[$`\\!]/.test(inner)) throw new CommandRefused('shell expansion is not allowed');
        word += inner;
        i = end + 1;
      } else if (/[A-Za-z0-9._+/=:@%,~?-]/.test(ch)) {
        word += ch;
        i++;
      } else {
        throw new CommandRefused(`character ${JSON.stringify(ch)} is not allowed`);
      }
    }
    out.push(word);
  }
  return out;
}

export function parseNixCommand(command: string): NixCommand {
  if (command.length > MAX_COMMAND_LENGTH) throw new CommandRefused(`command is longer than ${MAX_COMMAND_LENGTH} bytes`);
  const argv = words(command);
  const first = argv.shift();
  if (!first) throw new CommandRefused('empty command');
  let program: NixProgram;
  let programPath: string | undefined;
  const pathMatch = PROGRAM_PATH.exec(first);
  if (first === 'nix-daemon' || first === 'nix-store') program = first;
  else if (pathMatch) {
    program = pathMatch[1] as NixProgram;
    programPath = first;
  } else if (first.startsWith('/')) {
    throw new CommandRefused(
      `program ${JSON.stringify(first.slice(0, 80))} is not nix-daemon or nix-store in the Nix store (/nix/store/<hash>-<name>/bin/…)`,
    );
  } else throw new CommandRefused(`program ${JSON.stringify(first.slice(0, 80))} is not a Nix remote-store program`);

  const result: NixCommand = { program, mode: program === 'nix-daemon' ? 'daemon' : 'serve', write: false };
  if (programPath) result.programPath = programPath;
  let sawMode = false;
  while (argv.length > 0) {
    const arg = argv.shift() as string;
    if (arg === '--stdio' && program === 'nix-daemon' && !sawMode) sawMode = true;
    else if (arg === '--serve' && program === 'nix-store' && !sawMode) sawMode = true;
    else if (arg === '--write' && program === 'nix-store' && !result.write) result.write = true;
    else if (arg === '--store' && result.store === undefined) {
      const store = argv.shift();
      if (!store || !STORE_URI.test(store) || store.length > 1024) throw new CommandRefused('--store needs a store URI');
      result.store = store;
    } else throw new CommandRefused(`argument ${JSON.stringify(arg.slice(0, 80))} is not allowed`);
  }
  if (!sawMode) throw new CommandRefused(program === 'nix-daemon' ? 'nix-daemon needs --stdio' : 'nix-store needs --serve');
  return result;
}

function shellQuote(word: string): string {
  return /^[A-Za-z0-9._+/=:@%,-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** The command's words, built only from parsed, checked parts. */
export function nixArgv(cmd: NixCommand): string[] {
  const parts = [cmd.programPath ?? cmd.program, cmd.mode === 'daemon' ? '--stdio' : '--serve'];
  if (cmd.write) parts.push('--write');
  if (cmd.store !== undefined) parts.push('--store', cmd.store);
  return parts;
}

/** The command line for the worker's shell. */
export function renderNixCommand(cmd: NixCommand): string {
  return nixArgv(cmd).map(shellQuote).join(' ');
}
