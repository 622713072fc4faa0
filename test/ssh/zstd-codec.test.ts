import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import t from 'tap';
import { decodeAll } from './decode-all.js';
import { sample } from './zstd-sample.js';
import { ZstdDecoder, ZstdEncoder } from '../../src/ssh/zstd-codec.js';
import { RAW_FRAME_END, RAW_FRAME_HEADER, rawBlocks, skippableFrame } from '../../src/ssh/zstd-frames.js';
import { relayLevels, zstdRelayCommand } from '../../src/ssh/zstd-relay.js';

t.test('what the encoder writes is one zstd stream that the zstd program reads back', async (t) => {
  const input = sample(3 * 1024 * 1024);
  const encoder = new ZstdEncoder({ level: 3 });
  const out: Buffer[] = [];
  for (let i = 0; i < input.length; i += 40_000) {
    out.push(...encoder.push(input.subarray(i, i + 40_000)));
    if (i % 400_000 === 0) out.push(...encoder.flush());
  }
  out.push(...encoder.end());
  const compressed = Buffer.concat(out);
  t.ok(compressed.length < input.length / 2, `compressed to ${compressed.length} of ${input.length} bytes`);
  const zstd = spawnSync('zstd', ['-d', '-c'], { input: compressed, maxBuffer: 64 * 1024 * 1024 });
  t.equal(zstd.status, 0, zstd.stderr.toString());
  t.ok(zstd.stdout.equals(input), 'zstd -d gives the input back');
});

t.test('the decoder reads what the zstd program writes, in pieces of any size', async (t) => {
  const input = sample(2 * 1024 * 1024);
  const zstd = spawnSync('zstd', ['-3', '-c'], { input, maxBuffer: 64 * 1024 * 1024 });
  t.equal(zstd.status, 0);
  const decoder = new ZstdDecoder();
  const out: Buffer[] = [];
  for (let i = 0; i < zstd.stdout.length; i += 777) out.push(...decodeAll(decoder, zstd.stdout.subarray(i, i + 777)));
  t.ok(Buffer.concat(out).equals(input));
});

t.test('after a flush the peer can read every byte pushed so far: no message waits in the compressor', async (t) => {
  const encoder = new ZstdEncoder({ level: 19, longWindowLog: 24 });
  const decoder = new ZstdDecoder();
  let sent = Buffer.alloc(0);
  let received = Buffer.alloc(0);
  for (const size of [8, 1, 4096, 100_000, 13]) {
    const message = sample(size);
    sent = Buffer.concat([sent, message]);
    const held = encoder.push(message);
    const flushed = encoder.flush();
    t.ok(flushed.length > 0, `a flush after ${size} bytes writes something`);
    for (const part of [...held, ...flushed]) received = Buffer.concat([received, ...decodeAll(decoder, part)]);
    t.ok(received.equals(sent), `all ${sent.length} bytes readable after the flush`);
  }
});

t.test('a frame that inflates 1000:1 comes out 128 KiB per read, as the reader takes it', async (t) => {
  const size = 256 * 1024 * 1024;
  const encoder = new ZstdEncoder({ level: 3 });
  const compressed = Buffer.concat([...encoder.push(Buffer.alloc(size)), ...encoder.end()]);
  t.ok(compressed.length * 1000 < size, `${size} bytes of zeros in ${compressed.length}`);
  const decoder = new ZstdDecoder();
  decoder.write(compressed);
  let total = 0;
  let largest = 0;
  let reads = 0;
  const zeros = Buffer.alloc(128 * 1024);
  for (let part = decoder.read(); part; part = decoder.read()) {
    if (!part.equals(zeros.subarray(0, part.length))) t.fail('only zeros come out');
    total += part.length;
    largest = Math.max(largest, part.length);
    reads++;
    if (reads === 1) t.ok(decoder.pending, 'after the first read the rest waits in the decoder');
  }
  t.equal(total, size, 'all of it, in the end');
  t.equal(largest, 128 * 1024, 'no read hands out more than 128 KiB');
  t.notOk(decoder.pending);
  t.notOk(decoder.midFrame, 'the frame is whole');
});

t.test('a corrupt stream is an error, not garbage', async (t) => {
  const decoder = new ZstdDecoder();
  t.throws(() => decodeAll(decoder, Buffer.from('this is not zstd at all, just text')));
});

