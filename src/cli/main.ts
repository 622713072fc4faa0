#!/usr/bin/env -S node --single-threaded-gc
// --single-threaded-gc: ssh2 allocates a Buffer or two per SSH packet, so the daemon collects
// young garbage all the time, and V8's helper threads for that cost more CPU than they save on a
// machine whose cores are busy with ssh and Nix: a third less CPU per GiB piped (bench/README.md).
// It must be on the command line (V8 crashes when GC flags change at run time, and NODE_OPTIONS
// refuses it); package.nix and test/rig/rig.ts take the flags from this line.
/**
 * nix-hcloud-builder COMMAND [--config FILE]
 *   serve   run the SSH endpoint that Nix builds through
 *   status  show our workers (--json for scripts)
 *   down    delete all our servers now, also when the daemon is not running
 *   setup   make this machine's Nix build through the daemon (shows the changes; --write makes them)
 */
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig, type Config } from '../core/config.js';
import { Daemon } from '../daemon/daemon.js';
import { deleteAllServers, formatStatus, garbageCollect, gatherStatus } from './commands.js';
import { requestControl } from '../daemon/control.js';
import { createLogger } from '../core/log.js';
import { loadToken, TokenError } from '../core/token.js';
import { DEFAULT_ALIAS, DEFAULT_CLIENT_KEY, MachinesError } from '../setup/machines.js';
import { DEFAULT_MACHINES, DEFAULT_NIX_CONF, DEFAULT_SSH_CONFIG, loadConfigAsOwner, runSetup, SetupError } from '../setup/setup.js';
import { imageCommand, ImageUploadError } from '../image/image-upload.js';
import { HcloudClient } from '../hcloud/client.js';

const USAGE = `usage: nix-hcloud-builder <command> [options]

commands:
  serve              run the endpoint Nix builds through (until SIGTERM/SIGINT)
  status [--json]    list this daemon's workers: status, address, sessions, price
  down               delete every server of this instance now
  setup [--write]    show (and with --write make) the changes that let this machine's Nix
                     build through the daemon with no extra flags: a client key for nix-daemon,
                     that key in our authorized keys, the ssh alias, one machines line per pool
  up [POOL…] [--workers N]
                     have the running daemon boot N workers (default 1) per pool now,
                     so the first build does not wait; they idle out as usual
  gc [--dry-run]     delete this instance's servers the state does not know or that
                     outlived their pool's hard lifetime (2 × maxLifetime), listing each
  image upload IMAGE.raw[.zst] --arch x86|arm --label KEY=VALUE [--label …]
                     [--server-type T] [--location L] [--description TEXT] [--ssh-port N]
                     write a raw disk image to a temporary server's disk from the rescue
                     system and snapshot it with the labels (a pool's image.labelSelector
                     picks the newest); prints the snapshot id. The temporary server and
                     ssh key are deleted on every path
  image cleanup [--dry-run]
                     delete (or list) what uploads left behind: temporary servers, ssh
                     keys and unfinished snapshots (found by their labels)

options:
  -c, --config FILE  config file (default: $NIX_HCLOUD_BUILDER_CONFIG or ~/.config/nix-hcloud-builder/config.json)
  --keep-workers     serve: leave the workers running on stop (a later start adopts them)
  -h, --help         this text

setup options (run it as root: nix-daemon is root):
  --write            make the changes (without it: only show them)
  --ssh-config FILE  system ssh config for the alias (default ${DEFAULT_SSH_CONFIG})
  --machines FILE    Nix machines file (default ${DEFAULT_MACHINES})
  --nix-conf FILE    nix.conf to check (default ${DEFAULT_NIX_CONF})
  --client-key FILE  nix-daemon's key to log in with, made if missing (default ${DEFAULT_CLIENT_KEY})
  --alias NAME       ssh Host alias in the machines lines (default ${DEFAULT_ALIAS})
  --substitutes      set builders-use-substitutes = true in the nix.conf: workers fetch
                     inputs from the binary caches instead of through this machine
`;

