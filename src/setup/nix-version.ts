/**
 * Which Nix runs the builds, and so how a machines line can name the endpoint's port:
 * CppNix from 2.31 takes it in the URI's authority (`ssh-ng://u@127.0.0.1:2222`), Lix from 2.93
 * as a query parameter (`ssh-ng://u@127.0.0.1?port=2222`). Older versions need an ssh_config
 * `Host` alias that carries the port.
 */
import { execFileSync } from 'node:child_process';

export interface NixVersion {
  implementation: 'Nix' | 'Lix';
  major: number;
  minor: number;
  patch: number;
  /** As printed, e.g. "2.31.0". */
  version: string;
}

/** How a machines line reaches the endpoint. */
export type PortStyle = 'authority' | 'query' | 'alias';

export interface PortChoice {
  style: PortStyle;
  /** One line for setup's output: what was chosen and why. */
  reason: string;
}

/** Overrides what `nix-daemon --version` would say (tests, or a Nix not on setup's PATH). */
export const NIX_VERSION_ENV = 'NIX_HCLOUD_BUILDER_NIX_VERSION';

/** `nix (Nix) 2.31.0`, `nix-daemon (Nix) 2.8.0`, `nix (Lix, like Nix) 2.93.0`, `2.31.0pre20250101_abc`. */
export function parseNixVersion(text: string): NixVersion | undefined {
  const m = /^\S+ \((Lix|Nix)\b[^)]*\) (\d+)\.(\d+)(?:\.(\d+))?(\S*)/m.exec(text.trim());
  if (!m) return undefined;
  const [, implementation, major, minor, patch, suffix] = m as unknown as [
    string,
    'Nix' | 'Lix',
    string,
    string,
    string | undefined,
    string,
  ];
  return {
    implementation,
    major: Number(major),
    minor: Number(minor),
    patch: Number(patch ?? 0),
    version: `${major}.${minor}${patch === undefined ? '' : `.${patch}`}${suffix}`,
  };
}

function atLeast(v: NixVersion, major: number, minor: number): boolean {
  return v.major > major || (v.major === major && v.minor >= minor);
}

/**
 * The port style a Nix supports. `portableHost` is false when the endpoint's address cannot be
 * written in a URI's host part as it is (IPv6): then the alias, which works everywhere.
 */
export function choosePortStyle(version: NixVersion | undefined, source: string, portableHost = true): PortChoice {
  if (!version)
    return { style: 'alias', reason: `machines lines name the ssh alias: could not tell which Nix runs the builds (${source})` };
  const name = `${version.implementation} ${version.version} (${source})`;
  if (!portableHost)
    return {
      style: 'alias',
      reason: `machines lines name the ssh alias: the endpoint listens on an IPv6 address, which setup does not put in builder URIs`,
    };
  if (version.implementation === 'Nix' && atLeast(version, 2, 31)) {
    return {
      style: 'authority',
      reason: `machines lines name host:port, no ssh alias needed: ${name} takes a port in the builder URI (Nix ≥ 2.31)`,
    };
  }
  if (version.implementation === 'Lix' && atLeast(version, 2, 93)) {
    return { style: 'query', reason: `machines lines name ?port=, no ssh alias needed: ${name} takes it in the builder URI (Lix ≥ 2.93)` };
  }
  const needs = version.implementation === 'Lix' ? 'Lix ≥ 2.93' : 'Nix ≥ 2.31';
  return { style: 'alias', reason: `machines lines name the ssh alias: ${name} cannot take a port in a builder URI (that needs ${needs})` };
}

export interface DetectedNix {
  /** The version line, or undefined when no Nix answered. */
  text?: string;
  /** Where it came from, for the reason line. */
  source: string;
}

function versionOf(program: string, env: NodeJS.ProcessEnv): string | undefined {
  try {
    return execFileSync(program, ['--version'], { encoding: 'utf8', env, timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}

/**
 * The Nix that runs the builds: the daemon's (`nix-daemon --version`), else `nix --version`, as
 * found on PATH; `$NIX_HCLOUD_BUILDER_NIX_VERSION` wins.
 */
export function detectNixVersion(env: NodeJS.ProcessEnv = process.env): DetectedNix {
  const override = env[NIX_VERSION_ENV];
  if (override) return { text: override, source: `$${NIX_VERSION_ENV}` };
  for (const program of ['nix-daemon', 'nix']) {
    const text = versionOf(program, env);
    if (text) return { text, source: `${program} --version` };
  }
  return { source: 'neither nix-daemon nor nix answered --version on PATH' };
}
