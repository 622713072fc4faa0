/**
 * What this daemon created, with the keys needed to reach it: `state.json` in stateDir.
 * Written atomically (temp file + rename), mode 0600 in a 0700 folder, and guarded by a lock so
 * that two daemons never manage the same servers.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import lockfile from 'proper-lockfile';
import { writeFileAtomic } from '../core/atomic-file.js';
import { UserError } from '../core/errors.js';
import type { DeletionRecord } from './deletions.js';
import { parseHandshakeEntries, type HandshakeEntry } from './handshakes.js';

export const STATE_VERSION = 1;

export type WorkerPhase = 'creating' | 'booting' | 'ready' | 'deleting';

export interface WorkerRecord {
  /** Hetzner server id; 0 until the create call answered. */
  id: number;
  name: string;
  pool: string;
  serverType: string;
  location: string;
  phase: WorkerPhase;
  address?: string;
  sshPort: number;
  /** The host key we put in the user data; the only key we accept from this server. */
  hostPublicKey: string;
  /** Secret: root's login key on the worker, valid for this one server only. */
  loginPrivateKey: string;
  hourlyPriceEur?: string;
  /** The store volume the server was created with (warm store pools). */
  volumeId?: number;
  createdAt: string;
  readyAt?: string;
  activeSessions: number;
  idleSince?: string;
  /** With compression "zstd": what the last sessions that carried data settled on, each way ("level 7", "pass-through"). */
  zstd?: { up?: string; down?: string };
}

export interface StateData {
  version: number;
  instance: string;
  pid: number;
  updatedAt: string;
  workers: WorkerRecord[];
  /** Servers being deleted (see deletions.ts); absent in files written before it existed. */
  deletions?: DeletionRecord[];
  /** The instance lease's holder id this state folder's daemon wrote last (see instance-lease.ts). */
  leaseHolder?: string;
  /** What each pool's workers answered in Nix's handshake (see handshakes.ts); absent in older files. */
  handshakes?: HandshakeEntry[];
}

/** Whether a record stands for a server: by id once the create answered, else by its unique name. */
export function isRecordOf(record: Pick<WorkerRecord, 'id' | 'name'>, server: { id: number; name: string }): boolean {
  return (record.id !== 0 && record.id === server.id) || record.name === server.name;
}

export class StateError extends UserError {
  override name = 'StateError';
}

export function ensurePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
}

export function stateFilePath(stateDir: string): string {
  return join(stateDir, 'state.json');
}

export interface ReadStateResult {
  state: StateData | undefined;
  /** Set when the file existed but could not be used; it was moved to `keptAs`. */
  problem?: string;
  keptAs?: string;
}

function validate(data: unknown): StateData {
  const d = data as Partial<StateData> | null;
  if (!d || typeof d !== 'object') throw new StateError('not a JSON object');
  if (typeof d.version !== 'number') throw new StateError('no version');
  if (d.version > STATE_VERSION)
    throw new StateError(`written by a newer nix-hcloud-builder (state version ${d.version}, this one knows ${STATE_VERSION})`);
  if (!Array.isArray(d.workers)) throw new StateError('no worker list');
  for (const w of d.workers) {
    if (
      typeof w?.name !== 'string' ||
      typeof w.id !== 'number' ||
      typeof w.loginPrivateKey !== 'string' ||
      typeof w.hostPublicKey !== 'string'
    ) {
      throw new StateError('a worker entry is incomplete');
    }
  }
  if (d.deletions !== undefined) {
    if (!Array.isArray(d.deletions)) throw new StateError('the deletion list is not a list');
    for (const x of d.deletions) {
      if (typeof x?.id !== 'number' || typeof x.name !== 'string' || typeof x.since !== 'string' || Number.isNaN(Date.parse(x.since))) {
        throw new StateError('a deletion entry is incomplete');
      }
      x.reason = typeof x.reason === 'string' ? x.reason : 'unknown';
      x.failures = typeof x.failures === 'number' ? x.failures : 0;
    }
  }
  if (d.handshakes !== undefined) d.handshakes = parseHandshakeEntries(d.handshakes);
  return d as StateData;
}

