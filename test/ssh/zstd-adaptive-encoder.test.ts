import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import t from 'tap';
import { decodeAll } from './decode-all.js';
import { frameList } from './zstd-frame-list.js';
import { sample } from './zstd-sample.js';
import {
  AdaptiveZstdEncoder,
  encoderOptions,
  longWindowsInUse,
  type EpochMeter,
  type SettingChange,
} from '../../src/ssh/zstd-adaptive-encoder.js';
import {
  EPOCH_BYTES,
  EPOCH_MIN_MS,
  LINK_FILL_BYTES,
  LONG_WINDOW_SESSIONS,
  PROBE_BYTES,
  UPLOAD_LONG_TABLE_LOG,
  UPLOAD_LONG_WINDOW_LOG,
  WARM_UP_BYTES,
  type LevelPolicy,
} from '../../src/ssh/zstd-adapt.js';
import { ZstdDecoder } from '../../src/ssh/zstd-codec.js';
import { RAW_FRAME_HEADER, skippableFrame } from '../../src/ssh/zstd-frames.js';

const AUTO: LevelPolicy = { start: 3, min: -5, max: 12, adaptive: true };

/** A clock that moves only when told: each epoch lasts what the test says, the codec and the CPU as it says. */
class TestMeter implements EpochMeter {
  t = 0;
  saturated = false;
  now(): number {
    return this.t;
  }
  mark(): unknown {
    return undefined;
  }
  saturatedSince(): boolean {
    return this.saturated;
  }
}

