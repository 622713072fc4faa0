#!/usr/bin/env -S node --single-threaded-gc
// --single-threaded-gc: ssh2 allocates a Buffer or two per SSH packet, so the daemon collects
// young garbage all the time, and V8's helper threads for that cost more CPU than they save on a
// machine whose cores are busy with ssh and Nix: a third less CPU per GiB piped (bench/README.md).
// It must be on the command line (V8 crashes when GC flags change at run time, and NODE_OPTIONS
// refuses it); package.nix and test/rig/rig.ts take the flags from this line.
/**
 * nix-hcloud-builder COMMAND [options]: finds the command (`commands.ts`; each declares its own
 * options in its module), runs it, and turns its end into the exit status. An error that is the
 * user's to fix (`UserError`) is one line and its exit status; any other is a bug, and
 * NIX_HCLOUD_BUILDER_DEBUG adds its stack.
 */
import { UserError } from '../core/errors.js';
import { COMMANDS } from './commands.js';
import { PROGRAM } from './common.js';
import { parseCommandLine } from './parse.js';

async function main(argv: string[]): Promise<number> {
  const parsed = parseCommandLine(argv, COMMANDS);
  if (parsed.kind === 'help') {
    (parsed.exitCode === 0 ? process.stdout : process.stderr).write(parsed.text);
    return parsed.exitCode;
  }
  return parsed.command.run(parsed.values, parsed.context);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`${PROGRAM}: ${err instanceof Error ? err.message : String(err)}\n`);
    if (err instanceof UserError) {
      process.exitCode = err.exitCode;
      return;
    }
    if (process.env.NIX_HCLOUD_BUILDER_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    process.exitCode = 1;
  },
);
