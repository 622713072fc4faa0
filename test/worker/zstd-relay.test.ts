// The worker's end of compression "zstd", run here as sshd would run it on a worker: with the
// real Nix programs behind it, the daemon's encoder and decoder in front.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { packageRoot } from '../../src/core/package-file.js';
import { parseNixCommand } from '../../src/ssh/nix-command.js';
import { LONG_WINDOW_LOG, ZstdDecoder, ZstdEncoder, type ZstdEncoderOptions } from '../../src/ssh/zstd-codec.js';
import { spareRelayHeader, ZSTD_RELAY_SOURCE } from '../../src/ssh/zstd-relay.js';
import { PROGRAM_PATHS_REFUSED } from '../ssh/nix-command-cases.js';
import { decodeAll } from '../ssh/decode-all.js';
import { run } from '../rig/process.js';
import { rigNixEnv } from '../rig/nix-config.js';

const RELAY = join(packageRoot(), ZSTD_RELAY_SOURCE);

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

/**
 * The relay running `command` as sshd would start it, with the daemon's encoder and decoder on
 * its pipes; `spare`: started with --await, and given its arguments in its first line.
 */
function startRelay(command: string[], pythonOptions: string[] = [], encoderOptions: ZstdEncoderOptions = { level: 3 }, spare = false) {
  const args = spare ? ['--await'] : ['--', ...command];
  const child = spawn('python3', [...pythonOptions, RELAY, ...args], { env: rigNixEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
  if (spare) child.stdin.write(spareRelayHeader(command));
  const encoder = new ZstdEncoder(encoderOptions);
  const decoder = new ZstdDecoder();
  let answer = Buffer.alloc(0);
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal })),
  );
  /** Resolves with the first 8 bytes of the command's answer, decoded, as a number. */
  const firstWord = new Promise<number>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      answer = Buffer.concat([answer, ...decodeAll(decoder, chunk)]);
      if (answer.length >= 8) resolve(Number(answer.readBigUInt64LE(0)));
    });
    void closed.then(({ code, signal }) => reject(new Error(`the relay ended (${code ?? signal}) before answering: ${stderr}`)));
  });
  firstWord.catch(() => undefined);
  /** Sends bytes through the encoder, flushed: as the daemon does when its client pauses. */
  const send = (bytes: Buffer): void => {
    for (const part of [...encoder.push(bytes), ...encoder.flush()]) child.stdin.write(part);
  };
  return { child, encoder, decoder, closed, firstWord, send, stderr: () => stderr };
}

