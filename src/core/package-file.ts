/**
 * Files shipped with the package besides the code (worker/zstd-relay.py, say), found from this
 * module's own place: it is src/core/ under tsx and dist/src/core/ when built, so the package's
 * root is the nearest folder above with our package.json.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | undefined;

export function packageRoot(): string {
  if (root !== undefined) return root;
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest) && (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: unknown }).name === 'nix-hcloud-builder')
      return (root = dir);
    if (dirname(dir) === dir) throw new Error('cannot find the nix-hcloud-builder package folder above its code');
  }
}

const texts = new Map<string, string>();

/** The text of a file shipped with the package, by its path from the package's root; read once (it does not change while we run). */
export function readPackageFile(relative: string): string {
  let text = texts.get(relative);
  if (text === undefined) texts.set(relative, (text = readFileSync(join(packageRoot(), relative), 'utf8')));
  return text;
}
