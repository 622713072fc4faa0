/**
 * Benchmark "uplink": `nix copy` through an emulated uplink (test/rig/link.ts), through our daemon
 * with compression none, zstd at fixed level 3 and the default (zstd, level auto), against direct
 * OpenSSH to the same kind of worker through the same link, plain and with `-C`. Realistic payloads
 * (this machine's binaries, libraries and text) by default, a random one (the worst case) on demand.
 * See bench/README.md, section "Uplink".
 *
 * One rig per link profile: the fake cloud puts the link in front of every server's sshd (the
 * `loopback` profile: no link), and the daemon has one warm pool per compression setting. Bytes on
 * the wire come from the link's counters of the server the copy went to; without a link, from the
 * daemon's `session ended` lines (ours only: direct OpenSSH's are not counted there).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { DEFAULT_WORKER_COMPRESSION, type WorkerCompression } from '../src/core/config.js';
import type { WorkerRecord } from '../src/daemon/state.js';
import { linkProfile, type LinkBytes, type LinkProfile } from '../test/rig/link.js';
import { cmd, cmdWatched, fixed, GiB, MiB, processCpuSeconds, progress, say, table, writeRandomFile } from './lib.js';
import { makeRealistic, REALISTIC_SOURCES } from './payload.js';
import { BenchRig, ENDPOINT_ALIAS, sshClientDefaults } from './rig.js';
import { remoteBuildArgs, ROOT } from '../test/rig/rig.js';
import { sessionsSince } from './sessions.js';
import { serveHandshake } from './ssh.js';

/** `build`: a nix-build whose input is the payload (uploaded by Nix's build hook), small output. */
export type Direction = 'upload' | 'download' | 'build';
export const DIRECTIONS: readonly Direction[] = ['upload', 'download', 'build'];
const INPUTS_NIX = join(ROOT, 'test', 'fixtures', 'inputs.nix');
export type PayloadKind = 'realistic' | 'random';
export const PAYLOADS: readonly PayloadKind[] = ['realistic', 'random'];

/** A link profile, or none (`loopback`: the fake's servers as they are). */
interface Profile {
  name: string;
  link?: LinkProfile;
}
export const LOOPBACK = 'loopback';

function profileOf(spec: string): Profile {
  return spec === LOOPBACK ? { name: LOOPBACK } : { name: spec, link: linkProfile(spec) };
}

function nominal(p: Profile): string {
  return p.link
    ? `${p.link.upBitsPerSecond / 1e6} Mbit/s up, ${p.link.downBitsPerSecond / 1e6} Mbit/s down, ${p.link.delayMs} ms one way`
    : 'no emulated link (loopback)';
}

interface Route {
  label: string;
  via: 'ours' | 'direct';
  /** ssh_config alias of the worker this route ends on (for making and deleting paths there). */
  workerAlias: string;
  /** Pool whose worker the route reaches (its link counters, its `session ended` lines). */
  pool: string;
  uri: string;
}

export interface UplinkRun {
  profile: string;
  payload: PayloadKind;
  direction: Direction;
  route: string;
  narBytes: number;
  ms: number;
  /** NaN when not counted (direct OpenSSH without a link). */
  wire: LinkBytes;
  /** The daemon's user + system CPU seconds over the run (0 for direct routes). */
  daemonCpuS: number;
  /** The zstd levels the session settled on, per direction, from the daemon's `session ended` line. */
  settled?: { up?: string; down?: string };
  stalled: boolean;
}

export interface Compressibility {
  payload: PayloadKind;
  narBytes: number;
  gzip6: number;
  zstd3: number;
}

export interface UplinkResult {
  mib: number;
  runs: UplinkRun[];
  compressibility: Compressibility[];
}

/** The daemon's pools of this section: one per compression setting measured. */
interface Setting {
  pool: string;
  label: string;
  compression: WorkerCompression;
  compressionLevel?: number;
}

