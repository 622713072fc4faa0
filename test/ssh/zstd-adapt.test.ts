import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { packageRoot } from '../../src/core/package-file.js';
import {
  adaptiveWindowLog,
  countsAsCodecBound,
  EPOCH_BYTES,
  LINK_FILL_BYTES,
  levelPolicyOf,
  LinkStart,
  nextSetting,
  parseRelayReport,
  RAW_RETRY_EPOCHS,
  settledLevels,
  SettingTally,
  UplinkStarts,
  WARM_UP_BYTES,
  type Epoch,
  type LevelPolicy,
  type AdaptHistory,
  type Setting,
} from '../../src/ssh/zstd-adapt.js';
import { ZSTD_RELAY_SOURCE } from '../../src/ssh/zstd-relay.js';

const AUTO: LevelPolicy = { start: 3, min: -5, max: 12, adaptive: true };
const MiB = EPOCH_BYTES;
/** 100 ms epochs of 1 MiB that compress to a third. */
const epoch = (over: Partial<Epoch>): Epoch => ({
  wallMs: 100,
  codecMs: 10,
  blockedMs: 0,
  cpuSaturated: false,
  bytesIn: MiB,
  bytesOut: MiB / 3,
  ...over,
});
const COMPRESSING: AdaptHistory = { rawEpochs: 0, incompressible: false, codecBound: false };
/** The codec was the limit in the epoch before, too. */
const BUSY_BEFORE: AdaptHistory = { ...COMPRESSING, codecBound: true };

interface Case {
  why: string;
  setting: Setting;
  epoch: Epoch;
  policy?: LevelPolicy;
  history?: AdaptHistory;
  next: Setting;
}

const CASES: Case[] = [
  { why: 'the output waited for the link half the epoch: up', setting: 3, epoch: epoch({ blockedMs: 50 }), next: 4 },
  { why: 'the output waited for the link most of the epoch: three levels up', setting: 3, epoch: epoch({ blockedMs: 80 }), next: 6 },
  { why: 'three levels up from -2 skip level 0', setting: -2, epoch: epoch({ blockedMs: 80 }), next: 2 },
  { why: 'three levels up stop at the bound', setting: 11, epoch: epoch({ blockedMs: 90 }), next: 12 },
  { why: 'a quarter of the epoch is enough to call the link the limit', setting: 3, epoch: epoch({ blockedMs: 25 }), next: 4 },
  { why: 'at the highest level the link can only wait', setting: 12, epoch: epoch({ blockedMs: 90 }), next: 12 },
  {
    why: 'the output waits, but the codec takes a third already: hold (what waits may be a store, not the link)',
    setting: 6,
    epoch: epoch({ blockedMs: 50, codecMs: 35 }),
    next: 6,
  },
  {
    why: 'the codec took 60 % and the link waited for nothing: down',
    setting: 3,
    epoch: epoch({ codecMs: 60 }),
    history: BUSY_BEFORE,
    next: 2,
  },
  {
    why: "the process's CPU saturated, the link idle: down",
    setting: 3,
    epoch: epoch({ cpuSaturated: true }),
    history: BUSY_BEFORE,
    next: 2,
  },
  {
    why: 'the codec the limit for one epoch only (a burst into freed buffers, say): hold',
    setting: 12,
    epoch: epoch({ codecMs: 80, cpuSaturated: true }),
    next: 12,
  },
  { why: 'and for a second epoch in a row: down', setting: 12, epoch: epoch({ codecMs: 80 }), history: BUSY_BEFORE, next: 11 },
  { why: 'a busy codec while the link also waits is not the limit', setting: 3, epoch: epoch({ codecMs: 60, blockedMs: 10 }), next: 3 },
  { why: 'neither (the source is the limit): hold', setting: 5, epoch: epoch({ codecMs: 20, blockedMs: 2 }), next: 5 },
  {
    why: 'from level 1 down is -1: zstd level 0 means its default',
    setting: 1,
    epoch: epoch({ codecMs: 80 }),
    history: BUSY_BEFORE,
    next: -1,
  },
  { why: 'from level -1 up is 1', setting: -1, epoch: epoch({ blockedMs: 60 }), next: 1 },
  {
    why: 'at the lowest level, still the codec: pass-through',
    setting: -5,
    epoch: epoch({ codecMs: 80 }),
    history: BUSY_BEFORE,
    next: 'raw',
  },
  { why: 'data that does not compress goes through as it is', setting: 3, epoch: epoch({ bytesOut: MiB }), next: 'raw' },
  { why: 'even on a slow link', setting: 7, epoch: epoch({ bytesOut: MiB * 0.99, blockedMs: 90 }), next: 'raw' },
  {
    why: 'pass-through for speed, then the link is the limit: back to the lowest level',
    setting: 'raw',
    epoch: epoch({ blockedMs: 50 }),
    next: -5,
  },
  {
    why: 'pass-through because nothing compressed: a slow link does not bring zstd back',
    setting: 'raw',
    epoch: epoch({ blockedMs: 50 }),
    history: { rawEpochs: 3, incompressible: true, codecBound: false },
    next: 'raw',
  },
  {
    why: `after ${RAW_RETRY_EPOCHS} epochs of pass-through, a try at the lowest level`,
    setting: 'raw',
    epoch: epoch({}),
    history: { rawEpochs: RAW_RETRY_EPOCHS, incompressible: true, codecBound: false },
    next: -5,
  },
  { why: 'pass-through and nothing else limits: stay', setting: 'raw', epoch: epoch({}), next: 'raw' },
  { why: 'a level raised past the bound is capped', setting: 2, epoch: epoch({ blockedMs: 80 }), policy: { ...AUTO, max: 2 }, next: 2 },
  {
    why: 'a fixed level never moves',
    setting: 3,
    epoch: epoch({ codecMs: 99 }),
    policy: { start: 3, min: 3, max: 3, adaptive: false },
    next: 3,
  },
];

