/**
 * Small helpers shared by the benchmarks: statistics, tables, /proc readings, child processes.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync, writeSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { run } from '../test/rig/process.js';

/** Clock ticks per second of /proc/<pid>/stat and /proc/stat (100 on Linux/x86_64 and arm64). */
export const CLK_TCK = 100;
export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

/** A whole-number setting from the environment; values below `min` are raised to it. */
export function envInt(name: string, fallback: number, min = 0): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return Math.max(min, fallback);
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a non-negative number, not ${JSON.stringify(raw)}`);
  return Math.max(min, Math.round(value));
}

export function envList(name: string, fallback: string[]): string[] {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  return raw
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** Nearest-rank percentile (p in 0..100). */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] as number;
}

export function fixed(value: number, digits = 1): string {
  return Number.isFinite(value) ? value.toFixed(digits) : 'n/a';
}

/** A Markdown table (so that the output can go into bench/README.md as it is). */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i] as number)).join(' | ')} |`;
  return [line(headers), `| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`, ...rows.map(line)].join('\n');
}

export function say(line = ''): void {
  process.stdout.write(`${line}\n`);
}

export function progress(line: string): void {
  process.stderr.write(`  … ${line}\n`);
}

/** user + system CPU time of one process, in seconds. */
export function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

function statFields(pid: number): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/**
 * CPU time (utime + stime) used by process trees over a period, sampled every few ms: every
 * process seen under one of the roots is followed by pid (and start time) until it exits, even
 * when it is re-parented (OpenSSH leaves the remote command running when a client disconnects).
 * What a process uses after the last sample before its exit is lost (at most one interval each).
 */
export class CpuTracker {
  private readonly first = new Map<string, number>();
  private readonly last = new Map<string, number>();
  private readonly pids = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private started = false;

  constructor(
    private readonly roots: () => number[],
    private readonly everyMs = 25,
  ) {}

  start(): void {
    this.sample();
    this.started = true;
    this.timer = setInterval(() => this.sample(), this.everyMs);
  }

  /** Takes a last sample and returns the CPU seconds used since start(). */
  stop(): number {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.sample();
    let total = 0;
    for (const [key, last] of this.last) total += last - (this.first.get(key) ?? 0);
    return total / CLK_TCK;
  }

  /** Pids of processes that appeared after start() and are still alive (zombies excluded). */
  newAlive(): number[] {
    const out: number[] = [];
    for (const [key, pid] of this.pids) {
      if (this.first.has(key)) continue;
      try {
        const f = statFields(pid);
        if (`${pid}:${f[19]}` === key && f[0] !== 'Z') out.push(pid);
      } catch {
        // exited
      }
    }
    return out;
  }

  private sample(): void {
    const candidates = new Set<number>(this.pids.values());
    for (const root of this.roots()) {
      candidates.add(root);
      for (const d of descendants(root)) candidates.add(d);
    }
    for (const pid of candidates) {
      let f: string[];
      try {
        f = statFields(pid);
      } catch {
        continue;
      }
      // Field 22 (start time) tells a reused pid apart.
      const key = `${pid}:${f[19]}`;
      const cpu = Number(f[11]) + Number(f[12]);
      if (!this.started && !this.first.has(key)) this.first.set(key, cpu);
      this.pids.set(key, pid);
      this.last.set(key, cpu);
    }
  }
}

/** VmRSS and VmHWM (peak) of a process, in MiB. */
export function processMemory(pid: number): { rssMiB: number; peakMiB: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rssMiB: kb('VmRSS') / 1024, peakMiB: kb('VmHWM') / 1024 };
}

/** Samples a process's RSS while running; `max` is the highest sample. */
export class RssSampler {
  max = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly pid: number,
    private readonly everyMs = 50,
  ) {}

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.everyMs);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.sample();
  }

  private sample(): void {
    try {
      this.max = Math.max(this.max, processMemory(this.pid).rssMiB);
    } catch {
      // The process is gone.
    }
  }
}

