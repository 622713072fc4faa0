/**
 * The daemon's encoder of a session's upload: zstd at a fixed level, or at the level the
 * adaptation (zstd-adapt.ts) picks epoch by epoch, with pass-through frames below zstd's lowest.
 * Each change ends the frame and starts the next one with the new setting. Adaptive, a level
 * after pass-through starts with a probe (one-shot frames, PROBE_BYTES): the session's own
 * context is made only for data that compresses. Long windows are shared out
 * (LONG_WINDOW_SESSIONS): the daemon's memory is bounded however many sessions climb.
 */
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import {
  adaptiveWindowLog,
  countsAsCodecBound,
  describeSetting,
  EPOCH_BYTES,
  EPOCH_MIN_MS,
  FRESH_HISTORY,
  INCOMPRESSIBLE,
  LONG_WINDOW_FROM_LEVEL_ADAPTIVE,
  LONG_WINDOW_SESSIONS,
  nextSetting,
  PROBE_BYTES,
  SettingTally,
  TABLE_CAP_FROM_LEVEL,
  UPLOAD_LONG_TABLE_LOG,
  UPLOAD_LONG_WINDOW_LOG,
  WARM_UP_BYTES,
  type AdaptHistory,
  type DirectionSummary,
  type Epoch,
  type LevelPolicy,
  type Setting,
} from './zstd-adapt.js';
import { fixedLevelOptions, oneShotFrames, ZstdEncoder, type ZstdEncoderOptions } from './zstd-codec.js';
import { RAW_FRAME_END, RAW_FRAME_HEADER, rawBlocks } from './zstd-frames.js';

/** The clock and the CPU gauge an epoch is measured with (tests give their own). */
export interface EpochMeter {
  now(): number;
  /** A mark to measure the process's CPU from. */
  mark(): unknown;
  /** Whether the process's CPU was saturated since `mark`. */
  saturatedSince(mark: unknown): boolean;
}

/** The daemon's event loop busy this share of an epoch: the process's CPU is the limit. */
export const LOOP_SATURATED = 0.9;

export const processMeter: EpochMeter = {
  now: () => performance.now(),
  mark: () => performance.eventLoopUtilization(),
  saturatedSince: (mark) => performance.eventLoopUtilization(mark as EventLoopUtilization).utilization >= LOOP_SATURATED,
};

/** zstd's settings for a level: a fixed level's own, or the adaptation's bounded window (the upload's longer one with a long window held). */
export function encoderOptions(level: number, adaptive: boolean, longWindow = false): ZstdEncoderOptions {
  if (!adaptive) return fixedLevelOptions(level);
  const windowLog = longWindow ? UPLOAD_LONG_WINDOW_LOG : adaptiveWindowLog(level);
  const tables = level >= TABLE_CAP_FROM_LEVEL ? { tableLog: Math.min(windowLog - 2, longWindow ? UPLOAD_LONG_TABLE_LOG : 20) } : {};
  if (level >= LONG_WINDOW_FROM_LEVEL_ADAPTIVE) return { level, longWindowLog: windowLog, ...tables };
  return { level, windowLog, ...tables };
}

/** Sessions of this process holding a long window now (at most LONG_WINDOW_SESSIONS). */
let longWindowsHeld = 0;

/** How many long windows the daemon's sessions hold (for tests and the docs' memory bound). */
export function longWindowsInUse(): number {
  return longWindowsHeld;
}

/** A change of setting at an epoch's end, and what the epoch measured (for the daemon's debug log). */
export interface SettingChange {
  from: Setting;
  to: Setting;
  epoch: Epoch;
}

