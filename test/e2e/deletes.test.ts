/**
 * A delete is retried until the server is gone: stray servers whose deletes fail (503s the API
 * client's own retries cannot outlast, 423 `locked` again and again) are deleted by the sweep, also
 * when the daemon is killed in between; `down` and `gc` retry for a bounded time and name what is left.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { serverLabels } from '../../src/core/labels.js';
import type { DeletionRecord } from '../../src/daemon/deletions.js';
import { Rig, TOKEN, waitUntil, type DaemonProcess } from '../rig/rig.js';

const CONFIG = { sweepInterval: '2s', deleteRetry: { firstWait: '200ms', maxWait: '1s' } };

async function createStray(rig: Rig, name: string): Promise<number> {
  const res = await fetch(`${rig.fake.url}/servers`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      name,
      server_type: 'cx23',
      image: 'ubuntu-24.04',
      location: 'fsn1',
      labels: serverLabels(rig.instance, 'x86_64'),
    }),
  });
  return ((await res.json()) as { server: { id: number } }).server.id;
}

/** Two strays: the first answers DELETE with 503 `unavailable` `unavailable` times, the second 423 `locked` `locked` times. */
async function faultyStrays(rig: Rig, unavailable: number, locked: number): Promise<{ a: number; b: number }> {
  const a = await createStray(rig, 'stray-unavailable');
  const b = await createStray(rig, 'stray-locked');
  rig.fake.inject({ method: 'DELETE', path: `/servers/${a}`, status: 503, code: 'unavailable', times: unavailable });
  rig.fake.inject({ method: 'DELETE', path: `/servers/${b}`, status: 423, code: 'locked', message: 'server is locked', times: locked });
  return { a, b };
}

const deletesOf = (rig: Rig, id: number): number =>
  rig.fake.requests.filter((r) => r.method === 'DELETE' && r.path === `/servers/${id}`).length;
const isLive = (rig: Rig, id: number): boolean => rig.fake.liveServers().some((s) => s.id === id);
const failedFor = (daemon: DaemonProcess, name: string): boolean =>
  daemon.lines.some((l) => l.msg.startsWith(`deleting server ${name} failed`));