const NONE: Setting = { pool: 'none', label: 'none', compression: 'none' };
/** No level set: the default's ("auto"). */
const DEFAULT_SETTING: Setting = {
  pool: 'default',
  label: `${DEFAULT_WORKER_COMPRESSION} auto (default)`,
  compression: DEFAULT_WORKER_COMPRESSION,
};
const SETTINGS: Setting[] = [NONE, { pool: 'zstd3', label: 'zstd fixed 3', compression: 'zstd', compressionLevel: 3 }, DEFAULT_SETTING];
/** BENCH_UPLINK_MORE: the settings the default run leaves out. */
const MORE_SETTINGS: Setting[] = [
  { pool: 'zlib', label: 'zlib', compression: 'zlib' },
  { pool: 'zstd12', label: 'zstd fixed 12', compression: 'zstd', compressionLevel: 12 },
];

const DIRECT = 'direct';
const DIRECT_C = 'direct -C';
const workerAlias = (pool: string): string => `bench-worker-${pool}`;
const DIRECT_C_ALIAS = `${workerAlias(NONE.pool)}-c`;

function routes(settings: Setting[]): Route[] {
  return [
    ...settings.map((c): Route => ({
      label: c.label,
      via: 'ours',
      workerAlias: workerAlias(c.pool),
      pool: c.pool,
      uri: `ssh-ng://${c.pool}@${ENDPOINT_ALIAS}`,
    })),
    { label: DIRECT, via: 'direct', workerAlias: workerAlias(NONE.pool), pool: NONE.pool, uri: `ssh-ng://root@${workerAlias(NONE.pool)}` },
    { label: DIRECT_C, via: 'direct', workerAlias: workerAlias(NONE.pool), pool: NONE.pool, uri: `ssh-ng://root@${DIRECT_C_ALIAS}` },
  ];
}

/** An ssh_config with our endpoint, each pool's worker, and the `none` worker again with `Compression yes` (ssh -C). */
function writeSshConfig(b: BenchRig, settings: Setting[], workers: Record<string, WorkerRecord>): string {
  const hostKey = (line: string): string => line.trim().split(/\s+/).slice(0, 2).join(' ');
  const endpointKey = hostKey(Buffer.from(b.rig.hostKeyBase64(), 'base64').toString());
  const known = [`${ENDPOINT_ALIAS} ${endpointKey}`];
  const lines = [
    `Host ${ENDPOINT_ALIAS}`,
    '  HostName 127.0.0.1',
    `  Port ${b.daemon.port}`,
    `  HostKeyAlias ${ENDPOINT_ALIAS}`,
    `  IdentityFile ${b.rig.clientKeyFile}`,
    '  Compression no',
  ];
  for (const { pool: c } of settings) {
    const w = workers[c] as WorkerRecord;
    const key = join(b.dir, `login_${c}`);
    writeFileSync(key, w.loginPrivateKey, { mode: 0o600 });
    known.push(`${workerAlias(c)} ${hostKey(w.hostPublicKey)}`);
    const aliases =
      c === NONE.pool
        ? [
            [workerAlias(c), 'no'],
            [DIRECT_C_ALIAS, 'yes'],
          ]
        : [[workerAlias(c), 'no']];
    for (const [alias, compression] of aliases) {
      lines.push(
        `Host ${alias}`,
        `  HostName ${w.address as string}`,
        `  Port ${w.sshPort}`,
        `  HostKeyAlias ${workerAlias(c)}`,
        `  IdentityFile ${key}`,
        '  User root',
        `  Compression ${compression}`,
      );
    }
  }
  const knownHosts = join(b.dir, 'known_hosts_uplink');
  writeFileSync(knownHosts, `${known.join('\n')}\n`);
  const file = join(b.dir, 'ssh_config_uplink');
  writeFileSync(file, [...lines, ...sshClientDefaults(knownHosts), ''].join('\n'));
  return file;
}

