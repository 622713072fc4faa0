/** What a boot waits for once its server exists, against a stand-in for the worker's link. */
import t from 'tap';
import { SETUP_FAILED_MARKER } from '../../src/core/config.js';
import { createLogger } from '../../src/core/log.js';
import { BootError } from '../../src/daemon/boot-error.js';
import { checkZstdRelay, waitForReady, waitForSsh } from '../../src/daemon/worker-readiness.js';
import { HostKeyMismatch, type CommandResult, type RelayProbe, type WorkerLink } from '../../src/ssh/worker-link.js';

const log = createLogger({ level: 'silent' });

/** A link whose `run` answers from `answer`, recording each command. */
function link(answer: (command: string, call: number) => CommandResult): Pick<WorkerLink, 'run'> & { commands: string[] } {
  const commands: string[] = [];
  return {
    commands,
    run: (command: string) => {
      commands.push(command);
      return Promise.resolve(answer(command, commands.length));
    },
  };
}

const ok: CommandResult = { code: 0, stdout: '', stderr: '' };
const notYet: CommandResult = { code: 1, stdout: '', stderr: 'nix-store: not found' };

t.test('readyCommand is run until it succeeds; the failure marker is read in between', async (t) => {
  const worker = link((command, call) =>
    command === 'ready' && call >= 3 ? ok : command === 'ready' ? notYet : { ...notYet, stderr: '' },
  );
  await waitForReady(worker, 'ready', log, new AbortController().signal);
  t.same(worker.commands, ['ready', `cat ${SETUP_FAILED_MARKER} 2>/dev/null`, 'ready']);
});

t.test("a failure marker fails the boot at once, with the setup's first line", async (t) => {
  const worker = link((command) =>
    command === 'ready' ? notYet : { code: 0, stdout: 'cannot mount the store volume\nsecond line\n', stderr: '' },
  );
  const err = await waitForReady(worker, 'ready', log, new AbortController().signal).catch((e: unknown) => e);
  t.type(err, BootError);
  t.equal((err as Error).message, "the worker's setup failed: cannot mount the store volume");
  t.equal(worker.commands.length, 2, 'no second readyCommand');
});

t.test('an aborted wait stops before the next readyCommand', async (t) => {
  const abort = new AbortController();
  const worker = link((command) => {
    if (command !== 'ready') abort.abort(new BootError('cancelled'));
    return notYet;
  });
  await t.rejects(waitForReady(worker, 'ready', log, abort.signal));
  t.equal(worker.commands.filter((c) => c === 'ready').length, 1);
});

t.test('sshd: refusals are retried, a host key mismatch fails the boot at once', async (t) => {
  let opens = 0;
  const answering = { connected: true } as unknown as WorkerLink;
  const got = await waitForSsh(
    () => (++opens < 2 ? Promise.reject(new Error('connect ECONNREFUSED')) : Promise.resolve(answering)),
    log,
    new AbortController().signal,
  );
  t.equal(got, answering);
  t.equal(opens, 2);

  opens = 0;
  const err = await waitForSsh(
    () => {
      opens++;
      return Promise.reject(new HostKeyMismatch('host key mismatch for 127.0.0.2'));
    },
    log,
    new AbortController().signal,
  ).catch((e: unknown) => e);
  t.type(err, BootError);
  t.equal((err as Error).message, 'host key mismatch for 127.0.0.2');
  t.equal(opens, 1);
});

t.test('a zstd relay that does not run is said to the waiting sessions; one not asked for is not', async (t) => {
  const said: string[] = [];
  const probing = (probe: RelayProbe): Pick<WorkerLink, 'probeRelay'> => ({ probeRelay: () => Promise.resolve(probe) });
  await checkZstdRelay(probing({ zstd: false, notAsked: true }), log, (line) => said.push(line));
  await checkZstdRelay(probing({ zstd: true, relay: '/run/relay' }), log, (line) => said.push(line));
  t.same(said, []);
  await checkZstdRelay(probing({ zstd: false, code: 127, why: 'zstd: not found' }), log, (line) => said.push(line));
  t.same(said, [`compression "zstd": the worker's relay does not run (status 127: zstd: not found); its sessions go uncompressed`]);
});
