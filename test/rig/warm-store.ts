/**
 * Helpers of the warm-store end-to-end tests (test/e2e/warm-store*.test.ts): a big input only the
 * client has, builds of test/fixtures/warm.nix through the daemon, and the bytes sent up.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { StateData, WorkerRecord } from '../../src/daemon/state.js';
import { connectWorker, type SshClient } from '../../src/ssh/worker-connection.js';
import { remoteBuildArgs, ROOT, run, waitUntil, type DaemonProcess, type LogLine, type Rig } from './rig.js';

const WARM_NIX = join(ROOT, 'test', 'fixtures', 'warm.nix');
export const MIB = 1024 * 1024;

/** A 64 MiB path of random bytes in the client's store only (never built, so it must be uploaded). */
export async function addBigInput(rig: Rig): Promise<string> {
  const file = join(rig.dir, `warm-input-${Date.now()}`);
  writeFileSync(file, randomBytes(64 * MIB));
  const added = await run('nix-store', ['--add', file]);
  if (added.code !== 0) throw new Error(`nix-store --add failed: ${added.stderr}`);
  return added.stdout.trim();
}

export function build(
  rig: Rig,
  daemon: DaemonProcess,
  expr: string,
  maxJobs = 4,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return run('nix-build', remoteBuildArgs(expr, rig.machinesLine('ssh-ng', 'x86_64', maxJobs)), {
    env: { ...process.env, NIX_SSHOPTS: `-F ${rig.sshConfig(daemon.port)}` },
  });
}

export function warm(input: string, nonce: string, after?: string): string {
  return `(import ${WARM_NIX} { input = "${input}"; nonce = "${nonce}";${after ? ` after = ${after};` : ''} })`;
}

/**
 * Bytes the sessions logged from `from` on sent up to workers (the daemon logs each session's
 * count when it ends, which may be just after nix-build exits: wait for every started one).
 */
export async function bytesUp(daemon: DaemonProcess, from: number): Promise<number> {
  const count = (msg: string): number => daemon.lines.slice(from).filter((l) => l.msg === msg).length;
  await waitUntil(() => count('session started') > 0 && count('session ended') === count('session started'), 10_000);
  return daemon.lines
    .slice(from)
    .filter((l: LogLine) => l.msg === 'session ended')
    .reduce((sum, l) => sum + Number(l.up), 0);
}

/** The daemon's state record of a server (read from its state file), if it has one. */
export function recordedWorker(rig: Rig, serverId: number | undefined): WorkerRecord | undefined {
  const state = JSON.parse(readFileSync(join(rig.dir, 'state', 'state.json'), 'utf8')) as StateData;
  return state.workers.find((w) => w.id === serverId);
}

/** Runs `use` on an ssh connection to a recorded worker, its host key pinned as the daemon does. */
export async function onWorker<T>(record: WorkerRecord, use: (client: SshClient) => Promise<T>): Promise<T> {
  if (record.address === undefined) throw new Error(`worker ${record.name} has no address in the state`);
  const target = {
    host: record.address,
    port: record.sshPort,
    hostPublicKey: record.hostPublicKey,
    loginPrivateKey: record.loginPrivateKey,
  };
  const client = await connectWorker({ ...target, keepaliveIntervalMs: 10_000 }, 10_000);
  try {
    return await use(client);
  } finally {
    client.end();
  }
}
