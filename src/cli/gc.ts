/** `gc`: the daemon's sweep, on demand. */
import type { Config } from '../core/config.js';
import { instanceSelector, LABEL_POOL } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import { loadToken } from '../core/token.js';
import { isRecordOf, peekState } from '../daemon/state.js';
import { removeVolume, unusedVolumes } from '../daemon/store-volumes.js';
import { deletePolicyOf, type DeletionRecord } from '../daemon/deletions.js';
import { describeReason, whatMustGo } from '../daemon/sweep-rule.js';
import { deleteServers, describeServer, parseWait, WAIT_OPTION } from './delete-servers.js';
import { defineCommand } from './command.js';
import { cloudClient, openConfig, say } from './common.js';

/**
 * `gc`: the daemon's sweep rule, on demand. Deletes this instance's servers that the state does
 * not know, whose pool is not configured, or that are past twice their pool's maxLifetime; lists
 * each one with why; `dryRun` only lists.
 */
export async function garbageCollect(
  config: Config,
  token: string,
  log: Logger,
  say: (line: string) => void,
  dryRun: boolean,
  waitMs: number,
): Promise<{ count: number; left: DeletionRecord[] }> {
  const hcloud = cloudClient(config, token, log);
  const { state, problem } = peekState(config.stateDir);
  if (problem) say(`${problem}: every labelled server counts as unknown`);
  const servers = await hcloud.listServers({ labelSelector: instanceSelector(config.instance) });
  // The sweep rule, knowing no session: only the hard lifetime cap applies to known servers.
  const candidates = servers.map((server) => ({
    subject: server,
    created: server.created,
    known: state?.workers.some((w) => isRecordOf(w, server)) ?? false,
    pool: config.pools[server.labels[LABEL_POOL] ?? ''],
  }));
  const doomed = whatMustGo(candidates, Date.now()).map(({ subject, reason }) => ({ server: subject, reason: describeReason(reason) }));
  for (const { server, reason } of doomed) {
    say(`${dryRun ? 'would delete' : 'deleting'} ${describeServer(server)}: ${reason}`);
  }
  if (dryRun) return { count: doomed.length, left: [] };
  const left = await deleteServers(
    config,
    hcloud,
    log,
    say,
    doomed.map(({ server, reason }) => ({ server, reason: `gc: ${reason}` })),
    waitMs,
  );
  return { count: doomed.length - left.length, left };
}

/**
 * This instance's volumes that no configured pool slot uses: listed, and deleted only with
 * `remove` (a volume is a warm store, and its data is gone for good once deleted).
 */
export async function collectVolumes(
  config: Config,
  token: string,
  log: Logger,
  say: (line: string) => void,
  remove: boolean,
  waitMs: number,
): Promise<number> {
  const hcloud = cloudClient(config, token, log);
  const unused = unusedVolumes(config.pools, await hcloud.listVolumes({ labelSelector: instanceSelector(config.instance) }));
  for (const { volume, reason } of unused) {
    say(
      `${remove ? 'deleting' : 'unused'} volume ${volume.name} (id ${volume.id}, ${volume.size} GB in ${volume.location.name}): ${reason}`,
    );
  }
  if (!remove) return unused.length;
  await Promise.all(unused.map(({ volume }) => removeVolume(hcloud, volume.id, { waitMs, policy: deletePolicyOf(config) })));
  return unused.length;
}

export const gc = defineCommand({
  name: 'gc',
  synopsis: '[--dry-run] [--volumes] [--wait DURATION]',
  summary:
    "delete this instance's servers that the state does not know or that outlived their pool's hard lifetime (2 × maxLifetime), naming each and why",
  options: {
    'dry-run': { type: 'boolean', description: 'only list them' },
    volumes: {
      type: 'boolean',
      description: 'also delete the store volumes that no configured pool slot uses (without it they are only listed)',
    },
    wait: WAIT_OPTION,
  },
  async run(o, { configFile }) {
    const { config, log } = openConfig(configFile);
    const dryRun = o.dryRun === true;
    const token = loadToken(config).token;
    const waitMs = parseWait(o.wait);
    const { count, left } = await garbageCollect(config, token, log, say, dryRun, waitMs);
    say(`${dryRun ? 'would delete' : 'deleted'} ${count} server(s)`);
    if (left.length > 0)
      say(
        `${left.length} server(s) still there (they bill): ${left.map((d) => d.name).join(', ')}; run gc again, or let the daemon's sweep delete them`,
      );
    const remove = o.volumes === true && !dryRun;
    const volumes = await collectVolumes(config, token, log, say, remove, waitMs);
    if (volumes > 0) say(remove ? `deleted ${volumes} volume(s)` : `${volumes} unused volume(s); gc --volumes deletes them`);
    return left.length > 0 ? 1 : 0;
  },
});
