/**
 * Server deletes of the one-shot commands (`down`, `gc`): through the daemon's deletion queue and
 * its retry policy, for a bounded time; what is still there then is named, and the command fails.
 */
import type { Config } from '../core/config.js';
import { formatDuration, parseDuration } from '../core/duration.js';
import type { Logger } from '../core/log.js';
import { deletePolicyOf, deleteServersWithin, type DeletionRecord } from '../daemon/deletions.js';
import type { HcloudClient } from '../hcloud/client.js';
import type { Server } from '../hcloud/types.js';
import { UsageError } from './common.js';

/** How long `down` and `gc` keep trying when `--wait` is not given. */
export const DEFAULT_DELETE_WAIT = '5m';

export const WAIT_OPTION = {
  type: 'string',
  value: 'DURATION',
  description: 'how long to keep retrying deletes that fail (423 locked, 429, 5xx) before giving up and exiting 1',
  default: DEFAULT_DELETE_WAIT,
} as const;

export function parseWait(value: string | undefined): number {
  try {
    return parseDuration(value ?? DEFAULT_DELETE_WAIT);
  } catch (err) {
    throw new UsageError(`--wait: ${(err as Error).message}`);
  }
}

/** A server as the commands name it: name, id, type and location. */
export function describeServer(server: Server): string {
  return `${server.name} (id ${server.id}, ${server.server_type.name} in ${server.location.name})`;
}

/** Deletes the servers, retrying for up to `waitMs`; answers those still there, each said. */
export async function deleteServers(
  config: Config,
  hcloud: HcloudClient,
  log: Logger,
  say: (line: string) => void,
  servers: { server: Server; reason: string }[],
  waitMs: number,
): Promise<DeletionRecord[]> {
  const left = await deleteServersWithin(
    {
      hcloud,
      log,
      policy: deletePolicyOf(config),
    },
    servers.map(({ server, reason }) => ({ id: server.id, name: server.name, reason })),
    waitMs,
  );
  for (const d of left) {
    say(
      `not deleted after ${formatDuration(waitMs)}: ${d.name} (id ${d.id}), ${d.failures} failed attempts, last error: ${d.lastError ?? 'none'}`,
    );
  }
  return left;
}
