/** `down`: delete every server of this instance now, whether or not the daemon runs. */
import type { Config } from '../core/config.js';
import { instanceSelector } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import { loadToken } from '../core/token.js';
import { StateFile } from '../daemon/state.js';
import { removeVolume } from '../daemon/store-volumes.js';
import { defineCommand } from './command.js';
import { cloudClient, openConfig, say } from './common.js';

/**
 * Deletes every server labelled as this instance's. When no daemon holds the state folder, the
 * state is emptied as well; a running daemon notices the loss of its workers by itself.
 */
export async function deleteAllServers(config: Config, token: string, log: Logger, say: (line: string) => void): Promise<number> {
  const hcloud = cloudClient(config, token, log);
  const servers = await hcloud.listServers({ labelSelector: instanceSelector(config.instance) });
  let deleted = 0;
  await Promise.all(servers.map(async (server) => {
    say(`deleting ${server.name} (id ${server.id}, ${server.server_type.name} in ${server.location.name})`);
    if (await hcloud.deleteServerAndWait(server.id)) deleted++;
  }));
  try {
    const { state } = await StateFile.open(config.stateDir, config.instance);
    state.data.workers = [];
    await state.save();
    await state.close();
  } catch (err) {
    say(`state left as it is: ${(err as Error).message}`);
  }
  return deleted;
}

/** `down --volumes`: deletes every store volume of this instance (after its server is gone, or detached). */
export async function deleteAllVolumes(config: Config, token: string, log: Logger, say: (line: string) => void): Promise<number> {
  const hcloud = cloudClient(config, token, log);
  const volumes = await hcloud.listVolumes({ labelSelector: instanceSelector(config.instance) });
  let failed = 0;
  await Promise.all(volumes.map(async (volume) => {
    say(`deleting volume ${volume.name} (id ${volume.id}, ${volume.size} GB in ${volume.location.name})`);
    try {
      await removeVolume(hcloud, volume.id);
    } catch (err) {
      failed++;
      say(`could not delete volume ${volume.name}: ${(err as Error).message}`);
    }
  }));
  if (failed > 0) throw new Error(`${failed} volume(s) could not be deleted; run down --volumes again`);
  return volumes.length;
}

export const down = defineCommand({
  name: 'down',
  synopsis: '[--volumes]',
  summary: 'delete every server labelled with this instance now, whether or not the daemon runs',
  options: {
    volumes: { type: 'boolean', description: "also delete this instance's store volumes (the warm stores: their data is gone for good)" },
  },
  async run(o, { configFile }) {
    const { config, log } = openConfig(configFile);
    const token = loadToken(config).token;
    const deleted = await deleteAllServers(config, token, log, say);
    say(`deleted ${deleted} server(s)`);
    if (o.volumes === true) say(`deleted ${await deleteAllVolumes(config, token, log, say)} volume(s)`);
    return 0;
  },
});
