/** Reading and changing nix.conf the way `setup` needs: settings as Nix reads them, one option set with the least change. */
import { joinLines, splitLines } from './text.js';

/** The settings of a nix.conf (comments dropped, `extra-` settings appended to their base). */
export function parseNixConf(text: string): Map<string, string> {
  const settings = new Map<string, string>();
  for (const raw of splitLines(text)) {
    const line = raw.replace(/#.*/, '').trim();
    const m = /^([A-Za-z0-9_-]+)\s*=\s*(.*)$/.exec(line);
    if (!m) continue;
    const [, key, value] = m as unknown as [string, string, string];
    if (key.startsWith('extra-')) {
      const base = key.slice('extra-'.length);
      settings.set(base, `${settings.get(base) ?? ''} ${value}`.trim());
    } else {
      settings.set(key, value.trim());
    }
  }
  return settings;
}

/**
 * Sets one nix.conf option with the least change: every line that sets it is replaced (Nix takes
 * the last, and a stale one would confuse a reader), else a line is appended.
 */
export function setNixConfOption(text: string | null, key: string, value: string): string {
  const lines = splitLines(text ?? '');
  const setting = `${key} = ${value}`;
  const sets = (l: string): boolean => new RegExp(`^\\s*${key}\\s*=`).test(l);
  if (lines.some(sets)) return joinLines(lines.map((l) => (sets(l) ? setting : l)));
  return joinLines([...lines, setting]);
}
