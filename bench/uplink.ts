/**
 * Benchmark "uplink": `nix copy` through an emulated uplink (test/rig/link.ts), through our daemon
 * with each `compression` setting against direct OpenSSH to the same kind of worker through the
 * same link, plain and with `-C`. Realistic payloads (this machine's binaries, libraries and text)
 * and one random payload as the worst case. See bench/README.md, section "Uplink".
 *
 * One rig per link profile: the fake cloud puts the link in front of every server's sshd, and the
 * daemon has one warm pool per compression setting (pool name = setting). Bytes on the wire come
 * from the relay's counters of the server the copy went to.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { WorkerCompression } from '../src/core/config.js';
import type { WorkerRecord } from '../src/daemon/state.js';
import { linkProfile, type LinkBytes, type LinkProfile } from '../test/rig/link.js';
import { waitUntil, type LogLine } from '../test/rig/rig.js';
import { cmd, cmdWatched, fixed, GiB, MiB, processCpuSeconds, progress, say, table, writeRandomFile } from './lib.js';
import { makeRealistic, REALISTIC_SOURCES } from './payload.js';
import { BenchRig, ENDPOINT_ALIAS, sshClientDefaults } from './rig.js';
import { remoteBuildArgs, ROOT } from '../test/rig/rig.js';
import { serveHandshake } from './ssh.js';

/** `build`: a nix-build whose input is the payload (uploaded by Nix's build hook), small output. */
export type Direction = 'upload' | 'download' | 'build';
const DIRECTIONS: Direction[] = ['upload', 'download', 'build'];
const INPUTS_NIX = join(ROOT, 'test', 'fixtures', 'inputs.nix');
export type PayloadKind = 'realistic' | 'random';

