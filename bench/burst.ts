/**
 * Benchmark 4, burst: BENCH_BURST sessions (default 64) at once on a cold pool of
 * `maxWorkers: 2, jobsPerWorker: 32`. Each session is the one of the session-setup benchmark
 * (`ssh … "nix-store --serve --write"`, serve handshake, time to the first byte of the answer).
 * Counted: servers created (the pool must create exactly two, not one per session), sessions
 * served, where they went, and how long they waited (client side: time to first byte; daemon side:
 * `waitedMs` of its "session started" line). Then the baseline: as many sessions at once on a
 * booted worker (pool "wide", 64 slots), through the daemon and direct OpenSSH to that worker,
 * taking turns: what so many sessions at once cost this machine without a boot.
 */
import { LABEL_POOL } from '../src/core/labels.js';
import { fixed, median, percentile, progress, say, sleep, table } from './lib.js';
import { BURST_JOBS_PER_WORKER, BURST_MAX_WORKERS, BURST_POOL, ENDPOINT_ALIAS, WIDE_POOL, WORKER_ALIAS, type BenchRig } from './rig.js';
import { serveHandshake, type HandshakeTiming } from './ssh.js';

export interface BurstRun {
  sessions: number;
  served: number;
  failed: number;
  /** The first failure's message, if any. */
  firstError?: string;
  serversCreated: number;
  /** Sessions per worker (from the daemon's "session started" lines). */
  perWorker: number[];
  /** Extra upstream connections the daemon opened because a worker's sshd refused channels. */
  extraConnections: number;
  /** Client side: spawning ssh → first byte of the handshake answer, one per session served. */
  firstByteMs: number[];
  /** Daemon side: `waitedMs` of each "session started" line (exec → channel open upstream). */
  daemonWaitedMs: number[];
  /** From the first to the last ssh spawned (the burst is not instantaneous). */
  spreadMs: number;
}

/** One burst on the booted worker: through the daemon or direct. */
export interface WarmBurstRun {
  route: 'ours' | 'direct';
  /** The first failure's message, if any (how many failed is the sessions less those answered). */
  firstError?: string;
  firstByteMs: number[];
  spreadMs: number;
}

export interface BurstResult {
  sessions: number;
  bootDelayMs: number;
  readyDelayMs: number;
  runs: BurstRun[];
  /** The baseline on a booted worker, one ours and one direct per run. */
  warm: WarmBurstRun[];
}

/** `sessions` serve handshakes spawned at once: what they answered, and from the first spawn to the last. */
async function atOnce(
  configFile: string,
  target: string,
  sessions: number,
): Promise<{ settled: PromiseSettledResult<HandshakeTiming>[]; spreadMs: number }> {
  const spawned: number[] = [];
  const settled = await Promise.allSettled(
    Array.from({ length: sessions }, async () => {
      const t = await serveHandshake(configFile, target, [], 180_000);
      spawned.push(t.spawnedAt);
      return t;
    }),
  );
  return { settled, spreadMs: spawned.length > 0 ? Math.max(...spawned) - Math.min(...spawned) : Number.NaN };
}

const answered = (settled: PromiseSettledResult<HandshakeTiming>[]): HandshakeTiming[] =>
  settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
const failuresOf = (settled: PromiseSettledResult<HandshakeTiming>[]): Error[] =>
  settled.flatMap((s) => (s.status === 'rejected' ? [s.reason as Error] : []));
/** The first failure's first line, as a run records it. */
const firstErrorOf = (failures: Error[]): { firstError?: string } =>
  failures[0] ? { firstError: failures[0].message.split('\n')[0] as string } : {};

function burstServers(b: BenchRig): number {
  return b.rig.fake.liveServers().filter((s) => s.labels[LABEL_POOL] === BURST_POOL).length;
}

/** Waits until the idle timer (1 s) has deleted the pool's servers. */
async function waitEmpty(b: BenchRig, timeoutMs: number): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; burstServers(b) > 0;) {
    if (Date.now() > deadline) throw new Error(`the ${BURST_POOL} pool still has ${burstServers(b)} server(s) after ${timeoutMs / 1000} s`);
    await sleep(200);
  }
}

