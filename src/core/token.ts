/** Finds the Hetzner API token: HCLOUD_TOKEN wins, then hcloud.tokenFile, then hcloud.tokenCommand. */
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import type { Config } from './config.js';
import { UserError } from './errors.js';

export class TokenError extends UserError {
  override name = 'TokenError';
}

export interface TokenSource {
  token: string;
  /** Where it came from, for log lines (never the token itself). */
  source: string;
  /** Set when the token file can be read by other users. */
  warning?: string;
}

export function loadToken(config: Config, env: NodeJS.ProcessEnv = process.env): TokenSource {
  const fromEnv = env.HCLOUD_TOKEN?.trim();
  if (fromEnv) return { token: fromEnv, source: 'environment variable HCLOUD_TOKEN' };

  const { tokenFile, tokenCommand } = config.hcloud;
  if (tokenFile) {
    let text: string;
    try {
      text = readFileSync(tokenFile, 'utf8');
    } catch (err) {
      throw new TokenError(
        `cannot read the Hetzner API token file ${tokenFile} (hcloud.tokenFile): ${(err as NodeJS.ErrnoException).code ?? 'error'}`,
      );
    }
    const token = text.trim();
    if (!token) throw new TokenError(`the Hetzner API token file ${tokenFile} (hcloud.tokenFile) is empty`);
    const result: TokenSource = { token, source: `file ${tokenFile}` };
    if ((statSync(tokenFile).mode & 0o077) !== 0) {
      result.warning = `the token file ${tokenFile} can be read by other users: chmod 600 it`;
    }
    return result;
  }
  if (tokenCommand) {
    let out: string;
    try {
      // stderr is not captured into the error: a failing secret tool may print the secret there.
      out = execFileSync('/bin/sh', ['-c', tokenCommand], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 30_000 });
    } catch (err) {
      const status = (err as { status?: number }).status;
      throw new TokenError(`hcloud.tokenCommand failed${status === undefined ? '' : ` with exit status ${status}`}`);
    }
    const token = out.trim();
    if (!token) throw new TokenError('hcloud.tokenCommand printed no token');
    return { token, source: 'hcloud.tokenCommand' };
  }
  throw new TokenError('no Hetzner API token: set HCLOUD_TOKEN, or hcloud.tokenFile or hcloud.tokenCommand in the config');
}
