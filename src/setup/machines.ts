/**
 * What Nix needs to build through this daemon, computed from the config: one `/etc/nix/machines`
 * line per pool, and the ssh_config `Host` alias that carries the endpoint's address and port.
 *
 * Pure functions: `setup` writes their output, and `nixos/lib.nix` computes the same text in
 * plain Nix (the tests compare both).
 *
 * Why an alias: nix-daemon runs ssh as root, and Nix before 2.31 (Lix before 2.93) cannot take a
 * port in a store URI; newer ones get the address in the URI instead (`BuilderAddress`). The
 * alias needs `HostKeyAlias`: Nix writes field 8 of the machines line to a temporary known_hosts
 * under the host name of the URI (the alias), while OpenSSH would otherwise look the key up under
 * the alias's HostName and Port.
 */
import type { Config, PoolConfig } from '../core/config.js';
import { UserError } from '../core/errors.js';

export const DEFAULT_ALIAS = 'hcloud-builder';
export const DEFAULT_CLIENT_KEY = '/root/.ssh/nix-hcloud-builder';

export interface ClientSettings {
  /** ssh_config Host alias that Nix's store URIs name (`ssh-ng://POOL@ALIAS`). */
  alias: string;
  /** Private key file that nix-daemon (root) logs in with. */
  clientKey: string;
}

export class MachinesError extends UserError {
  override name = 'MachinesError';
}

const ALIAS = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})$/;

export function checkClientSettings(client: ClientSettings): void {
  if (!ALIAS.test(client.alias) || client.alias === 'localhost') {
    throw new MachinesError(
      `ssh alias ${JSON.stringify(client.alias)}: expected letters, digits, ".", "-" or "_" (and not "localhost", which Nix builds on locally)`,
    );
  }
  if (!client.clientKey.startsWith('/') || /\s/.test(client.clientKey)) {
    throw new MachinesError(
      `client key ${JSON.stringify(client.clientKey)}: expected an absolute path without spaces (the machines file is split on spaces)`,
    );
  }
}

/** Where a local ssh client reaches the endpoint: a wildcard listen address means loopback. */
export function endpointAddress(config: Config): { host: string; port: number } {
  const { host, port } = config.listen;
  if (port === 0) {
    throw new MachinesError('config key "listen.port" is 0 (any free port): the ssh alias needs a fixed port, e.g. 2222');
  }
  const reach = host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' || host === '[::]' ? '::1' : host;
  return { host: reach, port };
}

/** Field 8 of a machines line: `base64 -w0` of the host public key line (type, key, comment). */
export function hostKeyBase64(hostPublicKey: string): string {
  const line = hostPublicKey.trim();
  if (!/^\S+ \S+/.test(line)) throw new MachinesError('the endpoint host public key is not an OpenSSH public key line');
  return Buffer.from(line).toString('base64');
}

/**
 * Nix 2.8 reads the speed factor as a whole number (a fraction makes the whole machines file
 * invalid), so a fractional value is rounded up.
 */
export function speedFactorField(speedFactor: number): string {
  return String(Math.ceil(speedFactor));
}

function listField(values: string[]): string {
  return values.length === 0 ? '-' : values.join(',');
}

/**
 * How a machines line names the endpoint: the ssh alias (any Nix), or its address and port in
 * the URI itself (`authority`: CppNix ≥ 2.31, `query`: Lix ≥ 2.93), which needs no ssh_config.
 * With a port in the URI, Nix writes field 8 under the bare host and passes `-p`; OpenSSH 9.2
 * accepts that entry for the non-default port.
 */
export type BuilderAddress = { style: 'alias' } | { style: 'authority' | 'query'; host: string; port: number };

export function storeUri(pool: PoolConfig, client: ClientSettings, address: BuilderAddress = { style: 'alias' }): string {
  switch (address.style) {
    case 'alias':
      return `ssh-ng://${pool.name}@${client.alias}`;
    case 'authority':
      return `ssh-ng://${pool.name}@${address.host}:${address.port}`;
    case 'query':
      return `ssh-ng://${pool.name}@${address.host}?port=${address.port}`;
  }
}

export function machinesLine(pool: PoolConfig, client: ClientSettings, hostPublicKey: string, address?: BuilderAddress): string {
  return [
    storeUri(pool, client, address),
    listField(pool.systems),
    client.clientKey,
    String(pool.maxWorkers * pool.jobsPerWorker),
    speedFactorField(pool.speedFactor),
    listField(pool.supportedFeatures),
    listField(pool.mandatoryFeatures),
    hostKeyBase64(hostPublicKey),
  ].join(' ');
}

/** One line per pool, in the config's pool order. */
export function machinesLines(config: Config, hostPublicKey: string, client: ClientSettings, address?: BuilderAddress): string[] {
  checkClientSettings(client);
  return Object.values(config.pools).map((pool) => machinesLine(pool, client, hostPublicKey, address));
}

/** The ssh_config `Host` block for the alias (no trailing empty line). */
export function sshHostBlock(config: Config, client: ClientSettings): string[] {
  checkClientSettings(client);
  const { host, port } = endpointAddress(config);
  return [
    `Host ${client.alias}`,
    `  HostName ${host}`,
    `  Port ${port}`,
    `  HostKeyAlias ${client.alias}`,
    `  IdentityFile ${client.clientKey}`,
    '  IdentitiesOnly yes',
  ];
}