export async function burst(b: BenchRig, configFile: string, sessions: number, runs: number): Promise<BurstResult> {
  const result: BurstResult = { sessions, bootDelayMs: b.options.bootDelayMs, readyDelayMs: b.options.readyDelayMs, runs: [], warm: [] };
  for (let i = 0; i < runs; i++) {
    await waitEmpty(b, 60_000);
    const t0 = Date.now();
    const linesBefore = b.daemon.lines.length;
    const { settled, spreadMs } = await atOnce(configFile, `${BURST_POOL}@${ENDPOINT_ALIAS}`, sessions);
    // Lines of this run only (the daemon logs "session started" before the first byte comes back).
    await sleep(200);
    const lines = b.daemon.lines.slice(linesBefore);
    const started = lines.filter((l) => l.msg === 'session started' && l.user === BURST_POOL);
    const workers = new Map<string, number>();
    for (const l of started) workers.set(l.worker as string, (workers.get(l.worker as string) ?? 0) + 1);
    const ok = answered(settled);
    const failures = failuresOf(settled);
    const run: BurstRun = {
      sessions,
      served: ok.length,
      failed: failures.length,
      ...firstErrorOf(failures),
      serversCreated: b.rig.fake.servers().filter((s) => s.labels[LABEL_POOL] === BURST_POOL && s.createdAt.getTime() >= t0 - 1000).length,
      perWorker: [...workers.values()].sort((a, c) => c - a),
      extraConnections: lines.filter((l) => l.pool === BURST_POOL && /opened another connection/.test(l.msg)).length,
      firstByteMs: ok.map((t) => t.firstByteMs),
      daemonWaitedMs: started.map((l) => l.waitedMs as number),
      spreadMs,
    };
    result.runs.push(run);
    progress(
      `burst ${i + 1}/${runs}: ${run.served}/${sessions} served, ${run.serversCreated} server(s) created, p50 ${fixed(percentile(run.firstByteMs, 50), 0)} ms, p99 ${fixed(percentile(run.firstByteMs, 99), 0)} ms`,
    );
  }
  // Leave the pool empty for whatever comes next.
  await waitEmpty(b, 60_000);
  progress(`burst baseline: booting the worker of pool ${WIDE_POOL}`);
  const ours = `${WIDE_POOL}@${ENDPOINT_ALIAS}`;
  await serveHandshake(configFile, ours);
  const direct = b.sshConfig(b.workerRecord(WIDE_POOL));
  for (let i = 0; i < runs; i++) {
    // Take turns, so that neither route always goes first.
    const order: WarmBurstRun['route'][] = i % 2 === 0 ? ['ours', 'direct'] : ['direct', 'ours'];
    for (const route of order) {
      const { settled, spreadMs } =
        route === 'ours' ? await atOnce(configFile, ours, sessions) : await atOnce(direct, `root@${WORKER_ALIAS}`, sessions);
      const run: WarmBurstRun = {
        route,
        ...firstErrorOf(failuresOf(settled)),
        firstByteMs: answered(settled).map((t) => t.firstByteMs),
        spreadMs,
      };
      result.warm.push(run);
      progress(
        `burst on a booted worker ${i + 1}/${runs}, ${route}: ${run.firstByteMs.length}/${sessions} answered, p50 ${fixed(percentile(run.firstByteMs, 50), 0)} ms, p99 ${fixed(percentile(run.firstByteMs, 99), 0)} ms`,
      );
    }
  }
  report(result);
  return result;
}

function report(r: BurstResult): void {
  const ms = (v: number): string => fixed(v, 0);
  say(
    `### 4. Burst: ${r.sessions} sessions at once on a cold pool (maxWorkers ${BURST_MAX_WORKERS}, jobsPerWorker ${BURST_JOBS_PER_WORKER}; fake boot ${r.bootDelayMs} ms + ready ${r.readyDelayMs} ms)`,
  );
  say();
  say(
    table(
      [
        'run',
        'served',
        'failed',
        'servers created',
        'sessions per worker',
        'extra upstream connections',
        'ssh spawn spread ms',
        'first byte p50 ms',
        'p90',
        'p99',
        'max',
        'daemon wait p50 ms',
        'p99',
      ],
      r.runs.map((run, i) => [
        String(i + 1),
        `${run.served}/${run.sessions}`,
        run.failed > 0 ? `**${run.failed}**` : '0',
        run.serversCreated === BURST_MAX_WORKERS ? String(run.serversCreated) : `**${run.serversCreated}**`,
        run.perWorker.join(' + '),
        String(run.extraConnections),
        ms(run.spreadMs),
        ms(percentile(run.firstByteMs, 50)),
        ms(percentile(run.firstByteMs, 90)),
        ms(percentile(run.firstByteMs, 99)),
        ms(Math.max(...run.firstByteMs)),
        ms(percentile(run.daemonWaitedMs, 50)),
        ms(percentile(run.daemonWaitedMs, 99)),
      ]),
    ),
  );
  say();
  const all = r.runs.flatMap((run) => run.firstByteMs);
  say(
    `Time to first byte over all runs: median ${ms(median(all))} ms, p99 ${ms(percentile(all, 99))} ms, against ${r.bootDelayMs + r.readyDelayMs} ms of fake boot + ready delay (the least a cold session can take). *Daemon wait* = from the exec request to the channel opened on the worker.`,
  );
  for (const run of r.runs) if (run.firstError) say(`First failure: ${run.firstError}`);
  say();
  const routes: { route: WarmBurstRun['route']; label: string }[] = [
    { route: 'ours', label: `ours (pool ${WIDE_POOL}, kept connection)` },
    { route: 'direct', label: 'direct OpenSSH to the worker' },
  ];
  const firstBytes = (route: WarmBurstRun['route']): number[] => r.warm.filter((w) => w.route === route).flatMap((w) => w.firstByteMs);
  say(`The baseline: ${r.sessions} sessions at once on a booted worker, ${r.runs.length} burst(s) per route, taking turns.`);
  say();
  say(
    table(
      ['route', 'answered', 'ssh spawn spread ms (median)', 'first byte p50 ms', 'p90', 'p99', 'max'],
      routes.map(({ route, label }) => {
        const runs = r.warm.filter((w) => w.route === route);
        const all = firstBytes(route);
        return [
          label,
          `${all.length}/${r.sessions * runs.length}`,
          ms(median(runs.map((w) => w.spreadMs))),
          ms(percentile(all, 50)),
          ms(percentile(all, 90)),
          ms(percentile(all, 99)),
          ms(Math.max(...all)),
        ];
      }),
    ),
  );
  say();
  for (const run of r.warm) if (run.firstError) say(`First failure on the booted worker (${run.route}): ${run.firstError}`);
  const direct50 = percentile(firstBytes('direct'), 50);
  say(
    `Ours ÷ direct on the booted worker, p50: ${fixed(percentile(firstBytes('ours'), 50) / direct50, 2)}. The cold burst's median first byte ÷ (boot + ready delay + direct's p50 here): ${fixed(median(all) / (r.bootDelayMs + r.readyDelayMs + direct50), 2)}.`,
  );
  say();
}