function zstdCli(input: Buffer): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync('zstd', ['-d', '-c'], { input, maxBuffer: 256 * 1024 * 1024 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

/**
 * Pushes `input` in chunks of 64 KiB; `each` runs before each epoch's worth (to set what it
 * measures), `pushed` after each chunk.
 */
function encode(
  encoder: AdaptiveZstdEncoder,
  input: Buffer,
  each: (epoch: number) => void = () => undefined,
  pushed: () => void = () => undefined,
): Buffer {
  const out: Buffer[] = [];
  const chunk = 64 * 1024;
  for (let at = 0; at < input.length; at += chunk) {
    if (at % EPOCH_BYTES === 0) each(at / EPOCH_BYTES);
    out.push(...encoder.push(input.subarray(at, at + chunk)));
    pushed();
    if (at % (256 * 1024) === 0) out.push(...encoder.flush());
  }
  out.push(...encoder.end());
  return Buffer.concat(out);
}

t.test("zstd's settings per level: windows and tables grow with the level, the upload's long window most", async (t) => {
  t.same(encoderOptions(3, true), { level: 3, windowLog: 19 }, "level 3: 512 KiB, zstd's own tables");
  t.same(encoderOptions(7, true), { level: 7, windowLog: 20, tableLog: 18 }, 'tables capped at the window');
  t.same(encoderOptions(12, true), { level: 12, longWindowLog: 23, tableLog: 20 }, 'from 10: 8 MiB and long matching');
  t.same(
    encoderOptions(12, true, true),
    { level: 12, longWindowLog: UPLOAD_LONG_WINDOW_LOG, tableLog: UPLOAD_LONG_TABLE_LOG },
    'with one of the long windows: 16 MiB and a larger hash table',
  );
  t.same(encoderOptions(12, false), { level: 12, longWindowLog: 27 }, "a fixed level: zstd's own, 128 MiB of long matching");
});

t.test('a fixed level writes one zstd stream from its first byte, as before', async (t) => {
  const input = sample(3 * EPOCH_BYTES);
  const encoder = new AdaptiveZstdEncoder({ start: 3, min: 3, max: 3, adaptive: false }, new TestMeter());
  const out = encode(encoder, input);
  t.notOk(out.subarray(0, RAW_FRAME_HEADER.length).equals(RAW_FRAME_HEADER), 'no pass-through warm-up');
  t.ok(out.length < input.length / 2, `${out.length} of ${input.length} bytes`);
  const cli = zstdCli(out);
  t.equal(cli.status, 0, cli.stderr);
  t.ok(cli.stdout.equals(input), 'zstd -d gives the input back');
  t.same(encoder.summary(), { settled: 3, final: 3, bytesIn: input.length, bytesOut: out.length });
});

t.test('"auto": the warm-up goes through as it is, then the stream is compressed at the start level', async (t) => {
  const meter = new TestMeter();
  const encoder = new AdaptiveZstdEncoder(AUTO, meter);
  const hello = sample(1000);
  const first = Buffer.concat([...encoder.push(hello), ...encoder.flush()]);
  t.ok(first.subarray(0, RAW_FRAME_HEADER.length).equals(RAW_FRAME_HEADER), 'a pass-through frame');
  t.ok(first.includes(hello), 'carrying the bytes as they are');
  t.equal(encoder.describe(), 'pass-through');
  const input = Buffer.concat([hello, sample(2 * EPOCH_BYTES)]);
  const rest = encode(encoder, input.subarray(hello.length));
  t.equal(encoder.summary().settled, 3, 'settled at the start level');
  const out = Buffer.concat([first, rest]);
  t.ok(out.length < input.length / 2, `compressed after the warm-up: ${out.length} of ${input.length}`);
  const cli = zstdCli(out);
  t.equal(cli.status, 0, cli.stderr);
  t.ok(cli.stdout.equals(input), 'pass-through and zstd frames are one stream zstd -d reads back');
  const decoder = new ZstdDecoder();
  t.ok(Buffer.concat(decodeAll(decoder, out)).equals(input), "and so is the daemon's decoder");
  t.notOk(decoder.midFrame, 'ended at a frame end');
});

t.test('a slow link raises the level an epoch at a time up to the bound; a busy CPU lowers it to pass-through', async (t) => {
  const meter = new TestMeter();
  const changes: SettingChange[] = [];
  const encoder = new AdaptiveZstdEncoder({ ...AUTO, max: 6 }, meter, (change) => changes.push(change));
  const levels: string[] = [];
  const input = sample(32 * EPOCH_BYTES + WARM_UP_BYTES);
  const out = encode(encoder, input, (epoch) => {
    levels.push(encoder.describe());
    meter.t += EPOCH_MIN_MS;
    if (epoch < 8)
      encoder.waited(0.6 * EPOCH_MIN_MS); // the link held the output 60 % of the epoch
    else meter.saturated = true; // then the CPU is the limit and the link waits for nothing
  });
  t.ok(levels.includes('level 6'), `reached the bound: ${levels.join(', ')}`);
  t.notOk(levels.includes('level 7'), 'and not past it');
  t.equal(encoder.describe(), 'pass-through', 'down through the fast levels to pass-through');
  t.ok(levels.includes('level -5'), 'by way of the lowest level');
  t.notOk(levels.includes('level 0'), 'never level 0 (zstd: its default)');
  t.same(
    changes.map((c) => c.to),
    [4, 5, 6, 5, 4, 3, 2, 1, -1, -2, -3, -4, -5, 'raw'],
    'each change is reported once, with the epoch that made it',
  );
  t.ok(
    changes.every((c, i) => c.from === (i === 0 ? 3 : changes[i - 1]?.to) && c.epoch.bytesIn >= EPOCH_BYTES),
    'from the setting before it',
  );
  t.ok(changes[0] !== undefined && changes[0].epoch.blockedMs > 0, 'a climb was a wait for the link');
  const cli = zstdCli(out);
  t.equal(cli.status, 0, cli.stderr);
  t.ok(cli.stdout.equals(input), 'every change at a frame boundary: the stream reads back whole');
});

t.test("a burst into the link's free buffers is not an epoch: the level holds until the epoch's time is up", async (t) => {
  const meter = new TestMeter();
  const encoder = new AdaptiveZstdEncoder(AUTO, meter);
  const burstMiB = 16; // its output passes LINK_FILL_BYTES: a step down may count what follows
  const levels: string[] = [];
  encode(
    encoder,
    sample(WARM_UP_BYTES + PROBE_BYTES + burstMiB * EPOCH_BYTES),
    () => {
      meter.t += EPOCH_MIN_MS / (2 * burstMiB); // each MiB in a sliver of the epoch, the CPU busy, nothing waited
      meter.saturated = true;
    },
    () => levels.push(encoder.describe()),
  );
  t.equal(encoder.describe(), 'level 3', `no level change within a burst: ${[...new Set(levels)].join(', ')}`);
  meter.t += EPOCH_MIN_MS;
  encoder.push(sample(64 * 1024));
  t.equal(encoder.describe(), 'level 3', 'once the epoch has lasted long enough to tell, one busy epoch is not enough');
  encoder.push(sample(EPOCH_BYTES));
  meter.t += EPOCH_MIN_MS;
  encoder.push(sample(64 * 1024));
  t.equal(encoder.describe(), 'level 2', 'a second in a row is: one step down');
});

t.test("a session's first epochs fill the link: a busy codec there does not take the level down", async (t) => {
  const meter = new TestMeter();
  meter.saturated = true; // every epoch: the CPU busy, the link waiting for nothing
  const encoder = new AdaptiveZstdEncoder({ ...AUTO, start: 9 }, meter);
  const seen: { level: string; out: number }[] = [];
  let out = 0;
  const chunk = 64 * 1024;
  const input = sample(WARM_UP_BYTES + PROBE_BYTES + 24 * EPOCH_BYTES);
  for (let at = 0; at < input.length; at += chunk) {
    if (at % EPOCH_BYTES === 0) meter.t += EPOCH_MIN_MS;
    for (const part of encoder.push(input.subarray(at, at + chunk))) out += part.length;
    seen.push({ level: encoder.describe(), out });
  }
  const firstDown = seen.findIndex((s) => s.level !== 'level 9' && s.level !== 'pass-through');
  t.ok(firstDown > 0, `it steps down in the end: ${[...new Set(seen.map((s) => s.level))].join(', ')}`);
  t.ok((seen[firstDown]?.out ?? 0) > LINK_FILL_BYTES, `not before its output passed ${LINK_FILL_BYTES} bytes`);
  t.equal(seen[firstDown]?.level, 'level 8', 'one level at a time');
  t.ok(
    (seen[firstDown]?.out ?? 0) < LINK_FILL_BYTES + 4 * EPOCH_BYTES,
    'and then after two busy epochs, as anywhere else (the epochs compress to under 1 MiB each)',
  );
});

t.test('data that does not compress goes through as it is, and zstd is tried again now and then', async (t) => {
  const meter = new TestMeter();
  const encoder = new AdaptiveZstdEncoder(AUTO, meter);
  const input = randomBytes(24 * EPOCH_BYTES);
  const seen = new Set<string>();
  let context = false;
  const out = encode(
    encoder,
    input,
    () => (meter.t += EPOCH_MIN_MS),
    () => {
      seen.add(encoder.describe());
      context ||= encoder.holdsContext;
    },
  );
  t.equal(encoder.summary().settled, 'raw', 'most of it as it is');
  t.same([...seen].sort(), ['level -5', 'level 3', 'pass-through'], 'probed at the start level, and at the lowest level after a while');
  t.notOk(context, 'in one-shot frames: the session never made a context of its own');
  t.equal(encoder.learnedLevel(), undefined, 'and the link learns nothing from data that does not compress');
  t.ok(out.length < input.length * 1.001, `framing costs little: ${out.length - input.length} bytes on ${input.length}`);
  t.ok(zstdCli(out).stdout.equals(input));
});

t.test('after the warm-up, data is probed in one-shot frames before the session makes its context', async (t) => {
  const encoder = new AdaptiveZstdEncoder(AUTO, new TestMeter());
  const input = sample(WARM_UP_BYTES + PROBE_BYTES + EPOCH_BYTES);
  const out: Buffer[] = [];
  let at = 0;
  const pushTo = (end: number): void => {
    for (; at < end; at = Math.min(at + 32 * 1024, end))
      out.push(...encoder.push(input.subarray(at, Math.min(at + 32 * 1024, end))), ...encoder.flush());
  };
  pushTo(WARM_UP_BYTES + PROBE_BYTES - 1);
  t.equal(encoder.describe(), 'level 3', 'probing at the start level');
  t.notOk(encoder.holdsContext, 'without a context of its own');
  const probe = Buffer.concat(out);
  t.ok(probe.length < (WARM_UP_BYTES + PROBE_BYTES) * 0.6, `and compressed: ${probe.length} bytes`);
  pushTo(input.length);
  out.push(...encoder.end());
  t.ok(encoder.holdsContext, 'data that compresses gets its context after the probe');
  const stream = Buffer.concat(out);
  const cli = zstdCli(stream);
  t.equal(cli.status, 0, cli.stderr);
  t.ok(cli.stdout.equals(input), 'warm-up, one-shot frames and the streamed frame are one stream');
  t.ok(Buffer.concat(decodeAll(new ZstdDecoder(), stream)).equals(input), "and so the daemon's decoder reads it");
});

t.test('one chunk across the warm-up, the probe and beyond is cut where each ends', async (t) => {
  const encoder = new AdaptiveZstdEncoder(AUTO, new TestMeter());
  const input = sample(WARM_UP_BYTES + PROBE_BYTES + 512 * 1024);
  const stream = Buffer.concat([...encoder.push(input), ...encoder.end()]);
  const frames = frameList(stream).filter((f) => f.kind === 'zstd');
  t.ok(frames[0]?.ours, 'the warm-up: a pass-through frame');
  t.equal(frames.filter((f) => f.singleSegment).length, PROBE_BYTES / (64 * 1024), 'the probe: one-shot frames of 64 KiB');
  t.ok(frames.at(-1)?.singleSegment === false && encoder.holdsContext, 'the rest: streamed with its context');
  t.ok(zstdCli(stream).stdout.equals(input), 'and it reads back');
});

t.test("long windows are the daemon's to share: a fifth session that climbs stays below level 10", async (t) => {
  const meter = new TestMeter();
  const policy: LevelPolicy = { start: 12, min: -5, max: 12, adaptive: true };
  const encoders = Array.from({ length: LONG_WINDOW_SESSIONS + 1 }, () => new AdaptiveZstdEncoder(policy, meter));
  const input = sample(WARM_UP_BYTES + PROBE_BYTES + EPOCH_BYTES);
  const streams = encoders.map((e) => encode(e, input));
  t.same(
    encoders.map((e) => e.describe()),
    [...Array<string>(LONG_WINDOW_SESSIONS).fill('level 12'), 'level 9'],
    'the first four at the start level, the fifth at the level below the long windows',
  );
  t.equal(longWindowsInUse(), LONG_WINDOW_SESSIONS);
  for (const stream of streams) t.ok(zstdCli(stream).stdout.equals(input), 'each stream reads back');
  encoders[0]?.close();
  encoders[0]?.close();
  t.equal(longWindowsInUse(), LONG_WINDOW_SESSIONS - 1, 'a session that ends gives its window back (once)');
  const late = encoders[LONG_WINDOW_SESSIONS] as AdaptiveZstdEncoder;
  encode(late, input, () => {
    meter.t += EPOCH_MIN_MS;
    late.waited(0.9 * EPOCH_MIN_MS); // the link holds its output
  });
  t.equal(late.describe(), 'level 12', 'and the one that waited takes it when its link says so');
  for (const e of encoders) e.close();
  t.equal(longWindowsInUse(), 0, 'all given back');
});

t.test('what a session learns for the next one over its link', async (t) => {
  const meter = new TestMeter();
  const climbing = new AdaptiveZstdEncoder({ ...AUTO, max: 9 }, meter);
  encode(climbing, sample(WARM_UP_BYTES + PROBE_BYTES + 4 * EPOCH_BYTES), () => {
    meter.t += EPOCH_MIN_MS;
    climbing.waited(0.9 * EPOCH_MIN_MS);
  });
  t.equal(climbing.learnedLevel(), 9, 'the level a slow link took it to');
  const busy = new AdaptiveZstdEncoder({ ...AUTO, min: 1 }, meter);
  meter.saturated = true;
  // Past LINK_FILL_BYTES of output (≈ 3:1), then two busy epochs a level.
  encode(busy, sample(WARM_UP_BYTES + PROBE_BYTES + 20 * EPOCH_BYTES), () => (meter.t += EPOCH_MIN_MS));
  t.equal(busy.describe(), 'pass-through', 'a busy CPU took it to pass-through');
  t.equal(busy.learnedLevel(), 1, 'which teaches the lowest level');
  const short = new AdaptiveZstdEncoder(AUTO, meter);
  encode(short, sample(WARM_UP_BYTES + PROBE_BYTES));
  t.equal(short.learnedLevel(), undefined, 'a session that never finished an epoch teaches nothing');
  for (const e of [climbing, busy, short]) e.close();
});

t.test("the daemon's decoder takes our reports off the stream between frames, wherever the stream is cut", async (t) => {
  const frameA = zstdOf(sample(5000));
  const frameB = zstdOf(sample(7000));
  const report = Buffer.from('{"final":4,"in":12000,"out":900}');
  const stream = Buffer.concat([frameA, skippableFrame(Buffer.from('{"final":3,"in":1,"out":1}')), frameB, skippableFrame(report)]);
  t.equal(zstdCli(stream).status, 0, 'zstd -d passes over them too');
  for (const cut of [1, 3, 7, 100, stream.length]) {
    const decoder = new ZstdDecoder();
    const out: Buffer[] = [];
    for (let at = 0; at < stream.length; at += cut) out.push(...decodeAll(decoder, stream.subarray(at, at + cut)));
    t.equal(Buffer.concat(out).length, 12000, `in pieces of ${cut}: all the data`);
    t.notOk(decoder.midFrame, `in pieces of ${cut}: ended at a frame end`);
    t.same(decoder.report, report, `in pieces of ${cut}: the last report`);
  }
});

function zstdOf(data: Buffer): Buffer {
  return spawnSync('zstd', ['-3', '-c'], { input: data }).stdout;
}

t.test('a stream cut inside a report is a cut stream, and does not wait forever for the rest', async (t) => {
  const stream = Buffer.concat([zstdOf(sample(3000)), skippableFrame(Buffer.from('{"final":4,"in":1,"out":1}'))]);
  const decoder = new ZstdDecoder();
  t.equal(Buffer.concat(decodeAll(decoder, stream.subarray(0, stream.length - 5))).length, 3000, 'the data before it');
  t.notOk(decoder.pending, 'nothing more to hand out');
  t.ok(decoder.midFrame, 'and the stream counts as cut');
});