/** Sends the protocol's first magic through the relay and reads the answer's first 8 bytes, decoded. */
async function handshake(t: Test, command: string[], magic: number): Promise<number> {
  const relay = startRelay(command);
  const timer = setTimeout(() => relay.child.kill('SIGKILL'), 10_000);
  // The magic alone, flushed, and the input left open: as a Nix client does, which then waits.
  relay.send(u64(magic));
  try {
    return await relay.firstWord;
  } finally {
    for (const part of relay.encoder.end()) relay.child.stdin.write(part);
    relay.child.stdin.end();
    await relay.closed;
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

t.test("a session's relay starts on few modules: no site, re, subprocess, threading, signal or ctypes.util (ldconfig)", async (t) => {
  // Its interpreter line; nixos/worker.nix runs it with the same options.
  t.match(readFileSync(RELAY, 'utf8'), /^#!\/usr\/bin\/python3 -IS\n/, 'python3 -I -S');
  const relay = startRelay(['nix-daemon', '--stdio'], ['-I', '-S', '-X', 'importtime']);
  t.teardown(() => relay.child.kill('SIGKILL'));
  relay.send(u64(0x6e697863));
  t.equal(await relay.firstWord, 0x6478696f, 'nix-daemon answers through the relay');
  for (const part of relay.encoder.end()) relay.child.stdin.write(part);
  relay.child.stdin.end();
  await relay.closed;
  const imported = new Set([...relay.stderr().matchAll(/^import time:.*\| *([\w.]+)$/gm)].map((m) => m[1]));
  t.ok(imported.has('ctypes'), 'the import log is read');
  for (const slow of ['site', 're', 'subprocess', 'threading', 'signal', 'enum', 'ctypes.util']) t.notOk(imported.has(slow), `no ${slow}`);
});

t.test("the relay takes the daemon's long window (its high levels) and refuses a longer one, whose memory it would hold", async (t) => {
  const daemons = startRelay(['nix-daemon', '--stdio'], [], { level: 12, longWindowLog: LONG_WINDOW_LOG });
  t.teardown(() => daemons.child.kill('SIGKILL'));
  daemons.send(u64(0x6e697863));
  t.equal(await daemons.firstWord, 0x6478696f, `a window of 2^${LONG_WINDOW_LOG} bytes: nix-daemon answers`);
  const longer = startRelay(['nix-daemon', '--stdio'], [], { level: 12, longWindowLog: LONG_WINDOW_LOG + 1 });
  t.teardown(() => longer.child.kill('SIGKILL'));
  longer.send(u64(0x6e697863));
  const answered = await longer.firstWord.then(
    () => true,
    () => false,
  );
  t.notOk(answered, 'a window twice that: nix-daemon hears nothing');
  longer.child.stdin.end();
  const { code } = await longer.closed;
  t.equal(code, 1, 'and the relay fails');
  t.match(longer.stderr(), /^nix-hcloud-builder-zstd-relay: zstd: .*memory/im, 'with one line saying why');
  t.notMatch(longer.stderr(), /Traceback/);
});

t.test('a spare relay (--await) takes its arguments from its first line and runs the command as if started with them', async (t) => {
  for (const [command, magic, answer] of [
    [['nix-daemon', '--stdio'], 0x6e697863, 0x6478696f],
    [['nix-store', '--serve', '--write'], 0x390c9deb, 0x5452eecb],
  ] as const) {
    const relay = startRelay([...command], [], { level: 3 }, true);
    t.teardown(() => relay.child.kill('SIGKILL'));
    relay.send(u64(magic));
    t.equal(await relay.firstWord, answer, `${command.join(' ')} answers its magic`);
    for (const part of relay.encoder.end()) relay.child.stdin.write(part);
    relay.child.stdin.end();
    const { code } = await relay.closed;
    t.type(code, 'number', `and ends when its input does (the command's status, ${String(code)})`);
    t.notMatch(relay.stderr(), /Traceback|refused/);
  }
});

t.test('a spare relay let go unused ends quietly; one given a bad first line or a refused command runs nothing', async (t) => {
  const unused = await run('python3', [RELAY, '--await'], { timeoutMs: 10_000 });
  t.equal(unused.code, 0, 'EOF before any line: exit 0');
  t.equal(unused.stderr, '');
  const dir = mkdtempSync(join(tmpdir(), 'nhb-relay-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const marker = join(dir, 'ran');
  for (const [line, why] of [
    [`${JSON.stringify(['--', 'sh', '-c', `touch ${marker}`])}\n`, /command refused \(program 'sh'/],
    ['nix-daemon --stdio\n', /not a JSON array/],
    [`${JSON.stringify(['--', 'nix-daemon', 7])}\n`, /not a JSON array/],
    ['x'.repeat(10_000), /too long/],
  ] as const) {
    const child = spawn('python3', [RELAY, '--await'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdin.end(line);
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    t.equal(code, 2, `${line.slice(0, 40)}: exit 2`);
    t.match(stderr, why, 'one line saying why');
  }
  t.notOk(existsSync(marker), 'nothing ran');
});

t.test('--check loads libzstd and says its version', async (t) => {
  const r = await run('python3', [RELAY, '--check'], { timeoutMs: 10_000 });
  t.equal(r.code, 0, r.stderr);
  t.match(
    r.stdout,
    /^libzstd \d+\.\d+\.\d+ adapt await\n$/,
    'and what it takes: --adapt and --await (the daemon asks before it uses them)',
  );
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

t.test('an allowed command that is not there: one line and status 127, as from a shell', async (t) => {
  const missing = '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix-0/bin/nix-daemon';
  const r = await run('python3', [RELAY, '--', missing, '--stdio'], { timeoutMs: 10_000 });
  t.equal(r.code, 127);
  t.equal(r.stderr, `nix-hcloud-builder-zstd-relay: cannot run ${missing}: No such file or directory\n`);
});

t.test("a command killed by SIGKILL (the OOM killer's signal): the relay dies of it too, no traceback", async (t) => {
  const relay = startRelay(['nix-daemon', '--stdio']);
  t.teardown(() => relay.child.kill('SIGKILL'));
  relay.send(u64(0x6e697863));
  t.equal(await relay.firstWord, 0x6478696f, 'nix-daemon runs behind the relay');
  const children = readFileSync(`/proc/${relay.child.pid}/task/${relay.child.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
  t.equal(children.length, 1, 'one command');
  process.kill(Number(children[0]), 'SIGKILL');
  const { code, signal } = await relay.closed;
  t.same({ code, signal }, { code: null, signal: 'SIGKILL' }, "sshd reports the command's signal");
  t.notMatch(relay.stderr(), /Traceback|Error/, 'no Python traceback');
  t.notOk(relay.decoder.midFrame, 'its stdout stream still ends with a whole frame');
});

t.test('a zstd stream from the daemon cut inside a frame: one line, and the relay fails', async (t) => {
  const relay = startRelay(['nix-daemon', '--stdio']);
  t.teardown(() => relay.child.kill('SIGKILL'));
  relay.send(u64(0x6e697863));
  t.equal(await relay.firstWord, 0x6478696f);
  // Flushed but never ended: the frame's end is missing, as when a connection is cut.
  relay.child.stdin.end();
  const { code } = await relay.closed;
  t.equal(code, 1, 'exit status 1');
  t.match(
    relay.stderr(),
    /^nix-hcloud-builder-zstd-relay: the daemon's zstd stream ended inside a frame \(cut off\); the command's input is incomplete$/m,
  );
  t.notMatch(relay.stderr(), /Traceback/);
});

t.test("the relay's allow-list is the endpoint's", async (t) => {
  const STORE_NIX = '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix-2.24.10/bin';
  const cases: string[][] = [
    ['nix-daemon', '--stdio'],
    ['nix-store', '--serve', '--write'],
    ['nix-store', '--serve', '--store', 'local?root=/mnt'],
    [`${STORE_NIX}/nix-daemon`, '--stdio'],
    [`${STORE_NIX}/nix-store`, '--serve'],
    ...PROGRAM_PATHS_REFUSED.map((path) => [path, '--stdio']),
    ['nix-daemon'],
    ['nix-store', '--stdio'],
    ['nix-daemon', '--stdio', '--stdio'],
    ['nix-build', '--serve'],
    ['nix-store', '--serve', '--store', 'a;b'],
    ['nix-daemon', '--stdio', '--store', 'a'.repeat(1025)],
    ['nix-daemon', '--stdio', '--store', 'a'.repeat(1024)],
    ['nix-daemon', '--stdio', '--store', ''],
    ['nix-daemon', '--stdio', '--store', 'local\n'],
    [`${STORE_NIX}/nix-daemon\n`, '--stdio'],
    ['/nix/store/0123456789abcdfghijklmnpqrsvwxyz-/nix-daemon', '--stdio'],
    ['/nix/store/0123456789abcdfghijklmnpqrsvwxyz-n/nix-daemon', '--stdio'],
    ['/nix/store/0123456789abcdfghijklmnpqrsvwx-nix/nix-daemon', '--stdio'],
    ['/nix/store/0123456789abcdfghijklmnpqrsvwxyz0-nix/nix-daemon', '--stdio'],
    ['/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix/bin/', '--stdio'],
    // Every character of ASCII and two beyond, at the start and inside a store path's components and in a store URI.
    ...CHARACTERS.flatMap((c) => [
      [`/nix/store/0123456789abcdfghijklmnpqrsvwxyz-${c}nix/bin/nix-daemon`, '--stdio'],
      [`/nix/store/0123456789abcdfghijklmnpqrsvwxyz-n${c}x/bin/nix-daemon`, '--stdio'],
      [`/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix/${c}bin/nix-daemon`, '--stdio'],
      [`/nix/store/0123456789abcdfghijklmnpqrsvw${c}z-nix/bin/nix-daemon`, '--stdio'],
      ['nix-store', '--serve', '--store', `local${c}x`],
    ]),
  ];
  const verdicts = await run('python3', ['-c', RELAY_VERDICTS, RELAY], { input: JSON.stringify(cases), timeoutMs: 10_000 });
  t.equal(verdicts.code, 0, verdicts.stderr);
  const relay = JSON.parse(verdicts.stdout) as boolean[];
  const endpoint = cases.map((argv) => {
    try {
      // Each word quoted as the endpoint would take it whole (single quotes, or double for a word with one).
      parseNixCommand(argv.map((word) => (word.includes("'") ? `"${word}"` : `'${word}'`)).join(' '));
      return true;
    } catch {
      return false;
    }
  });
  t.same(relay, endpoint, 'each case: both allow it or both refuse it');
  t.same(endpoint.slice(0, 5), [true, true, true, true, true], 'the first five are allowed');
  const characterVerdicts = endpoint.slice(cases.length - CHARACTERS.length * 5);
  t.ok(characterVerdicts.includes(true) && characterVerdicts.includes(false), 'the characters include allowed and refused ones');
});

const CHARACTERS = [...Array.from({ length: 95 }, (_, i) => String.fromCharCode(0x20 + i)), '\t', 'é', 'ａ'];

/** Loads the relay as a module and prints, for each argv read as JSON on stdin, whether its allow-list passes it. */
const RELAY_VERDICTS = `
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("relay", sys.argv[1])
relay = importlib.util.module_from_spec(spec)
spec.loader.exec_module(relay)
def allowed(argv):
    try:
        relay.check_nix_command(argv)
        return True
    except relay.Refused:
        return False
print(json.dumps([allowed(argv) for argv in json.load(sys.stdin)]))
`;
