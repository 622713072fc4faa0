/** `down`: delete every server of this instance now, whether or not the daemon runs. */
import type { Config } from '../core/config.js';
import { instanceSelector } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import { loadToken } from '../core/token.js';
import { StateFile } from '../daemon/state.js';
import { removeVolume } from '../daemon/store-volumes.js';
import { deletePolicyOf, type DeletionRecord } from '../daemon/deletions.js';
import { deleteServers, describeServer, parseWait, WAIT_OPTION } from './delete-servers.js';
import { defineCommand } from './command.js';
import { cloudClient, openConfig, say } from './common.js';

/**
 * Deletes every server labelled as this instance's, retrying for up to `waitMs`; answers the
 * deletions still failing then. When no daemon holds the state folder, the state's workers are
 * emptied and the servers left are kept as pending deletes, so the next start goes on with them;
 * a running daemon notices the loss of its workers by itself, and its sweep finds the rest.
 */
export async function deleteAllServers(
  config: Config,
  token: string,
  log: Logger,
  say: (line: string) => void,
  waitMs: number,
): Promise<{ deleted: number; left: DeletionRecord[] }> {
  const hcloud = cloudClient(config, token, log);
  const servers = await hcloud.listServers({ labelSelector: instanceSelector(config.instance) });
  for (const server of servers) say(`deleting ${describeServer(server)}`);
  const left = await deleteServers(
    config,
    hcloud,
    log,
    say,
    servers.map((server) => ({ server, reason: 'down' })),
    waitMs,
  );
  try {
    const { state } = await StateFile.open(config.stateDir, config.instance);
    state.data.workers = [];
    const pending = state.data.deletions ?? [];
    state.data.deletions = [...pending.filter((p) => !left.some((l) => l.id === p.id)), ...left];
    await state.save();
    await state.close();
  } catch (err) {
    say(`state left as it is: ${(err as Error).message}`);
  }
  return { deleted: servers.length - left.length, left };
}

/** `down --volumes`: deletes every store volume of this instance (after its server is gone, or detached). */
export async function deleteAllVolumes(
  config: Config,
  token: string,
  log: Logger,
  say: (line: string) => void,
  waitMs: number,
): Promise<number> {
  const hcloud = cloudClient(config, token, log);
  const volumes = await hcloud.listVolumes({ labelSelector: instanceSelector(config.instance) });
  let failed = 0;
  await Promise.all(
    volumes.map(async (volume) => {
      say(`deleting volume ${volume.name} (id ${volume.id}, ${volume.size} GB in ${volume.location.name})`);
      try {
        await removeVolume(hcloud, volume.id, { waitMs, policy: deletePolicyOf(config) });
      } catch (err) {
        failed++;
        say(`could not delete volume ${volume.name}: ${(err as Error).message}`);
      }
    }),
  );
  if (failed > 0) throw new Error(`${failed} volume(s) could not be deleted; run down --volumes again`);
  return volumes.length;
}

export const down = defineCommand({
  name: 'down',
  synopsis: '[--volumes] [--wait DURATION]',
  summary: 'delete every server labelled with this instance now, whether or not the daemon runs',
  options: {
    volumes: { type: 'boolean', description: "also delete this instance's store volumes (the warm stores: their data is gone for good)" },
    wait: WAIT_OPTION,
  },
  async run(o, { configFile }) {
    const { config, log } = openConfig(configFile);
    const token = loadToken(config).token;
    const waitMs = parseWait(o.wait);
    const { deleted, left } = await deleteAllServers(config, token, log, say, waitMs);
    say(`deleted ${deleted} server(s)`);
    if (left.length > 0) {
      say(
        `${left.length} server(s) still there (they bill): ${left.map((d) => d.name).join(', ')}; run down again (a daemon started on this state folder goes on deleting them)`,
      );
      return 1;
    }
    if (o.volumes === true) say(`deleted ${await deleteAllVolumes(config, token, log, say, waitMs)} volume(s)`);
    return 0;
  },
});
