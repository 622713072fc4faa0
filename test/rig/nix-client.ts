/**
 * The Nix versions the end-to-end tests run as clients (and as a fake worker's Nix): this
 * machine's (Debian 12, Nix 2.8) and those of Debian roots made by nix-roots.sh (trixie's 2.26,
 * sid's 2.34), run by nix-in-root.sh with their own libraries, ssh and /bin/sh, each with a store
 * of its own. `NHB_NIX_CLIENTS` (e.g. "bookworm,sid") narrows the list; by default all three.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseNixVersion, type NixVersion } from '../../src/setup/nix-version.js';
import { run } from './process.js';
import { hello, type Hello } from './nix-handshake.js';

const HERE = dirname(fileURLToPath(import.meta.url));
export const NIX_ROOTS_SCRIPT = join(HERE, 'nix-roots.sh');
export const NIX_IN_ROOT_SCRIPT = join(HERE, 'nix-in-root.sh');

/** This machine's Debian release, and the others whose nix-bin the tests use. */
export const NIX_SUITES = ['bookworm', 'trixie', 'sid'] as const;
export type NixSuite = (typeof NIX_SUITES)[number];
const HOST_SUITE: NixSuite = 'bookworm';

/** A Nix version to run: where its programs are and what it says it is. */
export interface NixInstall {
  suite: NixSuite;
  /** The Debian root holding it; undefined for this machine's own Nix. */
  root?: string;
  /** `nix-daemon --version`'s line, e.g. "nix-daemon (Nix) 2.26.3". */
  versionText: string;
  version: NixVersion;
}

export type RunResult = { code: number | null; stdout: string; stderr: string };
export const NIX_PROGRAMS = ['nix-build', 'nix', 'nix-store', 'nix-daemon'] as const;
export type NixProgram = (typeof NIX_PROGRAMS)[number];

const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * A script that runs `program` of the root on the store at `nixDir`: a stand-in for it on a PATH.
 * `etcNix`: the folder the root sees as /etc/nix (a fake server's own); none for a client, which
 * reads the rig's config through NIX_CONF_DIR.
 */
export function nixWrapper(root: string, nixDir: string, program: NixProgram, etcNix?: string): string {
  const etc = etcNix === undefined ? '' : `--etc-nix ${quote(etcNix)} `;
  return `#!/bin/sh\nexec ${quote(NIX_IN_ROOT_SCRIPT)} ${etc}${quote(root)} ${quote(nixDir)} ${program} "$@"\n`;
}

const installs = new Map<NixSuite, NixInstall>();

/** The Nix of a suite; its root is made on first use (minutes, once per machine: see nix-roots.sh). */
export function nixInstall(suite: NixSuite): NixInstall {
  const known = installs.get(suite);
  if (known) return known;
  let root: string | undefined;
  let versionText: string;
  if (suite === HOST_SUITE) {
    versionText = execFileSync('nix-daemon', ['--version'], { encoding: 'utf8' }).trim();
  } else {
    root = execFileSync('bash', [NIX_ROOTS_SCRIPT, suite], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
    const scratch = mkdtempSync(join(tmpdir(), 'nhb-nix-version-'));
    try {
      versionText = execFileSync(NIX_IN_ROOT_SCRIPT, [root, scratch, 'nix-daemon', '--version'], { encoding: 'utf8' }).trim();
    } finally {
      rmSync(scratch, { recursive: true, force: true });
    }
  }
  const version = parseNixVersion(versionText);
  if (!version) throw new Error(`${suite}: unexpected version line ${JSON.stringify(versionText)}`);
  const install: NixInstall = { suite, ...(root === undefined ? {} : { root }), versionText, version };
  installs.set(suite, install);
  return install;
}

/** The suites to test with: NHB_NIX_CLIENTS, or all. */
export function testedSuites(env: NodeJS.ProcessEnv = process.env): NixSuite[] {
  const wanted = (env.NHB_NIX_CLIENTS ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (wanted.length === 0) return [...NIX_SUITES];
  for (const w of wanted)
    if (!(NIX_SUITES as readonly string[]).includes(w))
      throw new Error(`NHB_NIX_CLIENTS: unknown suite ${w} (known: ${NIX_SUITES.join(', ')})`);
  return wanted as NixSuite[];
}

/**
 * A Nix client: one install with its own store. The machine's Nix uses the machine's /nix (as the
 * tests always did); another version gets `dir/nix`, so that no store is written by two versions.
 */
export class NixClient {
  readonly nixDir: string;
  /** A folder holding its programs (stand-ins for another version's), for a PATH; undefined for the machine's. */
  readonly binDir: string | undefined;

  constructor(
    readonly install: NixInstall,
    dir: string,
  ) {
    if (install.root === undefined) {
      this.nixDir = '/nix';
      return;
    }
    this.nixDir = join(dir, 'nix');
    this.binDir = join(dir, 'nix-bin');
    mkdirSync(this.nixDir, { recursive: true });
    mkdirSync(this.binDir, { recursive: true });
    for (const program of NIX_PROGRAMS)
      writeFileSync(join(this.binDir, program), nixWrapper(install.root, this.nixDir, program), { mode: 0o755 });
  }

  /** `env` with this client's programs first on PATH (what `setup` finds as "the Nix here"). */
  env(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
    return this.binDir === undefined ? env : { ...env, PATH: `${this.binDir}:${env.PATH ?? '/usr/bin:/bin'}` };
  }

  /** The path of one of its programs (for spawn). */
  program(program: NixProgram): string {
    return this.binDir === undefined ? program : join(this.binDir, program);
  }

  get name(): string {
    return `Nix ${this.install.version.version} (${this.install.suite})`;
  }

  run(program: NixProgram, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
    return run(this.program(program), args, opts);
  }

  /** Where a path of this client's store is, seen from this process. */
  local(storePath: string): string {
    if (!storePath.startsWith('/nix/')) throw new Error(`${storePath} is not in /nix`);
    return join(this.nixDir, storePath.slice('/nix/'.length));
  }
}

const hellos = new Map<string, Promise<Hello>>();

/**
 * What an install's own program answers to a client's opening (`daemon`: nix-daemon --stdio,
 * `serve`: nix-store --serve --write), on a scratch store.
 */
export function installHello(install: NixInstall, mode: 'daemon' | 'serve'): Promise<Hello> {
  const key = `${install.suite} ${mode}`;
  const known = hellos.get(key);
  if (known) return known;
  const scratch = mkdtempSync(join(tmpdir(), 'nhb-nix-hello-'));
  const client = new NixClient(install, scratch);
  const store = install.root === undefined ? ['--store', join(scratch, 'store-root')] : [];
  const [program, args]: [NixProgram, string[]] =
    mode === 'daemon' ? ['nix-daemon', ['--stdio', ...store]] : ['nix-store', ['--serve', '--write', ...store]];
  const answer = hello(mode, client.program(program), args).finally(() => rmSync(scratch, { recursive: true, force: true }));
  hellos.set(key, answer);
  return answer;
}
