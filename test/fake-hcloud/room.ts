// What every room of the fake cloud (servers, volumes, images, …) shares: the options, the clock,
// the actions and the table of servers.

import type { ActionLog } from './actions.js';
import type { ResolvedOptions } from './options.js';
import type { ServerTable } from './server-record.js';
import type { Timers } from './timers.js';

export interface Room {
  readonly opts: ResolvedOptions;
  readonly timers: Timers;
  readonly actions: ActionLog;
  readonly servers: ServerTable;
}
