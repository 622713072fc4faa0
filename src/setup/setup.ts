/**
 * `setup`: makes this machine's Nix build through the daemon with no extra flags.
 *
 *   1. a client key for nix-daemon (root), made if missing;
 *   2. its public key in the daemon's authorized keys (the config's `authorizedKeysFile`);
 *   3. the endpoint's host key, made if the daemon has not started yet (owned by the daemon's user);
 *   4. the ssh_config `Host` alias, as a marked block in the system ssh config, unless the Nix
 *      that runs the builds takes the port in the URI (CppNix ≥ 2.31, Lix ≥ 2.93);
 *   5. one machines line per pool, as a marked block in the machines file;
 *   6. nix.conf: `builders-use-substitutes = true` with `substitutes`, else a hint; a hint when
 *      `builders` skips the machines file.
 *
 * Idempotent: a second run finds nothing to change. Without `write` it only shows the changes.
 * Marked blocks are replaced in place, and everything outside them is kept as it is.
 */
import { existsSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import ssh2, { type ParsedKey } from 'ssh2';
import type { Config } from '../core/config.js';
import { generateKeyPair, hostKeyPaths } from '../ssh/keys.js';
import {
  DEFAULT_ALIAS,
  DEFAULT_CLIENT_KEY,
  endpointAddress,
  machinesLines,
  sshHostBlock,
  type BuilderAddress,
  type ClientSettings,
} from './machines.js';
import { choosePortStyle, detectNixVersion, parseNixVersion, type DetectedNix, type PortChoice } from './nix-version.js';
import { SetupError } from './setup-error.js';
import { applyPlan, formatPlan, ownerOf, type FileChange, type Owner, type SetupPlan } from './setup-plan.js';
import { BEGIN_MARK, joinLines, readText, splitLines, upsertMarkedBlock } from './text.js';
import { parseNixConf, setNixConfOption } from './nix-conf.js';

export const DEFAULT_SSH_CONFIG = '/etc/ssh/ssh_config';
export const DEFAULT_MACHINES = '/etc/nix/machines';
export const DEFAULT_NIX_CONF = '/etc/nix/nix.conf';

export interface SetupOptions {
  config: Config;
  configFile: string;
  // `| undefined`: the command line passes its unset options as they are.
  sshConfig?: string | undefined;
  machines?: string | undefined;
  nixConf?: string | undefined;
  clientKey?: string | undefined;
  alias?: string | undefined;
  /** The Nix that runs the builds; detected on PATH when not given. */
  nix?: DetectedNix | undefined;
  /** Set `builders-use-substitutes = true` in nix.conf (else only a hint). */
  substitutes?: boolean | undefined;
}

/** The base64 key of a public key line, or of an authorized_keys line with options in front. */
function keyBody(line: string): string | null {
  const tokens = line.trim().split(/\s+/);
  const at = tokens.findIndex((t) => /^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-\S+@openssh\.com)$/.test(t));
  return at >= 0 ? (tokens[at + 1] ?? null) : null;
}

function hasKey(lines: string[], publicKey: string): boolean {
  const body = keyBody(publicKey);
  return lines.some((l) => !l.trim().startsWith('#') && keyBody(l) === body);
}

/** The public key line of an unencrypted OpenSSH private key. */
function publicFromPrivate(path: string, text: string): string {
  const parsed = ssh2.utils.parseKey(text);
  const key = Array.isArray(parsed) ? (parsed[0] as ParsedKey | undefined) : parsed;
  if (!key || key instanceof Error) {
    throw new SetupError(
      `client key ${path} is not an unencrypted OpenSSH private key (nix-daemon cannot type a passphrase): ${key instanceof Error ? key.message : 'empty'}`,
    );
  }
  return `${key.type} ${key.getPublicSSH().toString('base64')}`;
}

export function resolveClient(options: SetupOptions): ClientSettings {
  return { alias: options.alias ?? DEFAULT_ALIAS, clientKey: options.clientKey ?? DEFAULT_CLIENT_KEY };
}

