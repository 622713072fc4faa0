import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { peekState, StateFile, stateFilePath, type WorkerRecord } from '../../src/daemon/state.js';

const record: WorkerRecord = {
  id: 42,
  name: 'nhb-x-p-1',
  pool: 'p',
  serverType: 'cx23',
  location: 'fsn1',
  phase: 'ready',
  sshPort: 22,
  hostPublicKey: 'ssh-ed25519 AAAA',
  loginPrivateKey: 'secret',
  createdAt: new Date(0).toISOString(),
  activeSessions: 0,
};

t.test('saves atomically with private modes, and reads back', async (t) => {
  const dir = join(mkdtempSync(join(tmpdir(), 'nhb-state-')), 'state');
  const { state, read } = await StateFile.open(dir, 'me');
  t.equal(read.state, undefined);
  t.equal(statSync(dir).mode & 0o777, 0o700);
  state.data.workers.push(record);
  await Promise.all([state.save(), state.save(), state.save()]);
  t.equal(statSync(stateFilePath(dir)).mode & 0o777, 0o600);
  t.same(peekState(dir).state?.workers, [record]);
  t.same(
    readdirSync(dir).filter((f) => f.endsWith('.tmp')),
    [],
    'no temp files left',
  );
  await state.close();
  const again = await StateFile.open(dir, 'me');
  t.same(again.state.data.workers, [record]);
  await again.state.close();
});

t.test('a second daemon on the same folder is refused; a dead holder is not', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-lock-'));
  const first = await StateFile.open(dir, 'me');
  await t.rejects(StateFile.open(dir, 'me'), { name: 'StateError', message: /another nix-hcloud-builder daemon \(pid \d+\)/ });
  await first.state.close();

  // A holder killed with SIGKILL leaves its lock and pid file; the next start takes over at once.
  const child = spawn(
    process.execPath,
    [
      '--import=tsx',
      '-e',
      `
    import('${new URL('../../src/daemon/state.ts', import.meta.url).pathname}').then(async ({ StateFile }) => {
      await StateFile.open(${JSON.stringify(dir)}, 'me');
      console.log('locked');
    });`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve) => child.stdout.on('data', (d: Buffer) => d.toString().includes('locked') && resolve()));
  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('exit', resolve));
  const taken = await StateFile.open(dir, 'me');
  t.ok(taken.state, 'lock of a dead daemon taken over');
  await taken.state.close();
});

t.test('an unusable state file is kept aside and reported', async (t) => {
  for (const [what, content] of [
    ['truncated', '{"version":1,"work'],
    ['future', JSON.stringify({ version: 99, instance: 'me', workers: [] })],
  ] as const) {
    const dir = mkdtempSync(join(tmpdir(), 'nhb-bad-'));
    writeFileSync(stateFilePath(dir), content);
    const { state, read } = await StateFile.open(dir, 'me');
    t.match(read.problem, what === 'future' ? /newer nix-hcloud-builder/ : /unusable/, what);
    t.ok(read.keptAs, what);
    t.equal(readFileSync(read.keptAs as string, 'utf8'), content, `${what}: original content kept`);
    t.same(state.data.workers, []);
    await state.close();
  }
});

t.test('a state folder of another instance is refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-inst-'));
  const { state } = await StateFile.open(dir, 'one');
  await state.save();
  await state.close();
  await t.rejects(StateFile.open(dir, 'two'), { message: /belongs to instance "one"/ });
});

t.test('handshake records are kept across restarts; entries that are not records are dropped', async (t) => {
  const dir = join(mkdtempSync(join(tmpdir(), 'nhb-state-')), 'state');
  const { state } = await StateFile.open(dir, 'me');
  const entry = { pool: 'p', image: '{"name":"ubuntu-24.04"}', record: { protocol: 'serve' as const, version: 0x207 } };
  state.data.handshakes?.push(entry);
  await state.save();
  await state.close();
  const file = stateFilePath(dir);
  const data = JSON.parse(readFileSync(file, 'utf8')) as { handshakes: unknown[] };
  data.handshakes.push({ pool: 'p', image: 'x', record: { protocol: 'worker', version: 'new' } }, 'junk');
  writeFileSync(file, JSON.stringify(data));
  const again = await StateFile.open(dir, 'me');
  t.same(again.state.data.handshakes, [entry]);
  t.equal(again.read.problem, undefined, 'a bad record does not make the state file unusable');
  await again.state.close();
});