export class AdaptiveZstdEncoder {
  private readonly zstd: ZstdEncoder;
  private setting: Setting;
  private frame: 'zstd' | 'raw' | undefined;
  private warmingUp: boolean;
  private readonly history: AdaptHistory = { ...FRESH_HISTORY };
  private readonly tally = new SettingTally();
  /** Bytes of the probe still to go as one-shot frames (0: not probing). */
  private probeLeft = 0;
  private probeIn = 0;
  private probeOut = 0;
  /** This session holds one of the long windows. */
  private longWindow = false;
  /** The level its epochs last chose (LinkStart learns it). */
  private learned: number | undefined;
  private closed = false;
  private totalIn = 0;
  private totalOut = 0;
  // The epoch so far.
  private started = 0;
  private loopMark: unknown;
  private codecMs = 0;
  private blockedMs = 0;
  private bytesIn = 0;
  private bytesOut = 0;

  constructor(
    private readonly policy: LevelPolicy,
    private readonly meter: EpochMeter = processMeter,
    private readonly onChange?: (change: SettingChange) => void,
  ) {
    this.warmingUp = policy.adaptive;
    this.setting = policy.adaptive ? 'raw' : policy.start;
    this.zstd = new ZstdEncoder(encoderOptions(policy.start, policy.adaptive));
    this.newEpoch();
  }

  push(chunk: Buffer): Buffer[] {
    // The warm-up and the probe end where they end, whatever the chunks: the rest goes on with what follows.
    const cut = this.warmingUp ? WARM_UP_BYTES - this.totalIn : this.probeLeft > 0 ? this.probeLeft : chunk.length;
    if (cut < chunk.length) return [...this.push(chunk.subarray(0, cut)), ...this.push(chunk.subarray(cut))];
    const parts: Buffer[] = [];
    if (this.setting === 'raw') {
      if (this.frame === undefined) this.open(parts, RAW_FRAME_HEADER);
      this.emit(parts, rawBlocks(chunk));
    } else {
      const probing = this.probeLeft > 0;
      if (!probing) this.frame = 'zstd';
      const t0 = this.meter.now();
      const out = probing ? oneShotFrames(chunk, this.setting) : this.zstd.push(chunk);
      this.codecMs += this.meter.now() - t0;
      const before = this.bytesOut;
      this.emit(parts, out);
      if (probing) {
        this.probeLeft -= chunk.length;
        this.probeIn += chunk.length;
        this.probeOut += this.bytesOut - before;
      }
    }
    this.bytesIn += chunk.length;
    this.totalIn += chunk.length;
    this.tally.add(this.setting, chunk.length);
    this.afterInput(parts);
    return parts;
  }

  flush(): Buffer[] {
    const parts: Buffer[] = [];
    if (this.frame === 'zstd') this.emit(parts, this.zstd.flush());
    return parts;
  }

  end(): Buffer[] {
    const parts: Buffer[] = [];
    // An empty stream is one empty frame (a probe's frames are whole already).
    if (this.frame === undefined && this.setting !== 'raw' && this.totalOut === 0) this.frame = 'zstd';
    this.closeFrame(parts);
    return parts;
  }

  /** The session is over (on every path): its long window, if it held one, goes to the next. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.giveLongWindow();
  }

  /** The level this session's epochs last chose, for the next session over the same link (see LinkStart). */
  learnedLevel(): number | undefined {
    return this.learned;
  }

  /** The compressed bytes waited this long for the link (the pipe paused for it). */
  waited(ms: number): void {
    this.blockedMs += ms;
  }

  summary(): DirectionSummary {
    const settled = this.tally.settled(this.policy.adaptive ? WARM_UP_BYTES : 0);
    return { ...(settled !== undefined ? { settled } : {}), final: this.setting, bytesIn: this.totalIn, bytesOut: this.totalOut };
  }

  /** Whether the session's own libzstd context is held (not while warming up, probing or passing through). */
  get holdsContext(): boolean {
    return this.zstd.holdsContext;
  }

  describe(): string {
    return describeSetting(this.setting);
  }