/** Reads everything and works out what to change; writes nothing. */
export function planSetup(options: SetupOptions): SetupPlan {
  const { config } = options;
  const client = resolveClient(options);
  const sshConfigPath = options.sshConfig ?? DEFAULT_SSH_CONFIG;
  const machinesPath = options.machines ?? DEFAULT_MACHINES;
  const nixConfPath = options.nixConf ?? DEFAULT_NIX_CONF;
  const daemonOwner = existsSync(options.configFile) ? ownerOf(options.configFile) : undefined;

  const plan: SetupPlan = {
    dirs: [],
    files: [],
    unchanged: [],
    hints: [],
    manual: [],
    machinesLines: [],
    sshBlock: [],
    portChoice: portChoiceFor(options),
  };
  const addFile = (change: FileChange): void => {
    if (change.before === change.after) plan.unchanged.push(change.path);
    else plan.files.push(change);
  };
  const addDir = (path: string, mode: number, owner?: Owner): void => {
    if (!existsSync(path) && !plan.dirs.some((d) => d.path === path)) plan.dirs.push(owner ? { path, mode, owner } : { path, mode });
  };

  // 1. The client key nix-daemon logs in with.
  let clientPublic: string;
  const clientPrivateText = readText(client.clientKey);
  if (clientPrivateText === null) {
    const pair = generateKeyPair(`nix-daemon@${hostname()}`);
    clientPublic = pair.publicKey;
    addDir(dirname(client.clientKey), 0o700);
    addFile({
      path: client.clientKey,
      before: null,
      after: pair.privateKey,
      mode: 0o600,
      secret: true,
      what: 'client key for nix-daemon (ed25519)',
    });
    addFile({
      path: `${client.clientKey}.pub`,
      before: readText(`${client.clientKey}.pub`),
      after: `${pair.publicKey}\n`,
      mode: 0o644,
      what: 'its public key',
    });
  } else {
    clientPublic = publicFromPrivate(client.clientKey, clientPrivateText);
    const mode = statSync(client.clientKey).mode & 0o777;
    if (mode & 0o077) {
      plan.manual.push(
        `client key ${client.clientKey} has mode 0${mode.toString(8)}: ssh refuses a private key that others can read; run: chmod 600 ${client.clientKey}`,
      );
    }
    plan.unchanged.push(client.clientKey);
  }

  // 2. Our authorized keys.
  let keysChanged = false;
  if (config.authorizedKeysFile) {
    const before = readText(config.authorizedKeysFile);
    const lines = splitLines(before ?? '');
    const after = hasKey(lines, clientPublic) ? before : joinLines([...lines, clientPublic.trim()]);
    keysChanged = after !== before;
    const change: FileChange = {
      path: config.authorizedKeysFile,
      before,
      after: after ?? '',
      mode: 0o644,
      what: "the daemon's authorized keys",
    };
    if (before === null && daemonOwner) {
      change.owner = daemonOwner;
      addDir(dirname(config.authorizedKeysFile), 0o755, daemonOwner);
    }
    addFile(change);
  } else if (!hasKey(config.authorizedKeys, clientPublic)) {
    plan.manual.push(
      [
        `the config sets no "authorizedKeysFile", and setup does not rewrite ${options.configFile}.`,
        `  Add this key to "authorizedKeys" there (or set "authorizedKeysFile" and run setup again), then restart the daemon:`,
        `  ${clientPublic.trim()}`,
      ].join('\n'),
    );
  }
  if (keysChanged)
    plan.hints.push(
      'the daemon reads its authorized keys when it starts: restart it after --write (systemctl --user restart nix-hcloud-builder)',
    );

  // 3. The endpoint's host key (field 8 of the machines lines).
  const hostKey = hostKeyPaths(config.stateDir);
  let hostPublic = readText(hostKey.publicKey)?.trim();
  if (!hostPublic) {
    if (existsSync(hostKey.privateKey)) {
      throw new SetupError(
        `${hostKey.privateKey} exists but ${hostKey.publicKey} does not: restore it, or remove both and run setup again`,
      );
    }
    const pair = generateKeyPair('nix-hcloud-builder');
    hostPublic = pair.publicKey;
    addDir(config.stateDir, 0o700, daemonOwner);
    const owner = daemonOwner ? { owner: daemonOwner } : {};
    addFile({
      path: hostKey.privateKey,
      before: null,
      after: pair.privateKey,
      mode: 0o600,
      secret: true,
      what: "the endpoint's host key (the daemon would make it on its first start)",
      ...owner,
    });
    addFile({ path: hostKey.publicKey, before: null, after: `${pair.publicKey}\n`, mode: 0o644, what: 'its public key', ...owner });
  }

  // 4. The ssh alias, only for a Nix that cannot take the port in the URI.
  let address: BuilderAddress = { style: 'alias' };
  if (plan.portChoice.style === 'alias') {
    plan.sshBlock = sshHostBlock(config, client);
    const sshBefore = readText(sshConfigPath);
    addFile({
      path: sshConfigPath,
      before: sshBefore,
      after: upsertMarkedBlock(sshBefore, plan.sshBlock, true),
      mode: 0o644,
      what: `ssh alias "${client.alias}"`,
    });
  } else {
    address = { style: plan.portChoice.style, ...endpointAddress(config) };
    if ((readText(sshConfigPath) ?? '').split('\n').some((l) => l.trim() === BEGIN_MARK)) {
      plan.hints.push(
        `the machines lines no longer use the ssh alias: its block in ${sshConfigPath} (between the nix-hcloud-builder markers) can be removed`,
      );
    }
  }

  // 5. The machines lines.
  plan.machinesLines = machinesLines(config, hostPublic, client, address);
  const machinesBefore = readText(machinesPath);
  addFile({
    path: machinesPath,
    before: machinesBefore,
    after: upsertMarkedBlock(machinesBefore, plan.machinesLines),
    mode: 0o644,
    what: 'Nix build machines, one per pool',
  });

  // 6. nix.conf: the user's file, so only the one line `substitutes` asks for, else hints.
  const nixConfText = readText(nixConfPath);
  const nixConf = parseNixConf(nixConfText ?? '');
  if (options.substitutes) {
    const after = setNixConfOption(nixConfText, 'builders-use-substitutes', 'true');
    addFile({
      path: nixConfPath,
      before: nixConfText,
      after,
      mode: 0o644,
      what: 'builders-use-substitutes: workers fetch inputs from the binary caches',
    });
    if (after !== nixConfText)
      plan.hints.push('nix-daemon reads nix.conf when it starts: restart it after --write (systemctl restart nix-daemon)');
  } else if (nixConf.get('builders-use-substitutes') !== 'true') {
    plan.hints.push(
      `builders-use-substitutes is off in ${nixConfPath}: with "builders-use-substitutes = true" (setup --substitutes sets it) the workers fetch build inputs from the binary caches themselves instead of receiving them from this machine`,
    );
  }
  const builders = nixConf.get('builders');
  const defaultMachines = join(dirname(nixConfPath), 'machines');
  if (builders !== undefined && !builders.split(/[\s;]+/).includes(`@${machinesPath}`)) {
    plan.hints.push(`${nixConfPath} sets "builders = ${builders}", so Nix does not read ${machinesPath}: add @${machinesPath} to it`);
  } else if (builders === undefined && machinesPath !== defaultMachines) {
    plan.hints.push(`Nix reads ${defaultMachines} unless told otherwise: add "builders = @${machinesPath}" to ${nixConfPath}`);
  }
  return plan;
}

/** The port style for the Nix given in the options, else the one found on PATH. */
function portChoiceFor(options: SetupOptions): PortChoice {
  const nix = options.nix ?? detectNixVersion();
  const version = nix.text === undefined ? undefined : parseNixVersion(nix.text);
  const source = nix.text !== undefined && !version ? `${nix.source} printed ${JSON.stringify(nix.text.slice(0, 60))}` : nix.source;
  const { host } = endpointAddress(options.config);
  return choosePortStyle(version, source, !host.includes(':'));
}

export interface SetupResult {
  plan: SetupPlan;
  output: string;
  exitCode: number;
}

export function runSetup(options: SetupOptions, write: boolean): SetupResult {
  const plan = planSetup(options);
  if (write) applyPlan(plan);
  const exitCode = write && plan.manual.length > 0 ? 1 : 0;
  return { plan, output: formatPlan(plan, write), exitCode };
}
