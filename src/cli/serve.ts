/** `serve`: run the endpoint until SIGTERM/SIGINT, then stop gracefully. */
import { loadToken } from '../core/token.js';
import { Daemon } from '../daemon/daemon.js';
import { defineCommand } from './command.js';
import { openConfig } from './common.js';

export const serve = defineCommand({
  name: 'serve',
  synopsis: '[--keep-workers]',
  summary:
    'run the endpoint Nix builds through, until SIGTERM/SIGINT: then stop listening, let running sessions finish for up to shutdownGrace (a second signal ends them at once) and delete every worker',
  options: {
    'keep-workers': { type: 'boolean', description: 'leave the workers running on stop (a later start adopts them)' },
  },
  async run(o, { configFile }) {
    const { config, log } = openConfig(configFile);
    const token = loadToken(config);
    if (token.warning) log.warn(token.warning);
    log.info({ tokenSource: token.source, instance: config.instance }, 'starting');
    const daemon = new Daemon({ config, token: token.token, log });
    await daemon.start();
    let lost = false;
    await new Promise<void>((resolve) => {
      let signals = 0;
      const onSignal = (signal: NodeJS.Signals): void => {
        signals++;
        if (signals > 1) {
          log.info({ signal }, 'second signal: ending running sessions now; workers are still deleted');
          daemon.skipGrace();
          return;
        }
        log.info({ signal }, 'stopping');
        void daemon.stop(o.keepWorkers === true).then(resolve, (err: unknown) => {
          log.error({ err }, 'stop failed');
          process.exitCode = 1;
          resolve();
        });
      };
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
      // Another daemon took the instance over: stop (its own workers are still deleted) and fail.
      daemon.onInstanceLost(() => {
        lost = true;
        onSignal('SIGTERM');
      });
    });
    return lost ? 1 : 0;
  },
});
