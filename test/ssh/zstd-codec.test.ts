import { spawnSync } from 'node:child_process';
import t from 'tap';
import { decodeAll } from './decode-all.js';
import { sample } from './zstd-sample.js';
import { ZstdDecoder, ZstdEncoder } from '../../src/ssh/zstd-codec.js';
import { zstdRelayCommand } from '../../src/ssh/zstd-relay.js';

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
