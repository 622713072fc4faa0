/**
 * Benchmark 3, cold start: a `nix-store --serve` session on a pool with no worker, timed from
 * spawning ssh to the remote's first byte, minus the fake cloud's configured boot + ready delays.
 * The rest is split by milestones: the daemon's log lines (steps 1–5 of a boot), what the fake
 * cloud's server did, and the cloud-config's own step lines in the server's cloud-init-output.log
 * (both polled in this process every few ms). Two pools: COLD_POOL, whose image has Nix (the
 * pre-baked path: the install step finds Nix), and COLD_STOCK_POOL, a stock image without Nix whose
 * boot installs it from the rig's release tarball.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LogLine } from '../test/rig/rig.js';
import { LABEL_POOL } from '../src/core/labels.js';
import { fixed, median, progress, say, table } from './lib.js';
import { ENDPOINT_ALIAS, type BenchRig } from './rig.js';
import { serveHandshake } from './ssh.js';

export interface ColdRun {
  firstByteMs: number;
  overheadMs: number;
  /** The daemon's boot-to-ready (`bootMs` of its step 5 line). */
  bootMs: number;
  /** Milestones in ms after ssh was spawned. */
  created: number;
  fakeRunning: number;
  daemonRunning: number;
  fakeSshd: number;
  daemonSshd: number;
  fakeCloudInit: number;
  daemonReady: number;
  /** When each cloud-config step's line ("N/M what") first showed in cloud-init-output.log. */
  runcmdSteps: Record<string, number>;
}

export interface ColdResult {
  pool: string;
  runs: ColdRun[];
  bootDelayMs: number;
  readyDelayMs: number;
  medianFirstByteMs: number;
  medianOverheadMs: number;
}

interface FakeMilestones {
  /** The server's id (the daemon's "deleted server" line names only that). */
  id?: number;
  running?: number;
  sshd?: number;
  cloudInit?: number;
  steps: Record<string, number>;
}

const STEP_LINE = /^nix-hcloud-builder: step (\d+\/\d+ .*)$/gm;

/** Polls the fake cloud for the first server of `pool` created at or after `since`. */
function watchFake(b: BenchRig, pool: string, since: number): { stop: () => FakeMilestones } {
  const seen: FakeMilestones = { steps: {} };
  const timer = setInterval(() => {
    const server = b.rig.fake.servers().find((s) => !s.deleted && s.createdAt.getTime() >= since - 1000 && s.labels[LABEL_POOL] === pool);
    if (!server) return;
    seen.id = server.id;
    const now = Date.now();
    if (seen.running === undefined && server.status === 'running') seen.running = now;
    if (seen.sshd === undefined && server.sshdRunning) seen.sshd = now;
    if (seen.cloudInit === undefined) {
      const output = join(server.dir, 'cloud-init-output.log');
      if (existsSync(output)) for (const m of readFileSync(output, 'utf8').matchAll(STEP_LINE)) seen.steps[m[1] as string] ??= now;
      if (server.cloudInitDone) seen.cloudInit = now;
    }
  }, 2);
  return {
    stop: () => {
      clearInterval(timer);
      return seen;
    },
  };
}

function stepLine(lines: LogLine[], since: number, pool: string, worker: string | undefined, step: number): LogLine | undefined {
  return lines.find(
    (l) =>
      (l.time as number) >= since &&
      l.pool === pool &&
      (worker === undefined || l.worker === worker) &&
      l.msg.startsWith(`boot step ${step}/`),
  );
}

function stepTime(lines: LogLine[], since: number, pool: string, worker: string | undefined, step: number): number {
  return (stepLine(lines, since, pool, worker, step)?.time as number | undefined) ?? Number.NaN;
}

export async function coldStart(b: BenchRig, configFile: string, runs: number, pool: string): Promise<ColdResult> {
  const { bootDelayMs, readyDelayMs } = b.options;
  const results: ColdRun[] = [];
  for (let i = 0; i < runs; i++) {
    if (b.rig.fake.liveServers().some((s) => s.labels[LABEL_POOL] === pool)) throw new Error(`a server of pool ${pool} is still alive`);
    const watcher = watchFake(b, pool, Date.now());
    const timing = await serveHandshake(configFile, `${pool}@${ENDPOINT_ALIAS}`);
    const fake = watcher.stop();
    const t0 = timing.spawnedAt;
    const worker = stepLine(b.daemon.lines, t0, pool, undefined, 1)?.worker as string | undefined;
    const at = (step: number): number => stepTime(b.daemon.lines, t0, pool, worker, step) - t0;
    const run: ColdRun = {
      firstByteMs: timing.firstByteMs,
      overheadMs: timing.firstByteMs - bootDelayMs - readyDelayMs,
      bootMs: (stepLine(b.daemon.lines, t0, pool, worker, 5)?.bootMs as number | undefined) ?? Number.NaN,
      created: at(1),
      fakeRunning: (fake.running ?? Number.NaN) - t0,
      daemonRunning: at(2),
      fakeSshd: (fake.sshd ?? Number.NaN) - t0,
      daemonSshd: at(4),
      fakeCloudInit: (fake.cloudInit ?? Number.NaN) - t0,
      daemonReady: at(5),
      runcmdSteps: Object.fromEntries(Object.entries(fake.steps).map(([step, time]) => [step, time - t0])),
    };
    results.push(run);
    progress(
      `cold start ${i + 1}/${runs} on ${pool}: first byte after ${fixed(run.firstByteMs, 0)} ms (overhead ${fixed(run.overheadMs, 0)} ms)`,
    );
    // The idle timer (1 s) deletes the worker; the next run must find the pool empty.
    await b.daemon.waitFor((l) => (l.time as number) >= t0 && l.id === fake.id && /deleted server/.test(l.msg), 60_000);
  }
  const m = (pick: (r: ColdRun) => number): number => median(results.map(pick));
  const result: ColdResult = {
    pool,
    runs: results,
    bootDelayMs,
    readyDelayMs,
    medianFirstByteMs: m((r) => r.firstByteMs),
    medianOverheadMs: m((r) => r.overheadMs),
  };
  report(result);
  return result;
}