t.test('the relay wraps the command the endpoint rendered, and nothing else', async (t) => {
  t.equal(
    zstdRelayCommand("nix-store --serve --write --store 'local?root=/mnt'"),
    "nix-hcloud-builder-zstd-relay -- nix-store --serve --write --store 'local?root=/mnt'",
  );
});

t.test("an adaptive pool's relay goes down and to pass-through, never above the start", async (t) => {
  const pool = { start: 3, min: -5, max: 12, adaptive: true };
  t.same(relayLevels(pool), { start: 3, min: -5, max: 3, adaptive: true });
  t.equal(
    zstdRelayCommand('nix-daemon --stdio', relayLevels(pool)),
    'nix-hcloud-builder-zstd-relay --level 3 --adapt -5:3 -- nix-daemon --stdio',
    'its command line',
  );
});

t.test("a frame's window is read from its header, as the decoder sizes its context by it", async (t) => {
  const { frameWindow } = await import('../../src/ssh/zstd-codec.js');
  for (const windowLog of [17, 19, 21]) {
    const frame = spawnSync('zstd', ['-3', '-c', `--zstd=wlog=${windowLog}`], { input: sample(3 << windowLog) }).stdout;
    t.equal(frameWindow(frame), 2 ** windowLog, `zstd --zstd=wlog=${windowLog}`);
  }
  const magic = [0x28, 0xb5, 0x2f, 0xfd];
  t.equal(frameWindow(Buffer.from([...magic, 0x20, 200, 0])), 200, 'a single-segment frame: its content size (1 byte)');
  t.equal(frameWindow(Buffer.from([...magic, 0x60, 0x10, 0x00])), 0x10 + 256, 'a single-segment frame: its content size (2 bytes, + 256)');
  t.equal(frameWindow(Buffer.from([...magic, 0x00, 0x39])), 144 * 1024, 'a window with a mantissa: 2^17 + 1/8');
  t.equal(frameWindow(Buffer.from('not zstd')), undefined);
});

t.test('a stream whose frames change their windows decodes whole (the decoder changes its context between them)', async (t) => {
  const parts = [sample(3 << 21), sample(100_000), sample(3 << 19)];
  const frames = [21, 17, 19].map(
    (windowLog, i) => spawnSync('zstd', ['-3', '-c', `--zstd=wlog=${windowLog}`], { input: parts[i], maxBuffer: 64 << 20 }).stdout,
  );
  const decoder = new ZstdDecoder();
  const out: Buffer[] = [];
  const stream = Buffer.concat(frames);
  for (let at = 0; at < stream.length; at += 50_000) out.push(...decodeAll(decoder, stream.subarray(at, at + 50_000)));
  t.ok(Buffer.concat(out).equals(Buffer.concat(parts)));
});

/** A block header (RFC 8878, 3.1.1.2): last-block bit, type (0 raw, 2 compressed), size. */
function blockHeader(size: number, last: boolean, type = 0): Buffer {
  const header = Buffer.alloc(3);
  header.writeUIntLE((size << 3) | (type << 1) | (last ? 1 : 0), 0, 3);
  return header;
}

/** Our pass-through frame as the relay writes it: the data in raw blocks, then the empty last block. */
function ourRawFrame(data: Buffer): Buffer {
  return Buffer.concat([RAW_FRAME_HEADER, ...rawBlocks(data), RAW_FRAME_END]);
}

/**
 * A stream of every kind of frame the decoder meets, with the offsets where a frame ends: ours
 * (also written otherwise: a last block with data, an empty block inside), reports, libzstd's
 * frames, and raw-block frames that are not ours (libzstd reads those).
 */
