/**
 * The realistic payload of the uplink and warm-store sections: files of this machine's binaries,
 * libraries and text, mixed by bytes, as a stand-in for the store paths a real build uploads.
 */
import { copyFileSync, lstatSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { MiB } from './lib.js';

/** Folders of this machine whose files make the realistic payload (those that exist), mixed by bytes. */
export const REALISTIC_SOURCES = [
  '/usr/lib/x86_64-linux-gnu',
  '/usr/lib/aarch64-linux-gnu',
  '/usr/bin',
  '/usr/share/perl',
  '/usr/share/perl5',
  '/usr/lib/python3',
  '/usr/include',
  '/usr/share/doc',
];

/** Copies files of the source folders into `folder` until it holds `bytes`, taking from whichever source has given least. */
export function makeRealistic(folder: string, bytes: number): number {
  const walkers = REALISTIC_SOURCES.filter((s) => {
    try {
      return lstatSync(s).isDirectory();
    } catch {
      return false;
    }
  }).map((root) => ({ root, stack: [root], given: 0, files: [] as string[] }));
  if (walkers.length === 0) throw new Error(`none of ${REALISTIC_SOURCES.join(', ')} exists`);
  const next = (w: (typeof walkers)[number]): string | undefined => {
    while (w.files.length === 0 && w.stack.length > 0) {
      const dir = w.stack.pop() as string;
      let entries: string[];
      try {
        entries = readdirSync(dir).sort();
      } catch {
        continue;
      }
      for (const e of entries.reverse()) {
        const p = join(dir, e);
        const st = lstatSync(p);
        if (st.isDirectory()) w.stack.push(p);
        else if (st.isFile() && st.size > 0) w.files.push(p);
      }
    }
    return w.files.pop();
  };
  let total = 0;
  let n = 0;
  while (total < bytes) {
    const open = walkers.filter((w) => w.stack.length > 0 || w.files.length > 0);
    if (open.length === 0) break;
    const w = open.reduce((a, c) => (c.given < a.given ? c : a));
    const file = next(w);
    if (!file) continue;
    const size = lstatSync(file).size;
    if (size > bytes - total + MiB) continue; // no single file much past the target
    copyFileSync(file, join(folder, `${String(n++).padStart(6, '0')}-${file.replaceAll('/', '_')}`));
    w.given += size;
    total += size;
  }
  return total;
}
