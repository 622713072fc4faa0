/**
 * One `nix-store --serve` session through OpenSSH, timed to the remote's first byte, and a check of
 * what the client negotiated (key exchange, cipher).
 */
import { spawn } from 'node:child_process';
import { cmd } from './lib.js';

/** Serve protocol handshake, u64 little-endian: client magic 0x390c9deb and version 0x207. */
export const SERVE_HELLO = Buffer.from('eb9d0c39000000000702000000000000', 'hex');
/** The answer starts with the server magic 0x5452eecb. */
export const SERVE_MAGIC_2 = Buffer.from('cbee525400000000', 'hex');

export interface HandshakeTiming {
  /** From spawning ssh to the first byte of the remote's stdout. */
  firstByteMs: number;
  /** Wall-clock time (Date.now()) when ssh was spawned, to line up with log lines. */
  spawnedAt: number;
}

/**
 * Spawns `ssh -F CONFIG TARGET -x -a -T "nix-store --serve --write"` the way Nix does, writes the
 * handshake at once (ssh holds it until the channel is open), and resolves at the remote's answer.
 * The session then ends with EOF on stdin (the remote exits); resolves once ssh has exited.
 */
export function serveHandshake(
  configFile: string,
  target: string,
  extraArgs: string[] = [],
  timeoutMs = 120_000,
): Promise<HandshakeTiming> {
  return new Promise((resolve, reject) => {
    const spawnedAt = Date.now();
    const t0 = performance.now();
    const child = spawn('ssh', ['-F', configFile, target, '-x', '-a', '-T', ...extraArgs, 'nix-store --serve --write'], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let firstByteMs: number | undefined;
    let answer = Buffer.alloc(0);
    let stderr = '';
    let failed: Error | undefined;
    const timer = setTimeout(() => {
      failed = new Error(`no serve handshake answer from ${target} within ${timeoutMs} ms; stderr: ${stderr.trim()}`);
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdin.on('error', () => undefined);
    child.stdout.on('data', (chunk: Buffer) => {
      firstByteMs ??= performance.now() - t0;
      answer = Buffer.concat([answer, chunk]);
      if (answer.length >= 16) {
        if (!answer.subarray(0, 8).equals(SERVE_MAGIC_2))
          failed ??= new Error(`${target} answered the serve handshake with ${answer.subarray(0, 16).toString('hex')}`);
        child.stdin.end();
      }
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      if (failed) reject(failed);
      else if (firstByteMs === undefined || answer.length < 16)
        reject(new Error(`ssh to ${target} ended (${code}) without a handshake answer; stderr: ${stderr.trim()}`));
      else resolve({ firstByteMs, spawnedAt });
    });
    child.stdin.write(SERVE_HELLO);
  });
}

export interface Negotiated {
  kex: string;
  cipher: string;
}

/** What OpenSSH negotiated with TARGET (from `ssh -v`), for the tables. */
export async function negotiated(configFile: string, target: string, extraArgs: string[] = []): Promise<Negotiated> {
  const r = await cmd('ssh', ['-v', '-F', configFile, target, '-x', '-a', '-T', ...extraArgs, 'nix-store --serve --write'], {
    allowFail: true,
    timeoutMs: 60_000,
  });
  const kex = /kex: algorithm: (\S+)/.exec(r.stderr)?.[1];
  const cipher = /kex: server->client cipher: (\S+)/.exec(r.stderr)?.[1];
  if (!kex || !cipher)
    throw new Error(
      `could not read the negotiated algorithms of ${target}: ${r.stderr
        .split('\n')
        .filter((l) => !l.startsWith('debug'))
        .join('\n')
        .trim()}`,
    );
  return { kex, cipher };
}