function mixedStream(withZstd = true): { stream: Buffer; data: Buffer; ends: Set<number>; lastReport: Buffer } {
  const parts: { frame: Buffer; data?: Buffer }[] = [];
  const ours = (data: Buffer): void => void parts.push({ frame: ourRawFrame(data), data });
  const report = (text: string): void => void parts.push({ frame: skippableFrame(Buffer.from(text)) });
  const zstd = (data: Buffer, args: string[] = ['-3']): void =>
    void parts.push({ frame: spawnSync('zstd', [...args, '-c'], { input: data }).stdout, data });
  ours(sample(300));
  const a = sample(40);
  const b = sample(25);
  parts.push({
    frame: Buffer.concat([RAW_FRAME_HEADER, blockHeader(40, false), a, blockHeader(0, false), blockHeader(25, true), b]),
    data: Buffer.concat([a, b]),
  });
  report('{"final":"raw","in":365,"out":380}');
  if (withZstd) zstd(sample(1500));
  ours(randomBytes(200));
  report('{"final":3,"in":2065,"out":900}');
  if (withZstd) {
    // A frame of raw blocks with another window (a prefix of our header, then not): libzstd's.
    const c = randomBytes(90);
    parts.push({
      frame: Buffer.concat([RAW_FRAME_HEADER.subarray(0, 5), Buffer.from([(18 - 10) << 3]), blockHeader(90, true), c]),
      data: c,
    });
    zstd(randomBytes(120)); // zstd's own raw block, single segment
  }
  ours(Buffer.alloc(0));
  ours(sample(77));
  report('{"final":"raw","in":3000,"out":3100}');
  const ends = new Set<number>([0]);
  let at = 0;
  for (const p of parts) ends.add((at += p.frame.length));
  const stream = Buffer.concat(parts.map((p) => p.frame));
  const data = Buffer.concat(parts.flatMap((p) => (p.data ? [p.data] : [])));
  return { stream, data, ends, lastReport: Buffer.from('{"final":"raw","in":3000,"out":3100}') };
}

t.test('our pass-through frames among libzstd frames and reports decode as zstd -d does, split at any byte', async (t) => {
  const { stream, data, ends, lastReport } = mixedStream();
  const cli = spawnSync('zstd', ['-d', '-c'], { input: stream });
  t.equal(cli.status, 0, cli.stderr.toString());
  t.ok(cli.stdout.equals(data), 'zstd -d reads the stream as built');
  let wrong = 0;
  for (let cut = 0; cut <= stream.length; cut++) {
    const decoder = new ZstdDecoder();
    const head = Buffer.concat(decodeAll(decoder, stream.subarray(0, cut)));
    const cutState = { midFrame: decoder.midFrame, pending: decoder.pending };
    const output = Buffer.concat([head, ...decodeAll(decoder, stream.subarray(cut))]);
    const ok =
      cutState.midFrame === !ends.has(cut) &&
      !cutState.pending &&
      output.equals(cli.stdout) &&
      !decoder.midFrame &&
      !decoder.pending &&
      decoder.report?.equals(lastReport) === true;
    if (!ok && wrong++ < 5)
      t.fail(`split at ${cut}: ${JSON.stringify(cutState)}, ${output.length} bytes, report ${String(decoder.report)}`);
  }
  t.equal(wrong, 0, `all ${stream.length + 1} split points: whole output; the first part ends mid-frame exactly when cut inside a frame`);
  const bytewise = new ZstdDecoder();
  const out: Buffer[] = [];
  for (let at = 0; at < stream.length; at++) out.push(...decodeAll(bytewise, stream.subarray(at, at + 1)));
  t.ok(Buffer.concat(out).equals(cli.stdout), 'fed a byte at a time');
});

t.test('a stream of pass-through frames and reports never makes a libzstd context, wherever it is split', async (t) => {
  const { stream, data } = mixedStream(false);
  let made = 0;
  for (let cut = 0; cut <= stream.length; cut++) {
    const decoder = new ZstdDecoder();
    const output = Buffer.concat([...decodeAll(decoder, stream.subarray(0, cut)), ...decodeAll(decoder, stream.subarray(cut))]);
    if (decoder.holdsContext || !output.equals(data)) made++;
  }
  t.equal(made, 0, 'no split point makes one (and each gives the data back)');
});

