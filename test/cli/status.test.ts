import t from 'tap';
import { formatStatus, type StatusRow } from '../../src/cli/status.js';

const row = (over: Partial<StatusRow>): StatusRow => ({
  id: 7,
  name: 'nhb-x86-64-1',
  pool: 'x86_64',
  phase: 'ready',
  serverType: 'ccx33',
  location: 'fsn1',
  activeSessions: 0,
  createdAt: new Date().toISOString(),
  ...over,
});

t.test("the workers' table says what their compressed sessions settled on, up and down", async (t) => {
  const text = formatStatus({
    workers: [
      row({ zstd: { up: 'level 7', down: 'pass-through' } }),
      row({ id: 8, name: 'nhb-x86-64-2' }),
      row({ id: 9, name: 'nhb-3', zstd: { up: 'level -2' } }),
    ],
    deletions: [],
    spentThisMonthEur: 0,
  });
  const lines = text.split('\n');
  t.match(lines[0], /SESSIONS +ZSTD UP\/DOWN +AGE/);
  t.match(lines[1], /ready .* 0 +7\/raw +\d+s/, 'level 7 up, pass-through down');
  t.match(lines[2], /ready .* 0 +- +\d+s/, 'a worker without compressed sessions: -');
  t.match(lines[3], /ready .* 0 +-2\/- +\d+s/, 'a direction not known yet: -');
});