interface Route {
  label: string;
  via: 'ours' | 'direct';
  /** ssh_config alias of the worker this route ends on (for making and deleting paths there). */
  workerAlias: string;
  /** Pool whose worker the route reaches (its link counters). */
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
  wire: LinkBytes;
  daemonCpuS: number;
  stalled: boolean;
  /** With zstd: what the run's biggest session settled on, up/down (the daemon's "session ended" line). */
  settled?: string;
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

/** The daemon's pools of this section: one per compression setting measured (the pool's name is the setting's). */
interface Setting {
  pool: string;
  label: string;
  compression: WorkerCompression;
  compressionLevel?: number;
}

/**
 * The default (zstd, level "auto"), zstd at a fixed level 3 (the default before "auto") and none;
 * BENCH_UPLINK_MORE=1 adds zlib and zstd fixed at 12.
 */
const SETTINGS: Setting[] = [
  { pool: 'none', label: 'ours, none', compression: 'none' },
  { pool: 'zstd3', label: 'ours, zstd fixed 3', compression: 'zstd', compressionLevel: 3 },
  { pool: 'zstd', label: 'ours, zstd auto (the default)', compression: 'zstd' },
  ...(process.env.BENCH_UPLINK_MORE === '1'
    ? [
        { pool: 'zlib', label: 'ours, zlib', compression: 'zlib' as WorkerCompression },
        { pool: 'zstd12', label: 'ours, zstd fixed 12', compression: 'zstd' as WorkerCompression, compressionLevel: 12 },
      ]
    : []),
];
const DEFAULT_LABEL = 'ours, zstd auto (the default)';

/** Without an emulated link: the fake's servers as they are, on this machine's loopback. */
export const LOOPBACK: LinkProfile = {
  name: 'loopback',
  upBitsPerSecond: Number.POSITIVE_INFINITY,
  downBitsPerSecond: Number.POSITIVE_INFINITY,
  delayMs: 0,
};

/** BENCH_UPLINK_PAYLOADS (default realistic) and BENCH_UPLINK_DIRECTIONS (default upload,download). */
function listEnv<T extends string>(name: string, allowed: readonly T[], fallback: T[]): T[] {
  const value = process.env[name];
  if (!value) return fallback;
  const items = value.split(',').map((x) => x.trim());
  for (const item of items)
    if (!(allowed as readonly string[]).includes(item)) throw new Error(`${name}: ${item} is not one of ${allowed.join(', ')}`);
  return items as T[];
}
const PAYLOADS: PayloadKind[] = listEnv('BENCH_UPLINK_PAYLOADS', ['realistic', 'random'] as const, ['realistic']);
const RUN_DIRECTIONS: Direction[] = listEnv('BENCH_UPLINK_DIRECTIONS', DIRECTIONS, ['upload', 'download']);

const workerAlias = (pool: string): string => `bench-worker-${pool}`;
const DIRECT_C_ALIAS = `${workerAlias('none')}-c`;

function routes(): Route[] {
  return [
    ...SETTINGS.map((c): Route => ({
      label: c.label,
      via: 'ours',
      workerAlias: workerAlias(c.pool),
      pool: c.pool,
      uri: `ssh-ng://${c.pool}@${ENDPOINT_ALIAS}`,
    })),
    { label: 'direct OpenSSH', via: 'direct', workerAlias: workerAlias('none'), pool: 'none', uri: `ssh-ng://root@${workerAlias('none')}` },
    { label: 'direct OpenSSH -C', via: 'direct', workerAlias: workerAlias('none'), pool: 'none', uri: `ssh-ng://root@${DIRECT_C_ALIAS}` },
  ];
}

/** An ssh_config with our endpoint, each pool's worker, and the `none` worker again with `Compression yes` (ssh -C). */
function writeSshConfig(b: BenchRig, workers: Record<string, WorkerRecord>): string {
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
  for (const { pool: c } of SETTINGS) {
    const w = workers[c] as WorkerRecord;
    const key = join(b.dir, `login_${c}`);
    writeFileSync(key, w.loginPrivateKey, { mode: 0o600 });
    known.push(`${workerAlias(c)} ${hostKey(w.hostPublicKey)}`);
    const aliases =
      c === 'none'
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

function wireOf(b: BenchRig, w: WorkerRecord): LinkBytes {
  const server = b.rig.fake.liveServers().find((s) => s.address === w.address);
  // Loopback: no emulated link, no counters (the table shows —).
  if (server && server.linkBytes === null) return { up: Number.NaN, down: Number.NaN };
  if (!server?.linkBytes) throw new Error(`no emulated link in front of ${w.address as string}`);
  return server.linkBytes;
}

async function profileRuns(
  profile: LinkProfile,
  bytes: number,
  runsPer: number,
  stallMs: number,
  base: { bootDelayMs: number; readyDelayMs: number; verbose: boolean; cli?: string },
  result: UplinkResult,
): Promise<void> {
  progress(
    `uplink ${profile.name}: ${profile.upBitsPerSecond / 1e6} Mbit/s up, ${profile.downBitsPerSecond / 1e6} Mbit/s down, ${profile.delayMs} ms one way`,
  );
  const b = await BenchRig.start({
    ...base,
    fake: profile === LOOPBACK ? {} : { link: profile },
    pools: Object.fromEntries(
      SETTINGS.map((c) => [
        c.pool,
        {
          maxWorkers: 1,
          jobsPerWorker: 8,
          idleTimeout: '60m',
          compression: c.compression,
          ...(c.compressionLevel ? { compressionLevel: c.compressionLevel } : {}),
        },
      ]),
    ),
  });
  try {
    const plain = b.sshConfig();
    const workers: Record<string, WorkerRecord> = {};
    for (const { pool: c } of SETTINGS) {
      await serveHandshake(plain, `${c}@${ENDPOINT_ALIAS}`);
      workers[c] = b.workerRecord(c);
    }
    const config = writeSshConfig(b, workers);
    const payloads = new Payloads(b, bytes);
    for (const kind of PAYLOADS) {
      for (const direction of RUN_DIRECTIONS) {
        // The build runs with the realistic payload only: its point is the real remote-build path.
        if (direction === 'build' && kind !== 'realistic') continue;
        const all = routes();
        for (let i = 0; i < runsPer; i++) {
          // Rotate the order from run to run, so that no route always goes first.
          const order = all.map((_, k) => all[(k + i) % all.length] as Route);
          for (const route of order) {
            const source = await payloads.add(kind, config, direction === 'download' ? route.workerAlias : undefined);
            if (!result.compressibility.some((c) => c.payload === kind))
              result.compressibility.push(await compressibility(kind, source.path, source.narBytes));
            try {
              await cmd('sync', []);
              const w = workers[route.pool] as WorkerRecord;
              const wire0 = { ...wireOf(b, w) };
              const cpu0 = processCpuSeconds(b.pid);
              const lines0 = b.daemon.lines.length;
              const env = { ...process.env, NIX_SSHOPTS: `-F ${config}` };
              const r =
                direction === 'build'
                  ? await cmdWatched(
                      'nix-build',
                      remoteBuildArgs(
                        `import ${INPUTS_NIX} { input = builtins.storePath "${source.path}"; nonce = "${randomBytes(6).toString('hex')}"; }`,
                        `${route.uri} x86_64-linux - 1 1 - - -`,
                      ),
                      { env, stallMs },
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
                      { env, stallMs },
                    );
              const wire1 = wireOf(b, w);
              const run: UplinkRun = {
                profile: profile.name,
                payload: kind,
                direction,
                route: route.label,
                narBytes: source.narBytes,
                ms: r.ms,
                wire: { up: wire1.up - wire0.up, down: wire1.down - wire0.down },
                daemonCpuS: route.via === 'ours' ? processCpuSeconds(b.pid) - cpu0 : 0,
                stalled: r.stalled,
              };
              // The session's last line comes once Nix has closed it, a moment after the copy ends.
              if (route.via === 'ours' && route.pool !== 'none')
                await waitUntil(() => settledOf(b.daemon.lines.slice(lines0), route.pool) !== undefined, 3000);
              const settled = settledOf(b.daemon.lines.slice(lines0), route.pool);
              if (settled) run.settled = settled;
              result.runs.push(run);
              progress(
                `${profile.name} ${kind} ${direction} ${route.label}: ${r.stalled ? 'STALLED' : `${fixed(r.ms / 1000, 2)} s, ${fixed(source.narBytes / r.ms / 1000, 1)} MB/s`}, wire ${fixed(run.wire.up / 1e6, 1)} MB up / ${fixed(run.wire.down / 1e6, 1)} MB down`,
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

/** "up/down" levels of the biggest session of a pool among `lines` (its "session ended" line's `zstd`). */
function settledOf(lines: LogLine[], pool: string): string | undefined {
  const ended = lines.filter((l) => l.msg === 'session ended' && l.user === pool && l.zstd);
  const biggest = ended.sort((a, b) => Number(b.up) + Number(b.down) - (Number(a.up) + Number(a.down)))[0];
  const zstd = biggest?.zstd as { up?: string; down?: string } | undefined;
  const short = (x: string | undefined): string => (x ?? '-').replace('level ', '').replace('pass-through', 'raw');
  return zstd ? `${short(zstd.up)}/${short(zstd.down)}` : undefined;
}

export interface UplinkSettings {
  mib: number;
  runs: number;
  profiles: string[];
  stallMs: number;
  bootDelayMs: number;
  readyDelayMs: number;
  verbose: boolean;
  cli?: string;
}

export async function uplink(s: UplinkSettings): Promise<UplinkResult> {
  const result: UplinkResult = { mib: s.mib, runs: [], compressibility: [] };
  const profiles = s.profiles.map((p) => (p === LOOPBACK.name ? LOOPBACK : linkProfile(p)));
  for (const profile of profiles) {
    await profileRuns(
      profile,
      s.mib * MiB,
      s.runs,
      s.stallMs,
      { bootDelayMs: s.bootDelayMs, readyDelayMs: s.readyDelayMs, verbose: s.verbose, ...(s.cli ? { cli: s.cli } : {}) },
      result,
    );
  }
  report(result, profiles);
  return result;
}

/** Median wall time of a route, or NaN when no run finished. */
function medianOf(runs: UplinkRun[]): UplinkRun | undefined {
  const done = runs.filter((r) => !r.stalled).sort((a, b) => a.ms - b.ms);
  return done[Math.floor((done.length - 1) / 2)];
}

function report(r: UplinkResult, profiles: LinkProfile[]): void {
  say(`### Uplink: nix copy through an emulated link, ${r.mib} MiB payloads (median of the runs per route)`);
  say();
  say(
    table(
      ['payload', 'NAR MB', 'gzip -6 ratio', 'zstd -3 ratio'],
      r.compressibility.map((c) => [c.payload, fixed(c.narBytes / 1e6, 1), fixed(c.gzip6, 2), fixed(c.zstd3, 2)]),
    ),
  );
  say();
  const pick = (profile: string, payload: PayloadKind, direction: Direction, route: string): UplinkRun | undefined =>
    medianOf(r.runs.filter((x) => x.profile === profile && x.payload === payload && x.direction === direction && x.route === route));
  const mb = (bytes: number): string => (Number.isNaN(bytes) ? '—' : fixed(bytes / 1e6, 1));
  for (const p of profiles) {
    const nominal =
      p === LOOPBACK
        ? 'no emulated link'
        : `${p.upBitsPerSecond / 1e6} Mbit/s up, ${p.downBitsPerSecond / 1e6} Mbit/s down, ${p.delayMs} ms one way`;
    say(`#### ${p.name}: ${nominal}`);
    say();
    // What the link carried for the baseline: an emulated link measures only where it can carry its setting.
    for (const direction of RUN_DIRECTIONS) {
      const direct = pick(p.name, 'realistic', direction, 'direct OpenSSH');
      if (!direct) continue;
      const wire = direct.wire.up + direct.wire.down;
      const carried = Number.isNaN(wire) ? '' : `, ${fixed((wire * 8) / direct.ms / 1000, 0)} Mbit/s on the wire`;
      say(
        `- direct OpenSSH carried ${fixed(direct.narBytes / direct.ms / 1000, 1)} MB/s of payload ${direction === 'download' ? 'down' : 'up'}${carried}`,
      );
    }
    say();
    const rows: string[][] = [];
    for (const payload of PAYLOADS) {
      for (const direction of RUN_DIRECTIONS) {
        if (direction === 'build' && payload !== 'realistic') continue;
        const direct = pick(p.name, payload, direction, 'direct OpenSSH');
        for (const route of routes()) {
          const x = pick(p.name, payload, direction, route.label);
          const what = [payload, direction === 'build' ? 'nix-build' : direction, route.label];
          if (!x) {
            rows.push([...what, 'stalled', '', '', '', '', '', '', '']);
            continue;
          }
          rows.push([
            ...what,
            fixed(x.ms / 1000, 2),
            fixed(x.narBytes / x.ms / 1000, 1),
            mb(x.wire.up),
            mb(x.wire.down),
            route.via === 'ours' ? fixed(x.daemonCpuS / (x.narBytes / GiB), 2) : '—',
            x.settled ?? '—',
            direct ? fixed(direct.ms / x.ms, 2) : 'n/a',
          ]);
        }
      }
    }
    say(
      table(
        [
          'payload',
          'direction',
          'path',
          'wall s',
          'payload MB/s',
          'wire MB up',
          'wire MB down',
          'daemon CPU-s/GiB',
          'zstd settled up/down',
          'throughput ÷ direct',
        ],
        rows,
      ),
    );
    say();
  }
  goals(pick);
}

/** The goals of the default: time on the home uplink, throughput where the CPU is the limit. */
function goals(pick: (profile: string, payload: PayloadKind, direction: Direction, route: string) => UplinkRun | undefined): void {
  const ms = (profile: string, direction: Direction, route: string): number =>
    pick(profile, 'realistic', direction, route)?.ms ?? Number.NaN;
  const verdict = (ok: boolean): string => (ok ? 'met' : '**not met**');
  const rows: string[][] = [];
  const homeVsDirect = ms('home', 'upload', DEFAULT_LABEL) / ms('home', 'upload', 'direct OpenSSH');
  const homeVsC = ms('home', 'upload', DEFAULT_LABEL) / ms('home', 'upload', 'direct OpenSSH -C');
  rows.push(
    ['home, realistic, upload: time ÷ direct', '≤ 0.45', fixed(homeVsDirect, 2), verdict(homeVsDirect <= 0.45)],
    ['home, realistic, upload: time ÷ direct -C', '≤ 0.8', fixed(homeVsC, 2), verdict(homeVsC <= 0.8)],
  );
  for (const profile of ['office', 'loopback']) {
    const ratios = (['upload', 'download'] as Direction[]).map((d) => ms(profile, d, 'direct OpenSSH') / ms(profile, d, DEFAULT_LABEL));
    rows.push([
      `${profile}, realistic: throughput ÷ direct (up / down)`,
      '≥ 0.9',
      ratios.map((x) => fixed(x, 2)).join(' / '),
      verdict(ratios.every((x) => x >= 0.9)),
    ]);
  }
  say('Goals of the default (zstd, level "auto"):');
  say();
  say(table(['goal', 'target', 'measured', 'verdict'], rows));
  say();
}
