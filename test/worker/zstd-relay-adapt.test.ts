// The relay's adaptive level (--adapt), driven as the command's output drives it on a worker:
// its Encoder writing into a pipe that a reader empties slowly (a slow link) or at once.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { packageRoot } from '../../src/core/package-file.js';
import { EPOCH_BYTES, parseRelayReport, PROBE_BYTES } from '../../src/ssh/zstd-adapt.js';
import { ZstdDecoder } from '../../src/ssh/zstd-codec.js';
import { ZSTD_RELAY_SOURCE } from '../../src/ssh/zstd-relay.js';
import { decodeAll } from '../ssh/decode-all.js';
import { frameList } from '../ssh/zstd-frame-list.js';

const RELAY = join(packageRoot(), ZSTD_RELAY_SOURCE);
/** What runEncoder pushes at a time: the relay's reads of the command's output at most. */
const CHUNK = 128 * 1024;

/**
 * Runs the relay's Encoder on `mib` MiB (text that compresses, or random bytes) into a pipe whose
 * reader sleeps `readerSleepMs` per 64 KiB read; writes the input and the stream to `dir`. With
 * `clockMsPerChunk`, the relay's clock is the test's, moved that much before each chunk (the
 * codec and the link then take no time).
 */
function runEncoder(
  dir: string,
  opts: { mib: number; random: boolean; readerSleepMs: number; adapt: string; clockMsPerChunk?: number },
): string {
  const script = `
import importlib.util, os, sys, threading, time, random
spec = importlib.util.spec_from_file_location("relay", ${JSON.stringify(RELAY)})
relay = importlib.util.module_from_spec(spec); spec.loader.exec_module(relay)
lib = relay.load_zstd()
lo, hi = ${JSON.stringify(opts.adapt)}.split(":")
policy = (3, int(lo), int(hi), True)
words = [b"nix", b"store", b"derivation", b"/nix/store/", b"lib", b".so", b"ELF", b"\\0\\0\\0\\0", b"x86_64"]
rng = random.Random(7)
data = os.urandom(${opts.mib} << 20) if ${opts.random ? 'True' : 'False'} else b"".join(rng.choice(words) for _ in range(${opts.mib} << 18))[: ${opts.mib} << 20]
r, w = os.pipe()
out = []
def reader():
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            return
        out.append(chunk)
        time.sleep(${opts.readerSleepMs / 1000})
th = threading.Thread(target=reader); th.start()
clock = [0.0]
if ${opts.clockMsPerChunk !== undefined ? 'True' : 'False'}:
    relay.monotonic = lambda: clock[0]
enc = relay.Encoder(lib, policy, w)
seen = []
for at in range(0, len(data), ${CHUNK}):
    clock[0] += ${(opts.clockMsPerChunk ?? 0) / 1000}
    seen.append(enc.setting)
    enc.push(data[at : at + ${CHUNK}])
    enc.flush()
enc.end(); os.close(w); th.join()
open(${JSON.stringify(join(dir, 'input'))}, "wb").write(data)
open(${JSON.stringify(join(dir, 'stream'))}, "wb").write(b"".join(out))
print(" ".join(str(s) for s in seen + [enc.setting]))
`;
  const r = spawnSync('python3', ['-BIS', '-c', script], { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(r.stderr);
  return r.stdout.trim();
}

function decode(dir: string): { output: Buffer; decoder: ZstdDecoder } {
  const decoder = new ZstdDecoder();
  return { output: Buffer.concat(decodeAll(decoder, readFileSync(join(dir, 'stream')))), decoder };
}

t.test("a slow reader (the link) raises the relay's level; the daemon reads the stream and the relay's report", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-relay-adapt-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // 64 KiB per 20 ms: ≈ 3 MB/s of compressed bytes, far slower than zstd compresses at these
  // levels, so the output waits for the reader: each epoch may raise the level.
  const seen = runEncoder(dir, { mib: 10, random: false, readerSleepMs: 20, adapt: '-5:9' }).split(' ');
  const final = Number(seen.pop());
  t.equal(seen[0], 'raw', 'the warm-up goes as it is');
  t.equal(seen[1], '3', 'then the start level');
  t.ok(Math.max(...seen.map(Number).filter(Number.isFinite)) >= 6, `the level rose: ${[...new Set(seen)].join(' ')}`);
  t.notOk(
    seen.some((level) => Number(level) > 9),
    'never past the bound',
  );
  const { output, decoder } = decode(dir);
  t.ok(output.equals(readFileSync(join(dir, 'input'))), "the daemon's decoder gives the input back");
  t.notOk(decoder.midFrame);
  const report = parseRelayReport(decoder.report);
  t.equal(report?.final, final, "the relay's last report: where it ended");
  t.equal(report?.bytesIn, 10 << 20, 'and how much it carried');
  t.ok(typeof report?.settled === 'number' && report.settled > 3, `settled above the start: ${report?.settled}`);
  const stream = readFileSync(join(dir, 'stream'));
  const cli = spawnSync('zstd', ['-d', '-c'], { input: stream, maxBuffer: 64 << 20 });
  t.ok(cli.status === 0 && cli.stdout.equals(output), 'zstd -d reads the same');
  const frames = frameList(stream).filter((f) => f.kind === 'zstd');
  t.ok(frames[0]?.ours, 'the warm-up: a pass-through frame');
  const afterWarmUp = frames.slice(1);
  const probe = afterWarmUp.slice(
    0,
    afterWarmUp.findIndex((f) => !f.singleSegment),
  );
  t.equal(probe.length, 3, 'then the probe: a frame per chunk up to 256 KiB, each single-segment');
  t.ok(
    probe.every((f) => (f.window as number) <= CHUNK),
    'with windows of its chunk',
  );
  t.ok(
    frames.slice(1 + probe.length).every((f) => !f.singleSegment && (f.window as number) >= 512 * 1024),
    'then streaming frames, with the windows of level 3 and up',
  );
});

t.test('random bytes never make a frame with a window above the chunk size, nor a streaming context, even on a retry', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-relay-adapt-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // 18 MiB: the warm-up, a probe at the start level, 16 epochs as they are, then a probe at the lowest level.
  // The relay's clock moves 50 ms a chunk (its epochs end on bytes: the clock only keeps the codec's share at 0).
  const clockMsPerChunk = 50;
  const seen = runEncoder(dir, { mib: 18, random: true, readerSleepMs: 0, adapt: '-5:12', clockMsPerChunk }).split(' ');
  t.same([...new Set(seen)], ['raw', '3', '-5'], 'probed at the start level, then at the lowest on the retry');
  t.equal(seen.at(-1), 'raw', 'and went back to pass-through');
  const stream = readFileSync(join(dir, 'stream'));
  const frames = frameList(stream).filter((f) => f.kind === 'zstd');
  const libzstd = frames.filter((f) => !f.ours);
  t.ok(libzstd.length >= 4, `${libzstd.length} probe frames`);
  t.same(
    libzstd.filter((f) => (f.window as number) > CHUNK),
    [],
    "no libzstd window above the chunk size (the pass-through frames' 144 KiB is read by hand, without one)",
  );
  t.ok(
    libzstd.every((f) => f.singleSegment),
    "libzstd's frames are single-segment (the probe's): none from a streaming context",
  );
  const input = readFileSync(join(dir, 'input'));
  const { output, decoder } = decode(dir);
  t.ok(output.equals(input), "the daemon's decoder gives the input back");
  t.notOk(decoder.holdsContext, 'and holds no libzstd context after the pass-through frames');
  const cli = spawnSync('zstd', ['-d', '-c'], { input: stream, maxBuffer: 64 << 20 });
  t.ok(cli.status === 0 && cli.stdout.equals(input), 'zstd -d reads the same');
});

