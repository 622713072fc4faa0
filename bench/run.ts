/**
 * `npm run bench`: the benchmarks of nix-hcloud-builder against a fake Hetzner cloud whose servers
 * are real sshd + Nix workers on this machine. Not tests: each prints a table, with ratios against
 * a baseline measured in the same run. See bench/README.md.
 *
 * Environment (all optional):
 *   BENCH_ONLY         comma list of cold,setup,throughput,burst,build,memory,soak,uplink,warm,stall (default: all)
 *   BENCH_MIB          size of each throughput path in MiB (default 1024)
 *   BENCH_RUNS         throughput runs per direction and path (default 5)
 *   BENCH_FIXED_RUNS   runs of the tiny paths that give the fixed cost of one nix copy (default 3)
 *   BENCH_CIPHERS      client ciphers for the throughput runs (default chacha20-poly1305@openssh.com,
 *                      OpenSSH's own default); e.g. chacha20-poly1305@openssh.com,aes128-gcm@openssh.com
 *   BENCH_SESSIONS     session-setup samples per path (default 50)
 *   BENCH_COLD_RUNS    cold starts (default 5)
 *   BENCH_BURST        sessions at once in the burst (default 64)
 *   BENCH_BURST_RUNS   bursts, each on an empty pool (default 1)
 *   BENCH_BUILD_DRVS   derivations per nix-build (default 32)
 *   BENCH_BUILD_RUNS   nix-build runs per path (default 3)
 *   BENCH_BUILD_JOBS   max-jobs of the machines line on both paths (default 8 = the warm pool's slots)
 *   BENCH_MEM_SESSIONS nix copy at once for the memory peak (default 64)
 *   BENCH_MEM_MIB      size of each of their store paths in MiB (default 64: big enough that all 64 stream at once)
 *   BENCH_ZERO_MIB     size of the memory section's all-zero output in MiB (default 2048)
 *   BENCH_SOAK_S       length of the soak in seconds (default 600)
 *   BENCH_SOAK_LANES   serve-handshake lanes of the soak, besides its one lane of small copies (default 4)
 *   BENCH_SOAK_KIB     size of the soak's small copies in KiB (default 1024)
 *   BENCH_UPLINK_MIB   size of each uplink payload in MiB (default 256)
 *   BENCH_UPLINK_RUNS  uplink runs per route, payload and direction (default 1)
 *   BENCH_UPLINK_PROFILES  link profiles of the uplink section: home, office, loopback (no emulated link) or
 *                      UP_MBIT/DOWN_MBIT/DELAY_MS (default home,office,loopback)
 *   BENCH_UPLINK_DIRECTIONS  comma list of upload, download, build (default upload,download)
 *   BENCH_UPLINK_PAYLOADS    comma list of realistic, random (default realistic)
 *   BENCH_UPLINK_MORE  set: the uplink section also runs zlib and zstd at fixed level 12
 *   BENCH_WARM_MIB     size of the warm-store section's payload in MiB (default 128)
 *   BENCH_WARM_PROFILE link profile of the warm-store section (default home)
 *   BENCH_STALL_BOOT_S the worker's boot time in the stall section (default 20); its client Nix versions: NHB_NIX_CLIENTS
 *   BENCH_BOOT_MS      the fake cloud's boot delay (default 1000)
 *   BENCH_READY_MS     the fake cloud's delay from sshd up to cloud-init's runcmd (default 500)
 *   BENCH_STALL_S      a transfer that moves no byte for this long is killed and reported as stalled (default 20)
 *   BENCH_CLI          the daemon's built CLI to measure (default dist/src/cli/main.js of this tree), e.g. another build
 *   BENCH_COMPRESSION  compression of the loopback sections' pools: none, zlib or zstd (default: the
 *                      config's default, zstd at level auto); the setup and build sections run the
 *                      default pool and one with compression none beside it, whatever this says
 *   BENCH_DAEMON_NODE_ARGS  comma list of node arguments for the daemon, e.g. --cpu-prof,--cpu-prof-dir=DIR
 *   BENCH_JSON         also write every figure to this file as JSON
 *   BENCH_VERBOSE      show the fake cloud's log lines
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { DEFAULT_WORKER_COMPRESSION, WORKER_COMPRESSIONS, type WorkerCompression } from '../src/core/config.js';
import { buildWorkload, type BuildResult } from './build.js';
import { burst, type BurstResult } from './burst.js';
import { coldStart, compareColdStarts, type ColdResult } from './cold.js';
import { makeNixRelease, poolNixSetting, serveNixRelease } from '../test/rig/nix-release.js';
import { cmd, envInt, envList, fixed, processMemory, progress, say } from './lib.js';
import { memoryPeak, soak, type MemoryResult, type SoakResult } from './memory.js';
import { BenchRig, BURST_POOL, COLD_POOL, COLD_STOCK_POOL, DEFAULT_POOL, ENDPOINT_ALIAS, PLAIN_POOL, WARM_POOL, WIDE_POOL } from './rig.js';
import { sessionSetup, type SetupResult } from './setup.js';
import { stall, type StallResult } from './stall.js';
import { serveHandshake } from './ssh.js';
import { throughput, type ThroughputResult } from './throughput.js';
import { uplink, type UplinkResult } from './uplink.js';
import { warmStore, type WarmResult } from './warm-store.js';

const SECTIONS = ['cold', 'setup', 'throughput', 'burst', 'build', 'memory', 'soak', 'uplink', 'warm', 'stall'] as const;
/** Sections with rigs of their own, run after the others. */
const OWN_RIGS: readonly Section[] = ['uplink', 'warm', 'stall'];
type Section = (typeof SECTIONS)[number];