const ms = (v: number): string => fixed(v, 0);

/** The cloud-config's steps in the order they ran (the first run's, as every run has the same). */
function stepNames(r: ColdResult): string[] {
  const first = r.runs[0]?.runcmdSteps ?? {};
  return Object.keys(first).sort((a, b) => (first[a] as number) - (first[b] as number));
}

/** How long each cloud-config step took: from its line to the next one's, the last to runcmd's end. */
function stepDuration(r: ColdResult, x: ColdRun, step: string): number {
  const names = stepNames(r);
  const next = names[names.indexOf(step) + 1];
  return (next === undefined ? x.fakeCloudInit : (x.runcmdSteps[next] ?? Number.NaN)) - (x.runcmdSteps[step] ?? Number.NaN);
}

/** Boot to ready, split: each part's median, from the daemon's and the fake's milestones. */
function bootParts(r: ColdResult): [string, (x: ColdRun) => number][] {
  const firstStep = stepNames(r)[0];
  return [
    ['ssh login to the endpoint + create call', (x) => x.created],
    ['action poll lag (saw "running" − fake "running")', (x) => x.daemonRunning - x.fakeRunning],
    ['fake: sshd start after "running" (a real server boots this within its boot time)', (x) => x.fakeSshd - x.fakeRunning],
    ['ssh connect lag (connected − sshd listening)', (x) => x.daemonSshd - x.fakeSshd],
    [
      'fake: sshd to runcmd start (ready delay + starting the script)',
      (x) => (firstStep === undefined ? Number.NaN : (x.runcmdSteps[firstStep] ?? Number.NaN)) - x.fakeSshd,
    ],
    // Named without the Nix version (the pools' releases differ), so that the pools' rows meet.
    ...stepNames(r).map((step): [string, (x: ColdRun) => number] => [
      `runcmd step ${step.replace(/ Nix \S+ /, ' Nix ')}`,
      (x) => stepDuration(r, x, step),
    ]),
    ['readyCommand poll lag (ready − cloud-init done)', (x) => x.daemonReady - x.fakeCloudInit],
    ['exec on the worker + first byte (first byte − ready)', (x) => x.firstByteMs - x.daemonReady],
  ];
}

function report(r: ColdResult): void {
  const m = (pick: (x: ColdRun) => number): number => median(r.runs.map(pick));
  const row = (name: string, pick: (x: ColdRun) => number): string[] => [name, ms(m(pick)), r.runs.map((x) => ms(pick(x))).join(' ')];
  say(`### 3. Cold start (pool "${r.pool}", ${r.runs.length} runs, medians; fake boot ${r.bootDelayMs} ms + ready ${r.readyDelayMs} ms)`);
  say();
  say(
    table(
      ['milestone (ms after spawning ssh)', 'median', 'runs'],
      [
        row('daemon: server created (step 1)', (x) => x.created),
        row('fake: server "running" (create + boot delay)', (x) => x.fakeRunning),
        row('daemon: saw "running" (step 2)', (x) => x.daemonRunning),
        row('fake: sshd listening', (x) => x.fakeSshd),
        row('daemon: ssh connected, host key ok (step 4)', (x) => x.daemonSshd),
        ...stepNames(r).map((step) => row(`fake: runcmd step ${step}`, (x) => x.runcmdSteps[step] ?? Number.NaN)),
        row('fake: cloud-init runcmd done (sshd + ready delay + runcmd)', (x) => x.fakeCloudInit),
        row('daemon: readyCommand ok (step 5)', (x) => x.daemonReady),
        row("daemon's boot-to-ready (bootMs of step 5)", (x) => x.bootMs),
        ['**first byte of the serve handshake answer**', ms(r.medianFirstByteMs), r.runs.map((x) => ms(x.firstByteMs)).join(' ')],
      ],
    ),
  );
  say();
  say(
    table(
      ['where the overhead goes', 'median ms'],
      [
        ...bootParts(r).map(([name, pick]): string[] => [name, ms(m(pick))]),
        ['**overhead = first byte − (boot + ready delay)**', `**${ms(r.medianOverheadMs)}**`],
      ],
    ),
  );
  say();
}

/** Boot to ready of the pools side by side, split by step (medians). */
export function compareColdStarts(results: ColdResult[]): void {
  const m = (r: ColdResult, pick: (x: ColdRun) => number): number => median(r.runs.map(pick));
  // The parts by name, in the order of the pool with the most steps (the others show n/a where they have none).
  const names: string[] = [];
  for (const r of results) for (const [name] of bootParts(r)) if (!names.includes(name)) names.push(name);
  const cell = (r: ColdResult, name: string): string => {
    const part = bootParts(r).find(([n]) => n === name);
    return part ? ms(m(r, part[1])) : '—';
  };
  say(`### 3. Cold start, boot to ready by step (medians, ms)`);
  say();
  say(
    table(
      ['part', ...results.map((r) => `pool "${r.pool}"`)],
      [
        ...names.map((name) => [name, ...results.map((r) => cell(r, name))]),
        ["**daemon's boot-to-ready (bootMs)**", ...results.map((r) => `**${ms(m(r, (x) => x.bootMs))}**`)],
        ['**first byte**', ...results.map((r) => `**${ms(r.medianFirstByteMs)}**`)],
      ],
    ),
  );
  say();
}