t.test('the sweep deletes strays whose deletes fail with 503 six times and 423 over and over', async (t) => {
  const rig = await Rig.start({ config: CONFIG, fake: { realServers: false } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  // Six 503s: all of the API client's own attempts (1 + 5 retries) of the first delete.
  const { a, b } = await faultyStrays(rig, 6, 10);
  await waitUntil(() => !isLive(rig, a) && !isLive(rig, b), 120_000);
  t.notOk(isLive(rig, a), 'the server answering 503 is gone');
  t.notOk(isLive(rig, b), 'the server answering 423 is gone');
  t.equal(deletesOf(rig, a), 7, 'the seventh DELETE went through');
  t.equal(deletesOf(rig, b), 11, 'the eleventh DELETE went through');
  t.ok(failedFor(daemon, 'stray-unavailable') && failedFor(daemon, 'stray-locked'), 'each failure was logged and retried');
  const deleted = await daemon.waitForMsg(/^deleted server stray-locked/);
  t.match(deleted, { reason: 'sweep: no worker of ours', failures: 10 });
});

t.test('after a SIGKILL in between, the next start goes on with the deletes the state kept', async (t) => {
  const rig = await Rig.start({ config: CONFIG, fake: { realServers: false } });
  t.teardown(() => rig.stop());
  const first = await rig.startDaemon();
  // Twelve 503s outlast two deletes (each takes at least 5 s of the client's own retries); the
  // kill comes right after the first 423, long before the fourteenth.
  const { a, b } = await faultyStrays(rig, 12, 14);
  await waitUntil(() => failedFor(first, 'stray-locked'), 120_000);
  first.proc.kill('SIGKILL');
  await first.exited;
  t.ok(isLive(rig, a) && isLive(rig, b), 'both strays outlive the killed daemon');
  const state = JSON.parse(readFileSync(join(rig.dir, 'state', 'state.json'), 'utf8')) as { deletions: DeletionRecord[] };
  const kept = Object.fromEntries(state.deletions.map((d) => [d.name, d]));
  t.match(
    kept,
    { 'stray-unavailable': { id: a, failures: Number }, 'stray-locked': { id: b, failures: Number } },
    'the state keeps both pending deletes',
  );

  const second = await rig.startDaemon();
  t.ok(
    second.lines.some((l) => l.msg === 'going on with the deletion of a server' && l.server === 'stray-locked'),
    'the restart goes on with the kept deletes',
  );
  await waitUntil(() => !isLive(rig, a) && !isLive(rig, b), 120_000);
  t.notOk(isLive(rig, a), 'the server answering 503 is gone');
  t.notOk(isLive(rig, b), 'the server answering 423 is gone');
  const deleted = await second.waitForMsg(/^deleted server stray-locked/);
  t.equal(deleted.since, kept['stray-locked']?.since, 'since when: from the first daemon, kept across the restart');
  t.ok((deleted.failures as number) > (kept['stray-locked']?.failures ?? 0), 'the failure count goes on too');
  t.equal(deletesOf(rig, b), 15, 'the fifteenth DELETE went through');
});

t.test('down gives up after --wait naming what is left, status shows it; gc then deletes it', async (t) => {
  const rig = await Rig.start({ config: CONFIG, fake: { realServers: false } });
  t.teardown(() => rig.stop());
  const id = await createStray(rig, 'stray-down');
  // At most three attempts fit in a second (waits 200 ms, 400 ms, 800 ms): five 423s outlast it.
  rig.fake.inject({ method: 'DELETE', path: `/servers/${id}`, status: 423, code: 'locked', message: 'server is locked', times: 5 });
  const down = await rig.cli(['down', '--wait', '1s']);
  t.equal(down.code, 1, 'down fails');
  t.match(down.stdout, /not deleted after 1\.0s: stray-down \(id \d+\), \d failed attempts, last error: .*server is locked/);
  t.match(down.stdout, /1 server\(s\) still there \(they bill\): stray-down/);
  t.ok(isLive(rig, id));

  const status = await rig.cli(['status']);
  t.match(status.stdout, /DELETING\s+NAME\s+REASON\s+SINCE/);
  t.match(status.stdout, new RegExp(`${id}\\s+stray-down\\s+down\\s+\\S+ \\(\\S+ ago\\)\\s+\\d`));
  const json = JSON.parse((await rig.cli(['status', '--json'])).stdout) as {
    deletions: { name: string; overdue: boolean }[];
    workers: { name: string; phase: string }[];
  };
  t.match(json.deletions, [{ name: 'stray-down', overdue: false }]);
  t.match(json.workers, [{ name: 'stray-down', phase: 'deleting' }]);

  const gc = await rig.cli(['gc']);
  t.equal(gc.code, 0, gc.stdout);
  t.match(gc.stdout, /deleted 1 server/);
  t.notOk(isLive(rig, id), 'gc retried until it was gone');
});

t.test('status: a delete pending for over an hour is an error line', async (t) => {
  const { formatDeletions } = await import('../../src/cli/status.js');
  const since = '2025-01-01T00:00:00.000Z';
  const now = Date.parse(since) + 61 * 60_000;
  const text = formatDeletions(
    [{ id: 4, name: 'w4', reason: 'idle timeout', since, failures: 20, lastError: 'locked', overdue: true }],
    now,
  );
  t.match(text, /^error: server w4 \(id 4\) is still not deleted after 1h1m; it bills meanwhile \(last error: locked\)$/m);
  t.notMatch(formatDeletions([{ id: 4, name: 'w4', reason: 'idle timeout', since, failures: 1, overdue: false }], now), /error:/);
});