class Payloads {
  private readonly folders = new Map<PayloadKind, string>();
  constructor(
    private readonly b: BenchRig,
    private readonly bytes: number,
  ) {}

  folder(kind: PayloadKind): string {
    const known = this.folders.get(kind);
    if (known) return known;
    const folder = join(this.b.dir, `uplink-${kind}`);
    mkdirSync(folder);
    if (kind === 'random') writeRandomFile(join(folder, 'data'), this.bytes);
    else
      progress(
        `realistic payload: ${fixed(makeRealistic(folder, this.bytes) / MiB, 0)} MiB of files from ${REALISTIC_SOURCES.join(', ')} (those that exist)`,
      );
    this.folders.set(kind, folder);
    return folder;
  }

  /** A new store path of the payload (a fresh nonce), here or on a worker (which shares this machine's /tmp). */
  async add(kind: PayloadKind, config: string, onWorker: string | undefined): Promise<{ path: string; narBytes: number }> {
    const folder = this.folder(kind);
    writeFileSync(join(folder, 'nonce'), `${randomBytes(16).toString('hex')}\n`);
    const on = (args: string[]): Promise<{ stdout: string }> =>
      onWorker ? cmd('ssh', ['-F', config, onWorker, `nix-store ${args.join(' ')}`]) : cmd('nix-store', args);
    const path = (await on(['--add', folder])).stdout.trim();
    if (!path.startsWith('/nix/store/')) throw new Error(`nix-store --add printed ${JSON.stringify(path)}`);
    return { path, narBytes: Number((await on(['-q', '--size', path])).stdout.trim()) };
  }
}

async function compressibility(kind: PayloadKind, path: string, narBytes: number): Promise<Compressibility> {
  const size = async (filter: string): Promise<number> =>
    Number((await cmd('sh', ['-c', `nix-store --dump '${path}' | ${filter} | wc -c`])).stdout.trim());
  return { payload: kind, narBytes, gzip6: narBytes / (await size('gzip -6')), zstd3: narBytes / (await size('zstd -3 -c')) };
}

function linkBytesOf(b: BenchRig, w: WorkerRecord): LinkBytes {
  const server = b.rig.fake.liveServers().find((s) => s.address === w.address);
  if (!server?.linkBytes) throw new Error(`no emulated link in front of ${w.address as string}`);
  return { ...server.linkBytes };
}

export interface UplinkSettings {
  mib: number;
  runs: number;
  profiles: string[];
  directions: string[];
  payloads: string[];
  /** Also zlib and zstd at fixed level 12. */
  more: boolean;
  stallMs: number;
  bootDelayMs: number;
  readyDelayMs: number;
  verbose: boolean;
  cli?: string;
  /** Node arguments of the daemon (a CPU profile, say). */
  nodeArgs: string[];
}

/** What one profile's rig runs. */
interface Plan {
  bytes: number;
  runs: number;
  stallMs: number;
  settings: Setting[];
  directions: Direction[];
  payloads: PayloadKind[];
}

