/** The daemon's config as its own user reads it, for `setup`, which runs as root. */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig, type Config } from '../core/config.js';
import { readText, splitLines } from './text.js';

/** Home folder of a user id, from /etc/passwd. */
function homeOf(uid: number): string | undefined {
  const passwd = readText('/etc/passwd') ?? '';
  for (const line of splitLines(passwd)) {
    const f = line.split(':');
    if (Number(f[2]) === uid && f[5]) return f[5];
  }
  return undefined;
}

/**
 * Loads the config the way the daemon's own user would: setup runs as root, while the daemon
 * (a user service) resolves `~` and its default state folder in its own home.
 */
export function loadConfigAsOwner(file: string): Config {
  const uid = existsSync(file) ? statSync(file).uid : process.getuid?.();
  const home = uid !== undefined && uid !== process.getuid?.() ? homeOf(uid) : undefined;
  if (!home) return loadConfig(file);
  const saved = process.env.HOME;
  process.env.HOME = home;
  try {
    return loadConfig(file, { ...process.env, XDG_STATE_HOME: join(home, '.local', 'state') });
  } finally {
    if (saved === undefined) delete process.env.HOME;
    else process.env.HOME = saved;
  }
}