t.test('the adaptation follows the limit: up for the link, down for the codec, pass-through for what does not compress', async (t) => {
  for (const c of CASES) t.equal(nextSetting(c.setting, c.epoch, c.policy ?? AUTO, c.history ?? COMPRESSING), c.next, c.why);
});

/**
 * `expression` (Python, over `relay`, the worker's relay as a module, and `case`) for each of
 * `cases`, as the relay answers; the test fails when python3 does.
 */
function relayAnswers<T>(t: Test, expression: string, cases: unknown[]): T[] {
  const relay = join(packageRoot(), ZSTD_RELAY_SOURCE);
  const script = [
    'import importlib.util, json, sys',
    `spec = importlib.util.spec_from_file_location("relay", ${JSON.stringify(relay)})`,
    'relay = importlib.util.module_from_spec(spec); spec.loader.exec_module(relay)',
    `print(json.dumps([${expression} for case in json.load(sys.stdin)]))`,
  ].join('\n');
  const r = spawnSync('python3', ['-BIS', '-c', script], { input: JSON.stringify(cases), encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as T[];
}

/** An epoch as the relay's functions take it: seconds, not milliseconds. */
const relayEpoch = (e: Epoch): unknown[] => [e.wallMs / 1000, e.codecMs / 1000, e.blockedMs / 1000, e.cpuSaturated, e.bytesIn, e.bytesOut];

t.test("the worker's relay runs the same rules on the same cases", async (t) => {
  const cases = CASES.map((c) => {
    const p = c.policy ?? AUTO;
    const history = c.history ?? COMPRESSING;
    return [
      c.setting,
      relayEpoch(c.epoch),
      [p.start, p.min, p.max, p.adaptive],
      [history.rawEpochs, history.incompressible, history.codecBound],
    ];
  });
  const answers = relayAnswers<Setting>(t, 'relay.next_setting(case[0], tuple(case[1]), tuple(case[2]), tuple(case[3]))', cases);
  CASES.forEach((c, i) => t.equal(answers[i], c.next, `relay: ${c.why}`));
  const levels = [-7, -1, 1, 2, 3, 5, 6, 9, 10, 19];
  t.same(
    relayAnswers(t, 'relay.adaptive_window_log(case)', levels),
    levels.map(adaptiveWindowLog),
    'and sizes its windows as the daemon does',
  );
});

/** What the next epoch remembers of one: a busy codec counts only once the link's buffers had their fill. */
const FILL_CASES: { why: string; epoch: Epoch; totalOut: number; counts: boolean }[] = [
  {
    why: 'a busy codec, nothing waited, the output at the fill: counts',
    epoch: epoch({ codecMs: 80 }),
    totalOut: LINK_FILL_BYTES,
    counts: true,
  },
  {
    why: 'the same a byte before the fill: the link was still filling its buffers',
    epoch: epoch({ codecMs: 80 }),
    totalOut: LINK_FILL_BYTES - 1,
    counts: false,
  },
  { why: 'the CPU saturated, past the fill: counts', epoch: epoch({ cpuSaturated: true }), totalOut: 2 * LINK_FILL_BYTES, counts: true },
  {
    why: 'the output waited a tenth of the epoch: the link, not the codec, however far',
    epoch: epoch({ codecMs: 80, blockedMs: 10 }),
    totalOut: 8 * LINK_FILL_BYTES,
    counts: false,
  },
  { why: 'a codec with time to spare, past the fill: does not count', epoch: epoch({}), totalOut: 8 * LINK_FILL_BYTES, counts: false },
];

t.test('a busy codec counts for a step down only after the output passed the fill, in the daemon and in the relay', async (t) => {
  for (const c of FILL_CASES) t.equal(countsAsCodecBound(c.epoch, c.totalOut), c.counts, c.why);
  const cases = FILL_CASES.map(({ epoch: e, totalOut }) => [relayEpoch(e), totalOut]);
  const answers = relayAnswers<boolean>(t, 'relay.counts_as_codec_bound(tuple(case[0]), case[1])', cases);
  FILL_CASES.forEach((c, i) => t.equal(answers[i], c.counts, `relay: ${c.why}`));
});

t.test('windows grow with the level, from 128 KiB to 8 MiB', async (t) => {
  t.equal(adaptiveWindowLog(-5), 17);
  t.equal(adaptiveWindowLog(3), 19);
  t.equal(adaptiveWindowLog(12), 23);
  for (let level = -7; level < 19; level++) t.ok(adaptiveWindowLog(level) <= adaptiveWindowLog(level + 1), `not smaller at ${level + 1}`);
});

t.test('a pool\'s "auto" adapts between its bounds from 3; a number is a fixed level', async (t) => {
  t.same(levelPolicyOf('auto', -5, 12, 3), { start: 3, min: -5, max: 12, adaptive: true });
  t.same(levelPolicyOf('auto', 5, 12, 3), { start: 5, min: 5, max: 12, adaptive: true }, 'the start kept within the bounds');
  t.same(levelPolicyOf(12, -5, 12, 3), { start: 12, min: 12, max: 12, adaptive: false });
});

t.test('what a session settled on: the setting that carried most, the warm-up aside', async (t) => {
  const tally = new SettingTally();
  tally.add('raw', WARM_UP_BYTES);
  t.equal(tally.settled(WARM_UP_BYTES), undefined, 'the warm-up alone says nothing');
  tally.add(3, 2 * MiB);
  tally.add(4, 5 * MiB);
  tally.add(5, MiB);
  t.equal(tally.settled(WARM_UP_BYTES), 4);
  t.same(
    settledLevels({ settled: 4, final: 5, bytesIn: 8 * MiB, bytesOut: MiB }, { settled: 'raw', final: 'raw', bytesIn: 1, bytesOut: 1 }),
    {
      up: 'level 4',
      down: 'pass-through',
    },
  );
  t.same(
    settledLevels({ final: 'raw', bytesIn: 10, bytesOut: 10 }, undefined),
    {},
    'a direction that carried only its warm-up is left out',
  );
});

t.test("the relay's reports are read leniently: a report that is not one is no report", async (t) => {
  t.same(parseRelayReport(Buffer.from('{"final":-2,"settled":3,"in":100,"out":40}')), {
    settled: 3,
    final: -2,
    bytesIn: 100,
    bytesOut: 40,
  });
  t.same(parseRelayReport(Buffer.from('{"final":"raw","in":1,"out":1}')), { final: 'raw', bytesIn: 1, bytesOut: 1 });
  for (const bad of ['', 'level 3', '{"final":"fast","in":1,"out":1}', '{"final":3}', 'null', '[1]'])
    t.equal(parseRelayReport(Buffer.from(bad)), undefined, JSON.stringify(bad));
  t.equal(parseRelayReport(undefined), undefined);
});

t.test('the next session over a link starts where the last one ended, within the bounds', async (t) => {
  const start = new LinkStart({ start: 3, min: -5, max: 12, adaptive: true });
  t.equal(start.next().start, 3, 'the pool start first');
  start.learn(12);
  t.same(start.next(), { start: 12, min: -5, max: 12, adaptive: true }, 'then the level the last session took');
  start.learn(undefined);
  t.equal(start.next().start, 12, 'a session that learned nothing changes nothing');
  start.learn(19);
  t.equal(start.next().start, 12, 'never past the bounds');
  start.learn(-5);
  t.equal(start.next().start, 3, 'nor below the start: a level too high comes down by itself, climbing costs');
  const fixed = new LinkStart({ start: 5, min: 5, max: 5, adaptive: false });
  fixed.learn(9);
  t.equal(fixed.next().start, 5, 'a fixed level stays fixed');
});

t.test("a pool's next worker starts its uploads where the last worker's sessions left them", async (t) => {
  const starts = new UplinkStarts();
  const first = starts.for('default', AUTO);
  first.learn(12);
  t.equal(starts.for('default', { ...AUTO }).next().start, 12, 'the same pool, the same levels: what it learned');
  t.equal(starts.for('other', AUTO).next().start, 3, 'another pool starts at its start');
  const reloaded = starts.for('default', { ...AUTO, max: 9 });
  t.equal(reloaded.next().start, 3, 'levels changed by a reload: afresh');
  reloaded.learn(9);
  t.equal(starts.for('default', { ...AUTO, max: 9 }).next().start, 9, 'and kept from then on');
});
