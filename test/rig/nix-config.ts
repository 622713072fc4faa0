/**
 * The rig's own Nix configuration (`nix-conf/nix.conf` beside this file, with the reason for each
 * setting): what every Nix process started by the tests, the demo and the benchmarks reads,
 * whatever this machine's /etc/nix says or whether it has one.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The folder clients get as NIX_CONF_DIR. */
export const RIG_NIX_CONF_DIR = join(dirname(fileURLToPath(import.meta.url)), 'nix-conf');
export const RIG_NIX_CONF_FILE = join(RIG_NIX_CONF_DIR, 'nix.conf');

/** The rig's nix.conf, without the settings named in `omit` (a test that sets them itself). */
export function rigNixConf(omit: string[] = []): string {
  return readFileSync(RIG_NIX_CONF_FILE, 'utf8')
    .split('\n')
    .filter((line) => !omit.includes(line.split('=')[0]?.trim() ?? ''))
    .join('\n');
}

/**
 * `env` pointed at the rig's configuration: NIX_CONF_DIR replaces /etc/nix, an empty
 * NIX_USER_CONF_FILES replaces ~/.config/nix/nix.conf, and the variables through which the
 * machine's environment could change settings or the store are dropped.
 */
export function rigNixEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...env, NIX_CONF_DIR: RIG_NIX_CONF_DIR, NIX_USER_CONF_FILES: '' };
  for (const name of ['NIX_CONFIG', 'NIX_REMOTE', 'NIX_STORE_DIR', 'NIX_STATE_DIR', 'NIX_SSHOPTS', 'NIX_PATH']) delete out[name];
  return out;
}

/**
 * Points this process, and so every child it starts from now on, at the rig's configuration.
 * The rig, the demo, the benchmarks and the tests that run Nix without the rig call it first.
 */
export function useRigNixConfig(): void {
  const env = rigNixEnv();
  for (const name of Object.keys(process.env)) if (!(name in env)) delete process.env[name];
  Object.assign(process.env, env);
}