async function profileRuns(
  profile: Profile,
  plan: Plan,
  base: { bootDelayMs: number; readyDelayMs: number; verbose: boolean; cli?: string; nodeArgs: string[] },
  result: UplinkResult,
): Promise<void> {
  progress(`uplink ${profile.name}: ${nominal(profile)}`);
  const b = await BenchRig.start({
    ...base,
    ...(profile.link ? { fake: { link: profile.link } } : {}),
    pools: Object.fromEntries(
      plan.settings.map((c) => [
        c.pool,
        {
          maxWorkers: 1,
          jobsPerWorker: 8,
          idleTimeout: '60m',
          compression: c.compression,
          ...(c.compressionLevel !== undefined ? { compressionLevel: c.compressionLevel } : {}),
        },
      ]),
    ),
  });
  try {
    const plain = b.sshConfig();
    const workers: Record<string, WorkerRecord> = {};
    for (const { pool: c } of plan.settings) {
      await serveHandshake(plain, `${c}@${ENDPOINT_ALIAS}`);
      workers[c] = b.workerRecord(c);
    }
    const config = writeSshConfig(b, plan.settings, workers);
    const payloads = new Payloads(b, plan.bytes);
    for (const kind of plan.payloads) {
      for (const direction of plan.directions) {
        // The build runs with the realistic payload only: its point is the real remote-build path.
        if (direction === 'build' && kind !== 'realistic') continue;
        const all = routes(plan.settings);
        for (let i = 0; i < plan.runs; i++) {
          // Rotate the order from run to run, so that no route always goes first.
          const order = all.map((_, k) => all[(k + i) % all.length] as Route);
          for (const route of order) {
            const source = await payloads.add(kind, config, direction === 'download' ? route.workerAlias : undefined);
            // Measured on this machine's copy: a download's source is made on the worker.
            if (direction !== 'download' && !result.compressibility.some((c) => c.payload === kind))
              result.compressibility.push(await compressibility(kind, source.path, source.narBytes));
            try {
              await cmd('sync', []);
              const w = workers[route.pool] as WorkerRecord;
              const link0 = profile.link ? linkBytesOf(b, w) : undefined;
              const lines0 = b.daemon.lines.length;
              const cpu0 = processCpuSeconds(b.pid);
              const env = { ...process.env, NIX_SSHOPTS: `-F ${config}` };
              const r =
                direction === 'build'
                  ? await cmdWatched(
                      'nix-build',
                      remoteBuildArgs(
                        `import ${INPUTS_NIX} { input = builtins.storePath "${source.path}"; nonce = "${randomBytes(6).toString('hex')}"; }`,
                        `${route.uri} x86_64-linux - 1 1 - - -`,
                      ),
                      { env, stallMs: plan.stallMs },
                    )
                  : await cmdWatched(
                      'nix',
                      [
                        '--extra-experimental-features',
                        'nix-command',
                        'copy',
                        '--no-check-sigs',
                        direction === 'upload' ? '--to' : '--from',
                        route.uri,
                        source.path,
                      ],
                      { env, stallMs: plan.stallMs },
                    );
              const link1 = link0 && linkBytesOf(b, w);
              const seen = route.via === 'ours' && !r.stalled ? await sessionsSince(b, route.pool, lines0) : undefined;
              const wire =
                link0 && link1
                  ? { up: link1.up - link0.up, down: link1.down - link0.down }
                  : (seen?.wire ?? { up: Number.NaN, down: Number.NaN });
              const run: UplinkRun = {
                profile: profile.name,
                payload: kind,
                direction,
                route: route.label,
                narBytes: source.narBytes,
                ms: r.ms,
                wire,
                daemonCpuS: route.via === 'ours' ? processCpuSeconds(b.pid) - cpu0 : 0,
                ...(seen?.settled ? { settled: seen.settled } : {}),
                stalled: r.stalled,
              };
              result.runs.push(run);
              progress(
                `${profile.name} ${kind} ${direction} ${route.label}: ${r.stalled ? 'STALLED' : `${fixed(r.ms / 1000, 2)} s, ${fixed(source.narBytes / r.ms / 1000, 1)} MB/s`}, wire ${fixed(run.wire.up / 1e6, 1)} MB up / ${fixed(run.wire.down / 1e6, 1)} MB down${run.settled ? `, settled ${settledOf(run)}` : ''}`,
              );
            } finally {
              // The payload with everything that refers to it (a build's .drv and output): a
              // path that stayed on the worker would be skipped by the next run's upload.
              const closure = (await cmd('nix-store', ['-q', '--referrers-closure', source.path], { allowFail: true })).stdout
                .split('\n')
                .filter((l) => l.startsWith('/nix/store/'));
              await cmd('nix-store', ['--delete', ...(closure.length > 0 ? closure : [source.path])], { allowFail: true });
              await cmd('ssh', ['-F', config, route.workerAlias, `nix-store --delete $(nix-store -q --referrers-closure ${source.path})`], {
                allowFail: true,
              });
            }
          }
        }
      }
    }
  } finally {
    await b.stop();
  }
}

