// The worker's end of compression "zstd", run here as sshd would run it on a worker: with the
// real Nix programs behind it, the daemon's encoder and decoder in front.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { packageRoot } from '../../src/core/package-file.js';
import { ZstdDecoder, ZstdEncoder } from '../../src/ssh/zstd-codec.js';
import { ZSTD_RELAY_SOURCE } from '../../src/ssh/zstd-relay.js';
import { run } from '../rig/process.js';
import { rigNixEnv } from '../rig/nix-config.js';

const RELAY = join(packageRoot(), ZSTD_RELAY_SOURCE);

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

/** Sends the protocol's first magic through the relay and reads the answer's first 8 bytes, decoded. */
async function handshake(t: Test, command: string[], magic: number): Promise<number> {
  const child = spawn('python3', [RELAY, '--', ...command], { env: rigNixEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
  const encoder = new ZstdEncoder({ level: 3 });
  const decoder = new ZstdDecoder();
  let answer = Buffer.alloc(0);
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const got = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`hung: no answer to the magic within 10 s (the relay did not flush?); stderr: ${stderr}`)), 10_000);
    child.stdout.on('data', (chunk: Buffer) => {
      answer = Buffer.concat([answer, ...decoder.push(chunk)]);
      if (answer.length >= 8) {
        clearTimeout(timer);
        resolve(Number(answer.readBigUInt64LE(0)));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the relay exited (${code}) before answering: ${stderr}`));
    });
  });
  // The magic alone, flushed, and the input left open: as a Nix client does, which then waits.
  for (const part of [...encoder.push(u64(magic)), ...encoder.flush()]) child.stdin.write(part);
  try {
    return await got;
  } finally {
    const exited = new Promise((resolve) => child.once('close', resolve));
    for (const part of encoder.end()) child.stdin.write(part);
    child.stdin.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
    t.pass('the relay ended after its input did');
  }
}

t.test('nix-daemon --stdio answers the worker protocol magic through the relay', async (t) => {
  t.equal(await handshake(t, ['nix-daemon', '--stdio'], 0x6e697863), 0x6478696f);
});

t.test('nix-store --serve --write answers the serve protocol magic through the relay', async (t) => {
  t.equal(await handshake(t, ['nix-store', '--serve', '--write'], 0x390c9deb), 0x5452eecb);
});

t.test('--check loads libzstd and says its version', async (t) => {
  const r = await run('python3', [RELAY, '--check'], { timeoutMs: 10_000 });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^libzstd \d+\.\d+\.\d+\n$/);
});

t.test('the relay refuses anything but the Nix commands, as the endpoint does, and runs nothing', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-relay-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const marker = join(dir, 'ran');
  const refused: string[][] = [
    [],
    ['--', 'bash'],
    ['--', 'sh', '-c', `touch ${marker}`],
    ['--', 'nix-daemon'],
    ['--', 'nix-daemon', '--stdio', ';', 'touch', marker],
    ['--', 'nix-store', '--serve', '--store', `$(touch ${marker})`],
    ['--', 'nix-store', '--serve', '--store', `\`touch ${marker}\``],
    ['--', 'nix-store', '--serve', '--store'],
    ['--', 'nix-store', '--stdio'],
    ['--', 'nix-daemon', '--serve'],
    ['--', 'nix-daemon', '--stdio', '--stdio'],
    ['--', 'nix-store', '--serve', '--write', '--write'],
    ['--', 'nix-store', '--serve', '--option', 'x', 'y'],
    ['--', 'nix-build', '--serve'],
    ['--', 'relative/nix-daemon', '--stdio'],
    ['--', '/bin/../evil/nix-daemonx', '--stdio'],
    ['--', 'nix-daemon', '--stdio', '--store', 'a'.repeat(5000)],
    ['--', 'nix-store', '--serve', '--store', 'a;b'],
    ['--level', 'x', '--', 'nix-daemon', '--stdio'],
    ['nix-daemon', '--stdio'],
  ];
  for (const args of refused) {
    const r = await run('python3', [RELAY, ...args], { timeoutMs: 10_000 });
    t.equal(r.code, 2, `${JSON.stringify(args).slice(0, 80)}: exit 2`);
    t.match(r.stderr, /^nix-hcloud-builder-zstd-relay: (command refused \(|usage)/, 'one line saying why');
  }
  t.notOk(existsSync(marker), 'no refused command ran anything');
});