export interface CmdResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command to its end; throws (with its stderr) when it fails, unless `allowFail`. */
export async function cmd(
  command: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number; allowFail?: boolean } = {},
): Promise<CmdResult> {
  const started = performance.now();
  const { allowFail, ...runOpts } = opts;
  const r = await run(command, args, { ...runOpts, timeoutMs: opts.timeoutMs ?? 600_000 });
  if (r.code !== 0 && !allowFail)
    throw new Error(`${command} ${args.join(' ')} failed (${r.code}):\n${r.stderr.trim().split('\n').slice(-10).join('\n')}`);
  return { ...r, ms: performance.now() - started };
}

/** Writes `bytes` of random (incompressible) data to `file`. */
export function writeRandomFile(file: string, bytes: number): void {
  const fd = openSync(file, 'w', 0o644);
  try {
    const chunk = Buffer.alloc(Math.min(bytes, 16 * MiB));
    for (let left = bytes; left > 0; left -= chunk.length) {
      randomFillSync(chunk);
      writeSync(fd, chunk, 0, Math.min(left, chunk.length));
    }
  } finally {
    closeSync(fd);
  }
}

/** Every descendant of a process (children first found through /proc/<pid>/task/<tid>/children). */
export function descendants(pid: number): number[] {
  const out: number[] = [];
  const walk = (p: number): void => {
    let tids: string[] = [];
    try {
      tids = readdirSync(`/proc/${p}/task`);
    } catch {
      return;
    }
    for (const tid of tids) {
      let children = '';
      try {
        children = readFileSync(`/proc/${p}/task/${tid}/children`, 'utf8');
      } catch {
        continue;
      }
      for (const c of children
        .trim()
        .split(/\s+/)
        .filter((x) => x !== '')
        .map(Number)) {
        out.push(c);
        walk(c);
      }
    }
  };
  walk(pid);
  return out;
}

/** Bytes a process has read and written so far, through any file, pipe or socket. */
export function processIoBytes(pid: number): number | undefined {
  try {
    const io = readFileSync(`/proc/${pid}/io`, 'utf8');
    return Number(/^rchar: (\d+)/m.exec(io)?.[1] ?? 0) + Number(/^wchar: (\d+)/m.exec(io)?.[1] ?? 0);
  } catch {
    return undefined;
  }
}

export interface WatchedResult extends CmdResult {
  /** True when the command moved no byte for `stallMs` and was killed. */
  stalled: boolean;
}

/**
 * Runs a command in its own process group and kills it (with everything it started) when it has
 * neither read nor written a byte for `stallMs`: a stalled transfer is reported, not waited for.
 */
export function cmdWatched(
  command: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; stallMs: number; onSpawn?: (pid: number) => void },
): Promise<WatchedResult> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(command, args, { env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    if (child.pid !== undefined) opts.onSpawn?.(child.pid);
    let stdout = '';
    let stderr = '';
    let stalled = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    let last: number | undefined;
    let lastChange = performance.now();
    const timer = setInterval(() => {
      const pid = child.pid;
      if (pid === undefined) return;
      const io = processIoBytes(pid);
      if (io === undefined) return;
      const now = performance.now();
      if (io !== last) {
        last = io;
        lastChange = now;
      } else if (now - lastChange > opts.stallMs && !stalled) {
        stalled = true;
        // The ssh that Nix started would outlive it (Nix does not tie it to its own life).
        for (const p of [...descendants(pid), pid]) {
          try {
            process.kill(p, 'SIGKILL');
          } catch {
            // gone already
          }
        }
      }
    }, 250);
    child.once('error', (err) => {
      clearInterval(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearInterval(timer);
      const result = { code, stdout, stderr, ms: performance.now() - started, stalled };
      if (code !== 0 && !stalled)
        reject(new Error(`${command} ${args.join(' ')} failed (${code}):\n${stderr.trim().split('\n').slice(-10).join('\n')}`));
      else resolve(result);
    });
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
