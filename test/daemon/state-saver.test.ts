/** The state file's writes: at once when asked, one for a burst of changes otherwise. */
import t from 'tap';
import { createLogger } from '../../src/core/log.js';
import type { StateFile } from '../../src/daemon/state.js';
import { StateSaver } from '../../src/daemon/state-saver.js';

const log = createLogger({ level: 'silent' });

function file(): { state: StateFile; writes: unknown[] } {
  const writes: unknown[] = [];
  const data = { workers: [], deletions: [] } as unknown as StateFile['data'];
  const state = {
    data,
    save: () => {
      writes.push(JSON.parse(JSON.stringify(data)) as unknown);
      return Promise.resolve();
    },
  } as unknown as StateFile;
  return { state, writes };
}

t.test('save writes what the daemon holds now; a burst of schedules is one write', async (t) => {
  const { state, writes } = file();
  let generation = 0;
  const saver = new StateSaver(state, () => ({ workers: [], deletions: [{ id: generation, name: `s${generation}` }] as never }), log);
  await saver.save();
  t.equal(writes.length, 1);
  for (generation = 1; generation <= 3; generation++) saver.schedule();
  t.equal(writes.length, 1, 'nothing written before the next turn');
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(writes.length, 2);
  t.same((writes[1] as { deletions: { id: number }[] }).deletions, [{ id: 4, name: 's4' }], 'the write has the latest');
  saver.schedule();
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(writes.length, 3, 'a later change is written again');
});
