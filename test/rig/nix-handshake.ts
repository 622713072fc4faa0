/**
 * The opening of Nix's two remote-store protocols, as a client speaks it, to learn what a program
 * answers: the worker protocol's (`nix-daemon --stdio`) version and, from 1.38, its feature set;
 * the serve protocol's (`nix-store --serve`) version. Numbers are 64-bit little-endian words,
 * strings a length word and the bytes padded to 8.
 */
import { spawn } from 'node:child_process';
import {
  encodeStrings,
  encodeU64,
  expectMagic,
  formatVersion,
  minorOf,
  SERVE_MAGIC_1,
  SERVE_MAGIC_2,
  WireReader,
  WORKER_MAGIC_1,
  WORKER_MAGIC_2,
} from '../../src/ssh/nix-handshake.js';

/** The client versions offered: higher than any Nix speaks, so the answer is the program's own. */
const CLIENT_WORKER_VERSION = 0x1ff;
const CLIENT_SERVE_VERSION = 0x2ff;

export interface Hello {
  /** "1.38" */
  version: string;
  /** The worker protocol's features (1.38 on), empty before. */
  features: string[];
}

/**
 * Runs `cmd args` (a remote-store program, or ssh running one) and speaks the opening of `mode`'s
 * protocol to it; the program is killed once it answered. Its stderr comes with a failure.
 */
export function hello(
  mode: 'daemon' | 'serve',
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
  timeoutMs = 120_000,
): Promise<Hello> {
  const child = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdin.on('error', () => undefined);
  const reader = new WireReader();
  child.stdout.on('data', (chunk: Buffer) => reader.push(chunk));
  child.stdout.on('end', () => reader.end());
  const talk = async (): Promise<Hello> => {
    if (mode === 'serve') {
      child.stdin.write(encodeU64(SERVE_MAGIC_1, CLIENT_SERVE_VERSION));
      await expectMagic(reader, SERVE_MAGIC_2, 'nix-store --serve');
      return { version: formatVersion(await reader.u64()), features: [] };
    }
    child.stdin.write(encodeU64(WORKER_MAGIC_1));
    await expectMagic(reader, WORKER_MAGIC_2, 'nix-daemon');
    const version = await reader.u64();
    child.stdin.write(encodeU64(CLIENT_WORKER_VERSION));
    if (minorOf(version) < 38) return { version: formatVersion(version), features: [] };
    // Features: the client's list (none), then the daemon's.
    child.stdin.write(encodeStrings([]));
    return { version: formatVersion(version), features: await reader.strings() };
  };
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return talk()
    .catch((err: Error) => {
      throw new Error(`${cmd} ${args.join(' ')}: ${err.message}; stderr: ${stderr.trim().slice(-2000)}`);
    })
    .finally(() => {
      clearTimeout(timer);
      child.kill('SIGKILL');
    });
}
