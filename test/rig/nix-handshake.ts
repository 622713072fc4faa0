/**
 * The opening of Nix's two remote-store protocols, as a client speaks it, to learn what a program
 * answers: the worker protocol's (`nix-daemon --stdio`) version and, from 1.38, its feature set;
 * the serve protocol's (`nix-store --serve`) version. Numbers are 64-bit little-endian words,
 * strings a length word and the bytes padded to 8.
 */
import { spawn } from 'node:child_process';

const WORKER_MAGIC_1 = 0x6e697863n;
const WORKER_MAGIC_2 = 0x6478696fn;
const SERVE_MAGIC_1 = 0x390c9debn;
const SERVE_MAGIC_2 = 0x5452eecbn;
/** The client versions offered: higher than any Nix speaks, so the answer is the program's own. */
const CLIENT_WORKER_VERSION = 0x1ffn;
const CLIENT_SERVE_VERSION = 0x2ffn;

export interface Hello {
  /** "1.38" */
  version: string;
  /** The worker protocol's features (1.38 on), empty before. */
  features: string[];
}

const word = (n: bigint | number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
};
const versionText = (v: number): string => `${v >> 8}.${v & 0xff}`;

/** Reads exact byte counts from a stream. */
class Reader {
  private buffer = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  private ended = false;

  constructor(stream: NodeJS.ReadableStream) {
    stream.on('data', (c: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, c]);
      this.wake?.();
    });
    stream.on('end', () => {
      this.ended = true;
      this.wake?.();
    });
  }

  async bytes(n: number): Promise<Buffer> {
    while (this.buffer.length < n) {
      if (this.ended) throw new Error(`the stream ended after ${this.buffer.length} of ${n} bytes`);
      await new Promise<void>((r) => (this.wake = r));
    }
    const out = this.buffer.subarray(0, n);
    this.buffer = this.buffer.subarray(n);
    return out;
  }

  async number(): Promise<number> {
    return Number((await this.bytes(8)).readBigUInt64LE());
  }

  async string(): Promise<string> {
    const length = await this.number();
    const padded = Math.ceil(length / 8) * 8;
    return (await this.bytes(padded)).subarray(0, length).toString();
  }
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
  const reader = new Reader(child.stdout);
  const talk = async (): Promise<Hello> => {
    if (mode === 'serve') {
      child.stdin.write(Buffer.concat([word(SERVE_MAGIC_1), word(CLIENT_SERVE_VERSION)]));
      if (BigInt(await reader.number()) !== SERVE_MAGIC_2) throw new Error("not the serve protocol's magic");
      return { version: versionText(await reader.number()), features: [] };
    }
    child.stdin.write(word(WORKER_MAGIC_1));
    if (BigInt(await reader.number()) !== WORKER_MAGIC_2) throw new Error("not the worker protocol's magic");
    const version = await reader.number();
    child.stdin.write(word(CLIENT_WORKER_VERSION));
    const features: string[] = [];
    if ((version & 0xff) >= 38) {
      // Features: the client's list (none), then the daemon's.
      child.stdin.write(word(0));
      const count = await reader.number();
      for (let i = 0; i < count; i++) features.push(await reader.string());
    }
    return { version: versionText(version), features };
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