function checkedList<T extends string>(what: string, values: string[], known: readonly T[]): T[] {
  return values.map((v) => {
    const k = known.find((x) => x === v);
    if (!k) throw new Error(`${what}: unknown ${JSON.stringify(v)} (known: ${known.join(', ')})`);
    return k;
  });
}

export async function uplink(s: UplinkSettings): Promise<UplinkResult> {
  const result: UplinkResult = { mib: s.mib, runs: [], compressibility: [] };
  const profiles = s.profiles.map(profileOf);
  const plan: Plan = {
    bytes: s.mib * MiB,
    runs: s.runs,
    stallMs: s.stallMs,
    settings: s.more ? [...SETTINGS, ...MORE_SETTINGS] : SETTINGS,
    directions: checkedList('BENCH_UPLINK_DIRECTIONS', s.directions, DIRECTIONS),
    payloads: checkedList('BENCH_UPLINK_PAYLOADS', s.payloads, PAYLOADS),
  };
  for (const profile of profiles)
    await profileRuns(
      profile,
      plan,
      {
        bootDelayMs: s.bootDelayMs,
        readyDelayMs: s.readyDelayMs,
        verbose: s.verbose,
        nodeArgs: s.nodeArgs,
        ...(s.cli ? { cli: s.cli } : {}),
      },
      result,
    );
  report(result, profiles, plan);
  return result;
}

/** The run of median wall time among a route's finished runs, or undefined when none finished. */
function medianOf(done: UplinkRun[]): UplinkRun | undefined {
  return [...done].sort((a, b) => a.ms - b.ms)[Math.floor((done.length - 1) / 2)];
}

type Pick = (profile: string, payload: PayloadKind, direction: Direction, route: string) => UplinkRun | undefined;

const settledOf = (x: UplinkRun): string => (x.settled ? `${x.settled.up ?? '—'} / ${x.settled.down ?? '—'}` : '—');
const directionName = (d: Direction): string => (d === 'build' ? 'nix-build' : d);
/** The median run's wall time, and with more than one finished run the fastest and slowest: the spread a ratio sits in. */
function wallCell(median: UplinkRun, done: UplinkRun[]): string {
  const seconds = done.map((x) => x.ms / 1000);
  const cell = fixed(median.ms / 1000, 2);
  return seconds.length > 1 ? `${cell} (${fixed(Math.min(...seconds), 2)}–${fixed(Math.max(...seconds), 2)})` : cell;
}
/** Payload MB/s of a run. */
const rateOf = (x: UplinkRun): number => x.narBytes / x.ms / 1000;

/** What direct OpenSSH carried in each direction, beside what the link promises. */
function directCarried(p: Profile, plan: Plan, pick: Pick): string {
  const parts = plan.payloads.flatMap((payload) =>
    plan.directions.map((d) => {
      const x = pick(p.name, payload, d, DIRECT);
      if (!x) return `${payload} ${directionName(d)}: stalled`;
      const wireMbit = ((x.wire.up + x.wire.down) * 8) / x.ms / 1000;
      return `${payload} ${directionName(d)} ${fixed(rateOf(x), 1)} MB/s payload, ${Number.isNaN(wireMbit) ? 'wire not counted' : `${fixed(wireMbit, 1)} Mbit/s on the wire`}`;
    }),
  );
  return `Direct OpenSSH carried: ${parts.join('; ')} (nominal: ${nominal(p)}).`;
}