t.test('a pass-through frame drops the context of the libzstd frame before it; the next libzstd frame makes one', async (t) => {
  const decoder = new ZstdDecoder();
  const first = sample(5000);
  t.ok(Buffer.concat(decodeAll(decoder, spawnSync('zstd', ['-3', '-c'], { input: first }).stdout)).equals(first));
  t.ok(decoder.holdsContext, 'a libzstd frame: a context');
  const raw = randomBytes(3000);
  t.ok(Buffer.concat(decodeAll(decoder, ourRawFrame(raw))).equals(raw));
  t.notOk(decoder.holdsContext, 'a pass-through frame: none');
  const last = sample(4000);
  t.ok(Buffer.concat(decodeAll(decoder, spawnSync('zstd', ['-3', '-c'], { input: last }).stdout)).equals(last));
  t.ok(decoder.holdsContext, 'the next libzstd frame: a new one');
});

t.test('a big pass-through frame comes out at most 128 KiB per read, as it came', async (t) => {
  const data = randomBytes(1024 * 1024 + 5);
  const decoder = new ZstdDecoder();
  decoder.write(ourRawFrame(data));
  const parts: Buffer[] = [];
  for (let part = decoder.read(); part; part = decoder.read()) parts.push(part);
  t.ok(Buffer.concat(parts).equals(data));
  t.ok(Math.max(...parts.map((p) => p.length)) <= 128 * 1024, 'no read over 128 KiB');
  t.notOk(decoder.midFrame);
  t.notOk(decoder.holdsContext);
});

t.test('a pass-through frame with a block that is not raw, or too big, is a corrupt stream', async (t) => {
  const compressedBlock = Buffer.concat([RAW_FRAME_HEADER, blockHeader(10, true, 2), Buffer.alloc(10)]);
  t.throws(() => decodeAll(new ZstdDecoder(), compressedBlock), /pass-through frame holds a block that is not raw/);
  const tooBig = Buffer.concat([RAW_FRAME_HEADER, blockHeader(128 * 1024 + 1, true), Buffer.alloc(128 * 1024 + 1)]);
  t.throws(() => decodeAll(new ZstdDecoder(), tooBig), /more than 131072/);
});

t.test("no libzstd frame starts as our pass-through frames do: the relay's fast levels decode whole", async (t) => {
  const input = sample(512 * 1024);
  const clashes: number[] = [];
  for (let windowLog = 10; windowLog <= 27; windowLog++) {
    for (const level of [-5, -1, 1, 3]) {
      const encoder = new ZstdEncoder({ level, windowLog });
      const frame = Buffer.concat([...encoder.push(input), ...encoder.end()]);
      if (frame.subarray(0, RAW_FRAME_HEADER.length).equals(RAW_FRAME_HEADER)) clashes.push(windowLog);
    }
  }
  t.same(clashes, [], 'libzstd writes windows as powers of two; ours has a mantissa');
  // What the relay sends at a negative level (a 128 KiB window), between pass-through frames.
  const fast = new ZstdEncoder({ level: -3, windowLog: 17 });
  const stream = Buffer.concat([
    RAW_FRAME_HEADER,
    ...rawBlocks(input.subarray(0, 1000)),
    RAW_FRAME_END,
    ...fast.push(input),
    ...fast.end(),
    RAW_FRAME_HEADER,
    ...rawBlocks(input.subarray(0, 1000)),
    RAW_FRAME_END,
  ]);
  const expected = Buffer.concat([input.subarray(0, 1000), input, input.subarray(0, 1000)]);
  t.ok(Buffer.concat(decodeAll(new ZstdDecoder(), stream)).equals(expected), "the daemon's decoder gives it all back");
  const cli = spawnSync('zstd', ['-d', '-c'], { input: stream, maxBuffer: 16 * 1024 * 1024 });
  t.equal(cli.status, 0, cli.stderr.toString());
  t.ok(cli.stdout.equals(expected), 'and so does zstd -d: our header is a valid zstd frame header');
});

t.test("an older relay's pass-through frames (window 2^17, not ours now) still decode, through libzstd", async (t) => {
  const data = sample(300 * 1024);
  const olderHeader = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, (17 - 10) << 3]);
  t.notOk(olderHeader.equals(RAW_FRAME_HEADER), 'the header changed');
  const stream = Buffer.concat([olderHeader, ...rawBlocks(data), RAW_FRAME_END]);
  const decoder = new ZstdDecoder();
  t.ok(Buffer.concat(decodeAll(decoder, stream)).equals(data), 'the data comes back whole');
  t.ok(decoder.holdsContext, 'read by libzstd, as any zstd frame');
});