t.test('random bytes go through as they are when the reader keeps up', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-relay-adapt-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  runEncoder(dir, { mib: 6, random: true, readerSleepMs: 0, adapt: '-5:12' });
  const { output, decoder } = decode(dir);
  const input = readFileSync(join(dir, 'input'));
  t.ok(output.equals(input), 'read back whole');
  t.equal(parseRelayReport(decoder.report)?.settled, 'raw', 'settled on pass-through');
  const cli = spawnSync('zstd', ['-d', '-c'], { input: readFileSync(join(dir, 'stream')), maxBuffer: 64 << 20 });
  t.equal(cli.status, 0, 'zstd -d reads the stream (reports and pass-through frames) too');
});

t.test('the relay probes as far as the daemon does, and its epochs are as big', async (t) => {
  const script = `import importlib.util
spec = importlib.util.spec_from_file_location("relay", ${JSON.stringify(RELAY)})
relay = importlib.util.module_from_spec(spec); spec.loader.exec_module(relay)
print(relay.PROBE_BYTES, relay.EPOCH_BYTES)`;
  t.equal(spawnSync('python3', ['-BIS', '-c', script], { encoding: 'utf8' }).stdout.trim(), `${PROBE_BYTES} ${EPOCH_BYTES}`);
});

t.test('the relay refuses bounds it cannot use, with one line', async (t) => {
  for (const args of [
    ['--adapt', '5'],
    ['--adapt', '9:3'],
    ['--adapt', '-5:20'],
    ['--level', '0'],
  ]) {
    const r = spawnSync('python3', ['-BIS', RELAY, ...args, '--', 'nix-daemon', '--stdio'], { encoding: 'utf8' });
    t.equal(r.status, 2, args.join(' '));
    t.match(r.stderr, /^nix-hcloud-builder-zstd-relay: command refused \(--(adapt|level) needs/, args.join(' '));
  }
});
