/** `up`: ask the running daemon to boot workers now, ahead of a big build. */
import { ConfigError } from '../core/config.js';
import { requestControl } from '../daemon/control.js';
import { defineCommand } from './command.js';
import { openConfig, say } from './common.js';

export const up = defineCommand({
  name: 'up',
  synopsis: '[POOL…] [--workers N]',
  summary:
    'have the running daemon boot N workers per pool (all pools when none is named) now, so the first build does not wait; they idle out as usual',
  options: {
    workers: { type: 'string', short: 'n', value: 'N', description: "workers per pool, at most the pool's maxWorkers", default: '1' },
  },
  operands: { min: 0, max: Infinity },
  async run(o, { configFile, operands }) {
    const workers = o.workers === undefined ? 1 : Number(o.workers);
    if (!Number.isInteger(workers) || workers < 1)
      throw new ConfigError(`--workers: expected a positive integer, got ${JSON.stringify(o.workers)}`);
    const { config } = openConfig(configFile);
    const ready = await requestControl(config.stateDir, { command: 'up', pools: operands, workers }, say);
    for (const [pool, count] of Object.entries(ready)) say(`${pool}: ${count} worker(s) ready`);
    return 0;
  },
});
