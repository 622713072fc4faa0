/** What every command shares: `--config` and `--help`, the config file's default, usage errors, the config and logger. */
import { loadConfig, type Config } from '../core/config.js';
import { UserError } from '../core/errors.js';
import { createLogger, type Logger } from '../core/log.js';
import { loadToken } from '../core/token.js';
import { HcloudClient } from '../hcloud/client.js';
import type { OptionSpecs } from './command.js';

export const PROGRAM = 'nix-hcloud-builder';

export const COMMON_OPTIONS = {
  config: {
    type: 'string',
    short: 'c',
    value: 'FILE',
    description: 'config file',
    default: '$NIX_HCLOUD_BUILDER_CONFIG or ~/.config/nix-hcloud-builder/config.json',
  },
  help: { type: 'boolean', short: 'h', description: 'this text' },
} as const satisfies OptionSpecs;

/** A command line that cannot be parsed: one line, exit status 2. */
export class UsageError extends UserError {
  override name = 'UsageError';
  override readonly exitCode = 2;
}

export function defaultConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.NIX_HCLOUD_BUILDER_CONFIG) return env.NIX_HCLOUD_BUILDER_CONFIG;
  const base = env.XDG_CONFIG_HOME || `${env.HOME ?? ''}/.config`;
  return `${base}/nix-hcloud-builder/config.json`;
}

/** The config (checked) and a logger at its level. */
export function openConfig(configFile: string): { config: Config; log: Logger } {
  const config = loadConfig(configFile);
  return { config, log: createLogger({ level: config.log.level }) };
}

/** The API token, or undefined when there is none (for commands that work without the API). */
export function tryToken(config: Config): string | undefined {
  try {
    return loadToken(config).token;
  } catch {
    return undefined;
  }
}

/** Writes a line to stdout (results; progress goes to stderr). */
export function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** The Hetzner API client of a one-shot command, for this config's endpoint. */
export function cloudClient(config: Config, token: string, log: Logger): HcloudClient {
  return new HcloudClient({ endpoint: config.hcloud.endpoint, token, logger: log });
}