const only = envList('BENCH_ONLY', [...SECTIONS]);
for (const s of only)
  if (!(SECTIONS as readonly string[]).includes(s))
    throw new Error(`BENCH_ONLY: unknown section ${JSON.stringify(s)} (known: ${SECTIONS.join(', ')})`);
const wanted = (s: Section): boolean => only.includes(s);

function envCompression(): WorkerCompression {
  const value = process.env.BENCH_COMPRESSION || DEFAULT_WORKER_COMPRESSION;
  const known = WORKER_COMPRESSIONS.find((c) => c === value);
  if (!known) throw new Error(`BENCH_COMPRESSION must be one of ${WORKER_COMPRESSIONS.join(', ')}, not ${JSON.stringify(value)}`);
  return known;
}

const settings = {
  mib: envInt('BENCH_MIB', 1024),
  runs: envInt('BENCH_RUNS', 5, 1),
  fixedRuns: envInt('BENCH_FIXED_RUNS', 3, 1),
  ciphers: envList('BENCH_CIPHERS', ['chacha20-poly1305@openssh.com']),
  sessions: envInt('BENCH_SESSIONS', 50, 1),
  coldRuns: envInt('BENCH_COLD_RUNS', 5, 1),
  stallS: envInt('BENCH_STALL_S', 20, 1),
  burst: envInt('BENCH_BURST', 64, 1),
  burstRuns: envInt('BENCH_BURST_RUNS', 1, 1),
  buildDrvs: envInt('BENCH_BUILD_DRVS', 32, 1),
  buildRuns: envInt('BENCH_BUILD_RUNS', 3, 1),
  buildJobs: envInt('BENCH_BUILD_JOBS', 8, 1),
  memSessions: envInt('BENCH_MEM_SESSIONS', 64, 1),
  memMib: envInt('BENCH_MEM_MIB', 64, 1),
  zeroMib: envInt('BENCH_ZERO_MIB', 2048, 1),
  soakS: envInt('BENCH_SOAK_S', 600, 10),
  soakLanes: envInt('BENCH_SOAK_LANES', 4, 1),
  soakKib: envInt('BENCH_SOAK_KIB', 1024, 1),
  uplinkMib: envInt('BENCH_UPLINK_MIB', 256, 1),
  uplinkRuns: envInt('BENCH_UPLINK_RUNS', 1, 1),
  uplinkProfiles: envList('BENCH_UPLINK_PROFILES', ['home', 'office', 'loopback']),
  uplinkDirections: envList('BENCH_UPLINK_DIRECTIONS', ['upload', 'download']),
  uplinkPayloads: envList('BENCH_UPLINK_PAYLOADS', ['realistic']),
  uplinkMore: Boolean(process.env.BENCH_UPLINK_MORE),
  warmMib: envInt('BENCH_WARM_MIB', 128, 1),
  warmProfile: process.env.BENCH_WARM_PROFILE || 'home',
  compression: envCompression(),
  bootDelayMs: envInt('BENCH_BOOT_MS', 1000),
  readyDelayMs: envInt('BENCH_READY_MS', 500),
  stallBootS: envInt('BENCH_STALL_BOOT_S', 20, 1),
};

