/** The warm store slot one worker holds, with a stand-in lease and link. */
import t from 'tap';
import { createLogger } from '../../src/core/log.js';
import { STORE_MARKER } from '../../src/daemon/store-script.js';
import type { StoreLease, StoreVolume, StoreVolumes } from '../../src/daemon/store-volumes.js';
import { WorkerStoreSlot } from '../../src/daemon/worker-store.js';
import type { CommandResult } from '../../src/ssh/worker-link.js';

const log = createLogger({ level: 'silent' });
const VOLUME: StoreVolume = { id: 7, name: 'nhb-laptop-x86-store-0', location: 'nbg1', slot: 0, sizeGb: 20 };

function lease(volume: StoreVolume | undefined = VOLUME): StoreLease & { released: number } {
  const held = {
    slot: 0,
    volume,
    released: 0,
    release: () => {
      held.released++;
    },
  };
  return held;
}

function slot(store?: Pick<StoreVolumes, 'acquire'>): { slot: WorkerStoreSlot; said: string[] } {
  const said: string[] = [];
  return { slot: new WorkerStoreSlot(store as StoreVolumes | undefined, log, (line) => said.push(line)), said };
}

function runner(code: number): { run: (command: string) => Promise<CommandResult>; connected: boolean; commands: string[] } {
  const commands: string[] = [];
  return {
    connected: true,
    commands,
    run: (command) => {
      commands.push(command);
      return Promise.resolve({ code, stdout: '', stderr: '' });
    },
  };
}

t.test('without the pool store the slot stays empty and flush runs nothing', async (t) => {
  const { slot: empty } = slot();
  await empty.acquire(new AbortController().signal);
  t.equal(empty.volume, undefined);
  const link = runner(0);
  await empty.flush(link);
  t.same(link.commands, []);
});

t.test('going cold gives the slot back and says where the volume is and what was tried', async (t) => {
  const held = lease();
  const { slot: warm, said } = slot({ acquire: () => Promise.resolve(held) });
  await warm.acquire(new AbortController().signal);
  t.equal(warm.volume, VOLUME);
  warm.goCold(['cx23 in nbg1 (resource_unavailable)']);
  t.equal(held.released, 1);
  t.equal(warm.volume, undefined);
  t.same(said, [
    'store volume nhb-laptop-x86-store-0 is in nbg1, which cannot take a server now (cx23 in nbg1 (resource_unavailable)); booting elsewhere with an empty store',
  ]);
  warm.goCold([]);
  t.equal(held.released, 1, 'once cold, nothing more to give back');
});

t.test('a store not on the volume is said; one on it is not', async (t) => {
  const { slot: warm, said } = slot();
  warm.hold(lease());
  await warm.check(runner(0), 7);
  t.same(said, []);
  const missing = runner(1);
  await warm.check(missing, 7);
  t.same(missing.commands, [`test -e ${STORE_MARKER}`]);
  t.match(said, [/^store volume 7 is attached but this worker's store is not on it/]);
});

t.test('the store is flushed before the delete, and the slot given back after it', async (t) => {
  const held = lease();
  const { slot: warm } = slot();
  warm.hold(held);
  const link = runner(0);
  await warm.flush(link);
  t.same(link.commands, ['sync']);
  await warm.flush({ ...runner(0), connected: false });
  t.equal(held.released, 0);
  warm.release();
  warm.release();
  t.equal(held.released, 1);
});