function defaultConfigPath(): string {
  const env = process.env;
  if (env.NIX_HCLOUD_BUILDER_CONFIG) return env.NIX_HCLOUD_BUILDER_CONFIG;
  const base = env.XDG_CONFIG_HOME || `${env.HOME ?? ''}/.config`;
  return `${base}/nix-hcloud-builder/config.json`;
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      json: { type: 'boolean' },
      'keep-workers': { type: 'boolean' },
      write: { type: 'boolean' },
      'ssh-config': { type: 'string' },
      machines: { type: 'string' },
      'nix-conf': { type: 'string' },
      'client-key': { type: 'string' },
      alias: { type: 'string' },
      substitutes: { type: 'boolean' },
      'dry-run': { type: 'boolean' },
      workers: { type: 'string', short: 'n' },
      arch: { type: 'string' },
      label: { type: 'string', multiple: true },
      'server-type': { type: 'string' },
      location: { type: 'string' },
      description: { type: 'string' },
      'ssh-port': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const command = positionals[0];
  if (values.help || !command) {
    process.stdout.write(USAGE);
    return command || values.help ? 0 : 2;
  }
  const configFile = values.config ?? defaultConfigPath();
  const config: Config = command === 'setup' ? loadConfigAsOwner(configFile) : loadConfig(configFile);
  const log = createLogger({ level: config.log.level });

  switch (command) {
    case 'serve': {
      const token = loadToken(config);
      if (token.warning) log.warn(token.warning);
      log.info({ tokenSource: token.source, instance: config.instance }, 'starting');
      const daemon = new Daemon({ config, token: token.token, log });
      await daemon.start();
      await new Promise<void>((resolve) => {
        let signals = 0;
        const onSignal = (signal: NodeJS.Signals): void => {
          signals++;
          if (signals > 1) {
            log.info({ signal }, 'second signal: ending running sessions now; workers are still deleted');
            daemon.skipGrace();
            return;
          }
          log.info({ signal }, 'stopping');
          void daemon.stop(values['keep-workers'] === true).then(resolve, (err: unknown) => {
            log.error({ err }, 'stop failed');
            process.exitCode = 1;
            resolve();
          });
        };
        process.on('SIGTERM', onSignal);
        process.on('SIGINT', onSignal);
      });
      return 0;
    }
    case 'status': {
      const token = tryToken(config);
      const report = await gatherStatus(config, token);
      process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : formatStatus(report));
      return 0;
    }
    case 'up': {
      const workers = values.workers === undefined ? 1 : Number(values.workers);
      if (!Number.isInteger(workers) || workers < 1) throw new ConfigError(`--workers: expected a positive integer, got ${JSON.stringify(values.workers)}`);
      const ready = await requestControl(config.stateDir, { command: 'up', pools: positionals.slice(1), workers }, (line) => process.stdout.write(`${line}\n`));
      for (const [pool, count] of Object.entries(ready)) process.stdout.write(`${pool}: ${count} worker(s) ready\n`);
      return 0;
    }
    case 'gc': {
      const token = loadToken(config);
      const dryRun = values['dry-run'] === true;
      const count = await garbageCollect(config, token.token, log, (line) => process.stdout.write(`${line}\n`), dryRun);
      process.stdout.write(`${dryRun ? 'would delete' : 'deleted'} ${count} server(s)\n`);
      return 0;
    }
    case 'down': {
      const token = loadToken(config);
      const deleted = await deleteAllServers(config, token.token, log, (line) => process.stdout.write(`${line}\n`));
      process.stdout.write(`deleted ${deleted} server(s)\n`);
      return 0;
    }
    case 'setup': {
      const result = runSetup({
        config,
        configFile,
        sshConfig: values['ssh-config'],
        machines: values.machines,
        nixConf: values['nix-conf'],
        clientKey: values['client-key'],
        alias: values.alias,
        substitutes: values.substitutes === true,
      }, values.write === true);
      process.stdout.write(result.output);
      return result.exitCode;
    }
    case 'image': {
      const token = loadToken(config);
      return imageCommand({
        hcloud: new HcloudClient({ endpoint: config.hcloud.endpoint, token: token.token, logger: log }),
        args: positionals.slice(1),
        arch: values.arch,
        labels: values.label ?? [],
        serverType: values['server-type'],
        location: values.location,
        description: values.description,
        sshPort: values['ssh-port'],
        dryRun: values['dry-run'] === true,
        log,
        print: (line) => process.stderr.write(`${line}\n`),
        out: (line) => process.stdout.write(`${line}\n`),
      });
    }
    default:
      process.stderr.write(`nix-hcloud-builder: unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
      return 2;
  }
}

function tryToken(config: Config): string | undefined {
  try {
    return loadToken(config).token;
  } catch {
    return undefined;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const known = err instanceof ConfigError || err instanceof TokenError || err instanceof SetupError || err instanceof MachinesError || err instanceof ImageUploadError || (err as Error).name === 'StateError' || (err as Error).name === 'PoolTypeError' || (err as Error).name === 'HcloudError';
    process.stderr.write(`nix-hcloud-builder: ${(err as Error).message ?? String(err)}\n`);
    if (!known && process.env.NIX_HCLOUD_BUILDER_DEBUG) process.stderr.write(`${(err as Error).stack}\n`);
    process.exitCode = 1;
  },
);