async function versions(): Promise<Record<string, string>> {
  const first = async (c: string, args: string[]): Promise<string> => {
    const r = await cmd(c, args, { allowFail: true });
    return (r.stdout || r.stderr).trim().split('\n')[0] ?? '';
  };
  const require = createRequire(import.meta.url);
  const ssh2Version = (JSON.parse(readFileSync(require.resolve('ssh2/package.json'), 'utf8')) as { version: string }).version;
  const crypto = require('ssh2/lib/protocol/crypto.js') as { bindingAvailable?: boolean };
  return {
    cpu: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`,
    node: process.version,
    nix: await first('nix', ['--version']),
    openssh: await first('ssh', ['-V']),
    ssh2: `${ssh2Version} (native crypto binding: ${crypto.bindingAvailable ? 'yes' : 'NO: expect several times slower'})`,
    daemon: `${process.env.BENCH_CLI ? `BENCH_CLI=${process.env.BENCH_CLI}` : 'dist/src/cli/main.js of this tree'}${process.env.BENCH_DAEMON_NODE_ARGS ? ` with node ${process.env.BENCH_DAEMON_NODE_ARGS}` : ''}`,
    'load average at start': readFileSync('/proc/loadavg', 'utf8').trim().split(' ').slice(0, 3).join(' '),
  };
}

async function main(): Promise<void> {
  const started = Date.now();
  const info = await versions();
  say(`## nix-hcloud-builder benchmarks, ${new Date().toISOString()}`);
  say();
  for (const [k, v] of Object.entries(info)) say(`- ${k}: ${v}`);
  say(`- settings: ${JSON.stringify(settings)}${only.length < SECTIONS.length ? `, only ${only.join(',')}` : ''}`);
  say();

  const results: Results = { info, settings, throughput: [] };
  if (only.some((s) => !OWN_RIGS.includes(s as Section))) await mainSections(results);
  if (wanted('uplink')) {
    // Its own rigs (one per link profile), after the others: the link is the fake cloud's.
    progress(`uplink: ${settings.uplinkProfiles.join(', ')}`);
    results.uplink = await uplink({
      mib: settings.uplinkMib,
      runs: settings.uplinkRuns,
      profiles: settings.uplinkProfiles,
      directions: settings.uplinkDirections,
      payloads: settings.uplinkPayloads,
      more: settings.uplinkMore,
      stallMs: settings.stallS * 1000,
      bootDelayMs: settings.bootDelayMs,
      readyDelayMs: settings.readyDelayMs,
      verbose: Boolean(process.env.BENCH_VERBOSE),
      ...(process.env.BENCH_CLI ? { cli: process.env.BENCH_CLI } : {}),
      nodeArgs: envList('BENCH_DAEMON_NODE_ARGS', []),
    });
  }
  if (wanted('warm')) {
    // Its own rig too: a pool with a store volume and one without, behind an emulated link.
    progress(`warm store: ${settings.warmMib} MiB over ${settings.warmProfile}`);
    results.warm = await warmStore({
      mib: settings.warmMib,
      profile: settings.warmProfile,
      bootDelayMs: settings.bootDelayMs,
      readyDelayMs: settings.readyDelayMs,
      verbose: Boolean(process.env.BENCH_VERBOSE),
      ...(process.env.BENCH_CLI ? { cli: process.env.BENCH_CLI } : {}),
    });
  }
  if (wanted('stall')) {
    // Its own rigs: one per client Nix and setting, each with a slow boot.
    results.stall = await stall({ bootS: settings.stallBootS, verbose: Boolean(process.env.BENCH_VERBOSE) });
  }
  results.totalS = (Date.now() - started) / 1000;
  say(
    `Total time ${fixed(results.totalS, 0)} s; load average at the end ${readFileSync('/proc/loadavg', 'utf8').trim().split(' ').slice(0, 3).join(' ')} (anything else running on the machine skews the figures).`,
  );
  if (process.env.BENCH_JSON) writeFileSync(process.env.BENCH_JSON, `${JSON.stringify(results, null, 2)}\n`);
}

type Results = {
  info: Record<string, string>;
  settings: typeof settings;
  cold?: ColdResult;
  coldStock?: ColdResult;
  setup?: SetupResult;
  throughput: ThroughputResult[];
  burst?: BurstResult;
  build?: BuildResult;
  memory?: MemoryResult;
  soak?: SoakResult;
  uplink?: UplinkResult;
  warm?: WarmResult;
  stall?: StallResult;
  daemonIdleRssMiB?: number;
  totalS?: number;
};

/** The sections that share one rig (the usual four pools, no emulated link). */
async function mainSections(results: Results): Promise<void> {
  // The cold section's stock pool installs Nix from a release tarball made from this machine's Nix.
  const releaseDir = mkdtempSync(join(tmpdir(), 'nhb-bench-nix-release-'));
  const release = wanted('cold') ? makeNixRelease(releaseDir) : undefined;
  const releaseServer = release ? await serveNixRelease(release) : undefined;
  const b = await BenchRig.start({
    ...(release && releaseServer ? { stockNix: poolNixSetting(release, releaseServer.url) } : {}),
    ...(process.env.BENCH_CLI ? { cli: process.env.BENCH_CLI } : {}),
    nodeArgs: envList('BENCH_DAEMON_NODE_ARGS', []),
    bootDelayMs: settings.bootDelayMs,
    readyDelayMs: settings.readyDelayMs,
    verbose: Boolean(process.env.BENCH_VERBOSE),
    compression: settings.compression,
  });
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\n${signal}: stopping the daemon and the fake cloud\n`);
    void b.stop().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const plain = b.sshConfig();
    if (wanted('cold')) {
      progress(`cold starts on pool ${COLD_POOL}`);
      results.cold = await coldStart(b, plain, settings.coldRuns, COLD_POOL);
      progress(`cold starts on pool ${COLD_STOCK_POOL} (a stock image: Nix installed at each boot)`);
      results.coldStock = await coldStart(b, plain, settings.coldRuns, COLD_STOCK_POOL);
      compareColdStarts([results.cold, results.coldStock]);
    }
    if (wanted('burst')) {
      progress(`burst of ${settings.burst} sessions on pool ${BURST_POOL}`);
      results.burst = await burst(b, plain, settings.burst, settings.burstRuns);
    }
    if (wanted('setup') || wanted('throughput') || wanted('build')) {
      progress(`booting the warm worker of pool ${WARM_POOL}`);
      await serveHandshake(plain, `${WARM_POOL}@${ENDPOINT_ALIAS}`);
      if (wanted('setup') || wanted('build')) {
        progress(`booting the warm workers of pools ${PLAIN_POOL} (compression none) and ${DEFAULT_POOL} (the default compression)`);
        await serveHandshake(plain, `${PLAIN_POOL}@${ENDPOINT_ALIAS}`);
        await serveHandshake(plain, `${DEFAULT_POOL}@${ENDPOINT_ALIAS}`);
      }
      const worker = b.workerRecord(WARM_POOL);
      results.daemonIdleRssMiB = processMemory(b.pid).rssMiB;
      progress(`warm worker ${worker.name} at ${worker.address}:${worker.sshPort}; daemon RSS ${fixed(results.daemonIdleRssMiB, 1)} MiB`);
      if (wanted('setup')) results.setup = await sessionSetup(b, b.sshConfig(worker), settings.sessions);
      if (wanted('throughput')) {
        for (const cipher of settings.ciphers)
          results.throughput.push(
            await throughput(
              b,
              b.sshConfig(worker, cipher),
              cipher,
              settings.mib,
              settings.runs,
              settings.fixedRuns,
              settings.stallS * 1000,
            ),
          );
        say(
          `Daemon memory around the throughput runs: RSS ${fixed(results.daemonIdleRssMiB, 1)} MiB with a warm worker before the transfers; peak (VmHWM) ${fixed(processMemory(b.pid).peakMiB, 1)} MiB after them.`,
        );
        say();
      }
      if (wanted('build')) {
        progress(`nix-build of ${settings.buildDrvs} derivations, ours vs direct`);
        results.build = await buildWorkload(b, b.sshConfig(worker), settings.buildDrvs, settings.buildRuns, settings.buildJobs);
      }
    }
    if (wanted('memory')) {
      progress(`${settings.memSessions} concurrent nix copy of ${settings.memMib} MiB on pool ${WIDE_POOL}`);
      results.memory = await memoryPeak(b, plain, settings.memSessions, settings.memMib, settings.zeroMib, settings.stallS * 1000);
    }
    if (wanted('soak')) {
      progress(`soak of ${settings.soakS} s on pool ${WIDE_POOL}`);
      results.soak = await soak(b, plain, settings.soakS, settings.soakLanes, settings.soakKib);
    }
  } finally {
    await b.stop();
    await releaseServer?.close();
    rmSync(releaseDir, { recursive: true, force: true });
    if (b.stopProblem) {
      say(`**Shutdown:** ${b.stopProblem}`);
      say();
    }
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