function report(r: UplinkResult, profiles: Profile[], plan: Plan): void {
  say(`### Uplink: nix copy through an emulated link, ${r.mib} MiB payloads (median of the runs per route)`);
  say();
  say(
    table(
      ['payload', 'NAR MB', 'gzip -6 ratio', 'zstd -3 ratio'],
      r.compressibility.map((c) => [c.payload, fixed(c.narBytes / 1e6, 1), fixed(c.gzip6, 2), fixed(c.zstd3, 2)]),
    ),
  );
  say();
  /** A route's finished runs: a stalled one has no time to rank. */
  const runsOf = (profile: string, payload: PayloadKind, direction: Direction, route: string): UplinkRun[] =>
    r.runs.filter((x) => !x.stalled && x.profile === profile && x.payload === payload && x.direction === direction && x.route === route);
  const pick: Pick = (profile, payload, direction, route) => medianOf(runsOf(profile, payload, direction, route));
  for (const p of profiles) {
    say(`#### ${p.name}: ${nominal(p)}`);
    say();
    say(directCarried(p, plan, pick));
    say();
    const rows: string[][] = [];
    for (const payload of plan.payloads)
      for (const direction of plan.directions) {
        if (direction === 'build' && payload !== 'realistic') continue;
        const direct = pick(p.name, payload, direction, DIRECT);
        for (const route of routes(plan.settings)) {
          const x = pick(p.name, payload, direction, route.label);
          const head = [payload, directionName(direction), route.label];
          if (!x) rows.push([...head, 'stalled', '', '', '', '', '']);
          else
            rows.push([
              ...head,
              wallCell(x, runsOf(p.name, payload, direction, route.label)),
              fixed(rateOf(x), 1),
              Number.isNaN(x.wire.up) ? '—' : fixed((x.wire.up + x.wire.down) / 1e6, 1),
              direct ? fixed(direct.ms / x.ms, 2) : 'n/a',
              settledOf(x),
              route.via === 'ours' ? fixed(x.daemonCpuS / (x.narBytes / GiB), 2) : '—',
            ]);
        }
      }
    say(
      table(
        [
          'payload',
          'direction',
          'route',
          'wall s (fastest–slowest)',
          'MB/s',
          'wire MB',
          'throughput ÷ direct',
          'settled up/down',
          'daemon CPU-s/GiB',
        ],
        rows,
      ),
    );
    say();
  }
  goals(profiles, pick);
}

function goals(profiles: Profile[], pick: Pick): void {
  const ran = (name: string): boolean => profiles.some((p) => p.name === name);
  const verdict = (ok: boolean): string => (ok ? 'met' : '**not met**');
  const ours = DEFAULT_SETTING.label;
  const ms = (profile: string, direction: Direction, route: string): number =>
    pick(profile, 'realistic', direction, route)?.ms ?? Number.NaN;
  const rows: string[][] = [];
  for (const profile of ['office', LOOPBACK].filter(ran)) {
    const both = (['upload', 'download'] as Direction[]).map((d) => ms(profile, d, DIRECT) / ms(profile, d, ours));
    rows.push([
      `${profile}, realistic: throughput ÷ direct (up / down)`,
      '≥ 0.9',
      both.map((x) => fixed(x, 2)).join(' / '),
      verdict(both.every((x) => x >= 0.9)),
    ]);
  }
  if (ran('home')) {
    const vsPlain = ms('home', 'upload', ours) / ms('home', 'upload', DIRECT);
    const vsC = ms('home', 'upload', ours) / ms('home', 'upload', DIRECT_C);
    rows.push(
      ['home, realistic, upload: time ÷ direct', '≤ 0.45', fixed(vsPlain, 2), verdict(vsPlain <= 0.45)],
      ['home, realistic, upload: time ÷ direct -C', '≤ 0.8', fixed(vsC, 2), verdict(vsC <= 0.8)],
    );
  }
  say(`Goals of the default (${DEFAULT_WORKER_COMPRESSION}, level auto):`);
  say();
  say(table(['goal', 'target', 'measured', 'verdict'], rows));
  say();
}
