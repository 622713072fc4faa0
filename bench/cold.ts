/**
 * Benchmark 3, cold start: a `nix-store --serve` session on a pool with no worker, timed from
 * spawning ssh to the remote's first byte, minus the fake cloud's configured boot + ready delays.
 * The rest is split by milestones: the daemon's log lines (steps 1–5 of a boot) and what the fake
 * cloud's server did (polled in this process every few ms).
 */
import type { LogLine } from '../test/rig/rig.js';
import { LABEL_POOL } from '../src/core/labels.js';
import { fixed, median, progress, say, table } from './lib.js';
import { COLD_POOL, ENDPOINT_ALIAS, type BenchRig } from './rig.js';
import { serveHandshake } from './ssh.js';

export interface ColdRun {
  firstByteMs: number;
  overheadMs: number;
  /** Milestones in ms after ssh was spawned. */
  created: number;
  fakeRunning: number;
  daemonRunning: number;
  fakeSshd: number;
  daemonSshd: number;
  fakeCloudInit: number;
  daemonReady: number;
}

export interface ColdResult {
  runs: ColdRun[];
  bootDelayMs: number;
  readyDelayMs: number;
  medianFirstByteMs: number;
  medianOverheadMs: number;
}

interface FakeMilestones {
  running?: number;
  sshd?: number;
  cloudInit?: number;
}

/** Polls the fake cloud for the first server created at or after `since`. */
function watchFake(b: BenchRig, since: number): { stop: () => FakeMilestones } {
  const seen: FakeMilestones = {};
  const timer = setInterval(() => {
    const server = b.rig.fake
      .servers()
      .find((s) => !s.deleted && s.createdAt.getTime() >= since - 1000 && s.labels[LABEL_POOL] === COLD_POOL);
    if (!server) return;
    const now = Date.now();
    if (seen.running === undefined && server.status === 'running') seen.running = now;
    if (seen.sshd === undefined && server.sshdRunning) seen.sshd = now;
    if (seen.cloudInit === undefined && server.cloudInitDone) seen.cloudInit = now;
  }, 2);
  return {
    stop: () => {
      clearInterval(timer);
      return seen;
    },
  };
}

function stepTime(lines: LogLine[], since: number, worker: string | undefined, step: number): number {
  const line = lines.find(
    (l) =>
      (l.time as number) >= since &&
      l.pool === COLD_POOL &&
      (worker === undefined || l.worker === worker) &&
      l.msg.startsWith(`boot step ${step}/`),
  );
  return (line?.time as number | undefined) ?? Number.NaN;
}

export async function coldStart(b: BenchRig, configFile: string, runs: number): Promise<ColdResult> {
  const { bootDelayMs, readyDelayMs } = b.options;
  const results: ColdRun[] = [];
  for (let i = 0; i < runs; i++) {
    if (b.rig.fake.liveServers().some((s) => s.labels[LABEL_POOL] === COLD_POOL)) throw new Error('a cold-pool server is still alive');
    const watcher = watchFake(b, Date.now());
    const timing = await serveHandshake(configFile, `${COLD_POOL}@${ENDPOINT_ALIAS}`);
    const fake = watcher.stop();
    const t0 = timing.spawnedAt;
    const created = b.daemon.lines.find((l) => (l.time as number) >= t0 && l.pool === COLD_POOL && l.msg.startsWith('boot step 1/'));
    const worker = created?.worker as string | undefined;
    const run: ColdRun = {
      firstByteMs: timing.firstByteMs,
      overheadMs: timing.firstByteMs - bootDelayMs - readyDelayMs,
      created: stepTime(b.daemon.lines, t0, worker, 1) - t0,
      fakeRunning: (fake.running ?? Number.NaN) - t0,
      daemonRunning: stepTime(b.daemon.lines, t0, worker, 2) - t0,
      fakeSshd: (fake.sshd ?? Number.NaN) - t0,
      daemonSshd: stepTime(b.daemon.lines, t0, worker, 4) - t0,
      fakeCloudInit: (fake.cloudInit ?? Number.NaN) - t0,
      daemonReady: stepTime(b.daemon.lines, t0, worker, 5) - t0,
    };
    results.push(run);
    progress(`cold start ${i + 1}/${runs}: first byte after ${fixed(run.firstByteMs, 0)} ms (overhead ${fixed(run.overheadMs, 0)} ms)`);
    // The idle timer (1 s) deletes the worker; the next run must find the pool empty.
    await b.daemon.waitFor(
      (l) =>
        (l.time as number) >= t0 && l.pool === COLD_POOL && (worker === undefined || l.worker === worker) && /deleted server/.test(l.msg),
      60_000,
    );
  }
  const m = (pick: (r: ColdRun) => number): number => median(results.map(pick));
  const result: ColdResult = {
    runs: results,
    bootDelayMs,
    readyDelayMs,
    medianFirstByteMs: m((r) => r.firstByteMs),
    medianOverheadMs: m((r) => r.overheadMs),
  };
  report(result);
  return result;
}