  private afterInput(parts: Buffer[]): void {
    if (this.warmingUp) {
      if (this.totalIn < WARM_UP_BYTES) return;
      this.warmingUp = false;
      this.switchTo(this.withinLongWindows(this.policy.start), parts);
      return;
    }
    if (this.probeIn > 0 && this.probeLeft === 0) {
      const incompressible = this.probeOut / this.probeIn >= INCOMPRESSIBLE;
      this.probeIn = this.probeOut = 0;
      if (incompressible) {
        this.passThroughFrom(true);
        this.switchTo('raw', parts);
      } else this.newEpoch();
      return;
    }
    if (this.probeLeft > 0 || this.bytesIn < EPOCH_BYTES) return;
    const wallMs = this.meter.now() - this.started;
    if (wallMs < EPOCH_MIN_MS) return;
    const epoch: Epoch = {
      wallMs,
      codecMs: this.codecMs,
      blockedMs: this.blockedMs,
      cpuSaturated: this.meter.saturatedSince(this.loopMark),
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
    };
    let next = nextSetting(this.setting, epoch, this.policy, this.history);
    this.history.codecBound = countsAsCodecBound(epoch, this.totalOut);
    if (this.setting === 'raw') this.history.rawEpochs++;
    if (next === 'raw' && this.setting !== 'raw') this.passThroughFrom(epoch.bytesOut / epoch.bytesIn >= INCOMPRESSIBLE);
    next = this.withinLongWindows(next);
    if (this.setting !== 'raw') this.learned = next === 'raw' ? (this.history.incompressible ? this.learned : this.policy.min) : next;
    if (next !== this.setting) {
      this.onChange?.({ from: this.setting, to: next, epoch });
      this.switchTo(next, parts);
    } else this.newEpoch();
  }

  /** Pass-through starts now: its epochs count from 0, and why it started decides what ends it. */
  private passThroughFrom(incompressible: boolean): void {
    this.history.rawEpochs = 0;
    this.history.incompressible = incompressible;
  }

  private switchTo(next: Setting, parts: Buffer[]): void {
    this.closeFrame(parts);
    const from = this.setting;
    this.setting = next;
    if (next === 'raw' || next < LONG_WINDOW_FROM_LEVEL_ADAPTIVE) this.giveLongWindow();
    if (next === 'raw') this.zstd.release();
    else {
      this.zstd.configure(encoderOptions(next, this.policy.adaptive, this.longWindow));
      // A level after pass-through: the probe first (a fixed level has no pass-through).
      if (from === 'raw') this.probeLeft = PROBE_BYTES;
    }
    this.newEpoch();
  }

  /**
   * A level from 10 takes one of the daemon's long windows; when none is free the session stays
   * below (or, when its bounds keep it at 10 or above, goes on with the relay's 8 MiB window).
   */
  private withinLongWindows(next: Setting): Setting {
    if (!this.policy.adaptive || next === 'raw' || next < LONG_WINDOW_FROM_LEVEL_ADAPTIVE || this.longWindow) return next;
    if (!this.closed && longWindowsHeld < LONG_WINDOW_SESSIONS) {
      longWindowsHeld++;
      this.longWindow = true;
      return next;
    }
    return Math.max(LONG_WINDOW_FROM_LEVEL_ADAPTIVE - 1, this.policy.min);
  }

  private giveLongWindow(): void {
    if (!this.longWindow) return;
    this.longWindow = false;
    longWindowsHeld--;
  }

  private closeFrame(parts: Buffer[]): void {
    if (this.frame === 'raw') this.emit(parts, [RAW_FRAME_END]);
    else if (this.frame === 'zstd') this.emit(parts, this.zstd.end());
    this.frame = undefined;
  }

  private open(parts: Buffer[], header: Buffer): void {
    this.frame = 'raw';
    this.emit(parts, [header]);
  }

  private emit(parts: Buffer[], out: Buffer[]): void {
    for (const part of out) {
      parts.push(part);
      this.bytesOut += part.length;
      this.totalOut += part.length;
    }
  }

  private newEpoch(): void {
    this.started = this.meter.now();
    this.loopMark = this.meter.mark();
    this.codecMs = 0;
    this.blockedMs = 0;
    this.bytesIn = 0;
    this.bytesOut = 0;
  }
}
