/** The endpoint's own keys: its host key (made on first start) and the client keys it lets in. */
import { existsSync, readFileSync } from 'node:fs';
import { writeFileAtomic } from '../core/atomic-file.js';
import type { Config } from '../core/config.js';
import { generateKeyPair, hostKeyPaths } from '../ssh/keys.js';

/** The endpoint's host key, made on first start; its public line goes into the machines file. */
export function ensureHostKey(stateDir: string): { privateKey: string; publicKey: string } {
  const paths = hostKeyPaths(stateDir);
  if (!existsSync(paths.privateKey)) {
    const pair = generateKeyPair('nix-hcloud-builder');
    writeFileAtomic(paths.privateKey, pair.privateKey, 0o600);
    writeFileAtomic(paths.publicKey, `${pair.publicKey}\n`, 0o644);
  }
  return { privateKey: readFileSync(paths.privateKey, 'utf8'), publicKey: readFileSync(paths.publicKey, 'utf8').trim() };
}

/** The authorized keys' lines: the config's `authorizedKeys`, then those of `authorizedKeysFile`. */
export function loadAuthorizedKeys(config: Config): string[] {
  const lines = [...config.authorizedKeys];
  if (config.authorizedKeysFile) {
    try {
      lines.push(...readFileSync(config.authorizedKeysFile, 'utf8').split('\n'));
    } catch (err) {
      throw new Error(
        `cannot read authorizedKeysFile ${config.authorizedKeysFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      );
    }
  }
  return lines;
}
