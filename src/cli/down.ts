/** `down`: delete every server of this instance now, whether or not the daemon runs. */
import type { Config } from '../core/config.js';
import { instanceSelector } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import { loadToken } from '../core/token.js';
import { StateFile } from '../daemon/state.js';
import { HcloudClient } from '../hcloud/client.js';
import { defineCommand } from './command.js';
import { openConfig, say } from './common.js';

/**
 * Deletes every server labelled as this instance's. When no daemon holds the state folder, the
 * state is emptied as well; a running daemon notices the loss of its workers by itself.
 */
export async function deleteAllServers(config: Config, token: string, log: Logger, say: (line: string) => void): Promise<number> {
  const hcloud = new HcloudClient({ endpoint: config.hcloud.endpoint, token, logger: log });
  const servers = await hcloud.listServers({ labelSelector: instanceSelector(config.instance) });
  let deleted = 0;
  await Promise.all(servers.map(async (server) => {
    say(`deleting ${server.name} (id ${server.id}, ${server.server_type.name} in ${server.datacenter.location.name})`);
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

export const down = defineCommand({
  name: 'down',
  summary: 'delete every server labelled with this instance now, whether or not the daemon runs',
  options: {},
  async run(_o, { configFile }) {
    const { config, log } = openConfig(configFile);
    const deleted = await deleteAllServers(config, loadToken(config).token, log, say);
    say(`deleted ${deleted} server(s)`);
    return 0;
  },
});