function report(r: ColdResult): void {
  const m = (pick: (x: ColdRun) => number): number => median(r.runs.map(pick));
  const ms = (v: number): string => fixed(v, 0);
  say(
    `### 3. Cold start (pool "${COLD_POOL}", ${r.runs.length} runs, medians; fake boot ${r.bootDelayMs} ms + ready ${r.readyDelayMs} ms)`,
  );
  say();
  say(
    table(
      ['milestone (ms after spawning ssh)', 'median', 'runs'],
      [
        ['daemon: server created (step 1)', ms(m((x) => x.created)), r.runs.map((x) => ms(x.created)).join(' ')],
        ['fake: server "running" (create + boot delay)', ms(m((x) => x.fakeRunning)), r.runs.map((x) => ms(x.fakeRunning)).join(' ')],
        ['daemon: saw "running" (step 2)', ms(m((x) => x.daemonRunning)), r.runs.map((x) => ms(x.daemonRunning)).join(' ')],
        ['fake: sshd listening', ms(m((x) => x.fakeSshd)), r.runs.map((x) => ms(x.fakeSshd)).join(' ')],
        ['daemon: ssh connected, host key ok (step 4)', ms(m((x) => x.daemonSshd)), r.runs.map((x) => ms(x.daemonSshd)).join(' ')],
        [
          'fake: cloud-init runcmd done (sshd + ready delay + runcmd)',
          ms(m((x) => x.fakeCloudInit)),
          r.runs.map((x) => ms(x.fakeCloudInit)).join(' '),
        ],
        ['daemon: readyCommand ok (step 5)', ms(m((x) => x.daemonReady)), r.runs.map((x) => ms(x.daemonReady)).join(' ')],
        ['**first byte of the serve handshake answer**', ms(r.medianFirstByteMs), r.runs.map((x) => ms(x.firstByteMs)).join(' ')],
      ],
    ),
  );
  say();
  const parts: [string, (x: ColdRun) => number][] = [
    ['ssh login to the endpoint + create call', (x) => x.created],
    ['action poll lag (saw "running" − fake "running")', (x) => x.daemonRunning - x.fakeRunning],
    ['fake: sshd start after "running" (a real server boots this within its boot time)', (x) => x.fakeSshd - x.fakeRunning],
    ['ssh connect lag (connected − sshd listening)', (x) => x.daemonSshd - x.fakeSshd],
    ['fake: runcmd run time (cloud-init done − sshd − ready delay)', (x) => x.fakeCloudInit - x.fakeSshd - r.readyDelayMs],
    ['readyCommand poll lag (ready − cloud-init done)', (x) => x.daemonReady - x.fakeCloudInit],
    ['exec on the worker + first byte (first byte − ready)', (x) => x.firstByteMs - x.daemonReady],
  ];
  say(
    table(
      ['where the overhead goes', 'median ms'],
      [
        ...parts.map(([name, pick]): string[] => [name, ms(m(pick))]),
        ['**overhead = first byte − (boot + ready delay)**', `**${ms(r.medianOverheadMs)}**`],
      ],
    ),
  );
  say();
}