/** Reads state.json without a lock (for `status`). A bad file is reported, not thrown. */
export function peekState(stateDir: string): { state: StateData | undefined; problem?: string } {
  const file = stateFilePath(stateDir);
  if (!existsSync(file)) return { state: undefined };
  try {
    return { state: validate(JSON.parse(readFileSync(file, 'utf8'))) };
  } catch (err) {
    return { state: undefined, problem: `state file ${file} is unusable: ${(err as Error).message}` };
  }
}

/** Reads state.json for the daemon; a bad file is moved aside (never overwritten) and reported. */
export function readStateForDaemon(stateDir: string): ReadStateResult {
  const file = stateFilePath(stateDir);
  const { state, problem } = peekState(stateDir);
  if (!problem) return { state };
  const keptAs = `${file}.unusable-${new Date().toISOString().replace(/[:.]/g, '-')}`;
  renameSync(file, keptAs);
  chmodSync(keptAs, 0o600);
  return { state: undefined, problem, keptAs };
}

export class StateFile {
  private writing: Promise<void> = Promise.resolve();
  private releaseLock: (() => Promise<void>) | undefined;
  readonly data: StateData;

  private constructor(
    readonly dir: string,
    instance: string,
    previous: StateData | undefined,
  ) {
    this.data = {
      version: STATE_VERSION,
      instance,
      pid: process.pid,
      updatedAt: new Date().toISOString(),
      workers: previous?.workers ?? [],
      deletions: previous?.deletions ?? [],
      handshakes: previous?.handshakes ?? [],
    };
    if (previous?.leaseHolder !== undefined) this.data.leaseHolder = previous.leaseHolder;
  }

  /**
   * Takes the lock on stateDir (refusing when another live daemon holds it), then reads the
   * previous state. A lock left by a daemon that was killed is taken over at once: its pid is dead.
   */
  static async open(stateDir: string, instance: string): Promise<{ state: StateFile; read: ReadStateResult }> {
    ensurePrivateDir(stateDir);
    const lockTarget = join(stateDir, 'daemon');
    const pidFile = join(stateDir, 'daemon.pid');
    const lockOptions = { realpath: false, stale: 30_000, update: 10_000, lockfilePath: `${lockTarget}.lock` };
    let release: () => Promise<void>;
    try {
      release = await lockfile.lock(lockTarget, lockOptions);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ELOCKED') throw err;
      const holder = readPid(pidFile);
      if (holder !== undefined && isAlive(holder)) {
        throw new StateError(`another nix-hcloud-builder daemon (pid ${holder}) is using the state folder ${stateDir}`);
      }
      rmSync(`${lockTarget}.lock`, { recursive: true, force: true });
      release = await lockfile.lock(lockTarget, lockOptions);
    }
    writeFileAtomic(pidFile, `${process.pid}\n`);
    const read = readStateForDaemon(stateDir);
    if (read.state && read.state.instance !== instance) {
      await release();
      throw new StateError(
        `the state folder ${stateDir} belongs to instance "${read.state.instance}", not "${instance}": use another stateDir or instance`,
      );
    }
    const state = new StateFile(stateDir, instance, read.state);
    state.releaseLock = release;
    return { state, read };
  }

  get file(): string {
    return stateFilePath(this.dir);
  }

  /** Persists the current data; calls are serialised, and each writes the newest data. */
  save(): Promise<void> {
    this.writing = this.writing.then(() => {
      this.data.updatedAt = new Date().toISOString();
      writeFileAtomic(this.file, `${JSON.stringify(this.data, null, 2)}\n`);
    });
    return this.writing;
  }

  async close(): Promise<void> {
    await this.writing.catch(() => undefined);
    rmSync(join(this.dir, 'daemon.pid'), { force: true });
    await this.releaseLock?.().catch(() => undefined);
    this.releaseLock = undefined;
  }
}

function readPid(file: string): number | undefined {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
