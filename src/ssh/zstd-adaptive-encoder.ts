/**
 * The daemon's encoder of a session's upload: zstd at a fixed level, or at the level the
 * adaptation (zstd-adapt.ts) picks epoch by epoch, with pass-through frames below zstd's lowest.
 * Each change ends the frame and starts the next one with the new setting.
 */
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import {
  adaptiveWindowLog,
  describeSetting,
  EPOCH_BYTES,
  INCOMPRESSIBLE,
  nextSetting,
  SettingTally,
  TABLE_CAP_FROM_LEVEL,
  WARM_UP_BYTES,
  type DirectionSummary,
  type Epoch,
  type LevelPolicy,
  type RawState,
  type Setting,
} from './zstd-adapt.js';
import { fixedLevelOptions, ZstdEncoder, type ZstdEncoderOptions } from './zstd-codec.js';
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

/** zstd's settings for a level: a fixed level's own, or the adaptation's bounded window. */
export function encoderOptions(level: number, adaptive: boolean): ZstdEncoderOptions {
  if (!adaptive) return fixedLevelOptions(level);
  const windowLog = adaptiveWindowLog(level);
  return { level, windowLog, ...(level >= TABLE_CAP_FROM_LEVEL ? { tableLog: windowLog - 2 } : {}) };
}

export class AdaptiveZstdEncoder {
  private readonly zstd: ZstdEncoder;
  private setting: Setting;
  private frame: 'zstd' | 'raw' | undefined;
  private warmingUp: boolean;
  private readonly raw: RawState = { epochs: 0, incompressible: false };
  private readonly tally = new SettingTally();
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
  ) {
    this.warmingUp = policy.adaptive;
    this.setting = policy.adaptive ? 'raw' : policy.start;
    this.zstd = new ZstdEncoder(encoderOptions(policy.start, policy.adaptive));
    this.newEpoch();
  }

  push(chunk: Buffer): Buffer[] {
    const parts: Buffer[] = [];
    if (this.warmingUp && this.totalIn + chunk.length > WARM_UP_BYTES) {
      // Only the warm-up goes as it is: the rest of the chunk at the start level.
      const cut = WARM_UP_BYTES - this.totalIn;
      parts.push(...this.push(chunk.subarray(0, cut)));
      chunk = chunk.subarray(cut);
    }
    if (this.setting === 'raw') {
      if (this.frame === undefined) this.open(parts, RAW_FRAME_HEADER);
      this.emit(parts, rawBlocks(chunk));
    } else {
      this.frame = 'zstd';
      const t0 = this.meter.now();
      const out = this.zstd.push(chunk);
      this.codecMs += this.meter.now() - t0;
      this.emit(parts, out);
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
    if (this.frame === undefined && this.setting !== 'raw') this.frame = 'zstd'; // an empty stream is one empty frame
    this.closeFrame(parts);
    return parts;
  }

  /** The compressed bytes waited this long for the link (the pipe paused for it). */
  waited(ms: number): void {
    this.blockedMs += ms;
  }

  summary(): DirectionSummary {
    const settled = this.tally.settled(this.policy.adaptive ? WARM_UP_BYTES : 0);
    return { ...(settled !== undefined ? { settled } : {}), final: this.setting, bytesIn: this.totalIn, bytesOut: this.totalOut };
  }

  describe(): string {
    return describeSetting(this.setting);
  }

  private afterInput(parts: Buffer[]): void {
    if (this.warmingUp) {
      if (this.totalIn < WARM_UP_BYTES) return;
      this.warmingUp = false;
      this.switchTo(this.policy.start, parts);
      return;
    }
    if (this.bytesIn < EPOCH_BYTES) return;
    const epoch: Epoch = {
      wallMs: this.meter.now() - this.started,
      codecMs: this.codecMs,
      blockedMs: this.blockedMs,
      cpuSaturated: this.meter.saturatedSince(this.loopMark),
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
    };
    const next = nextSetting(this.setting, epoch, this.policy, this.raw);
    if (this.setting === 'raw') this.raw.epochs++;
    if (next === 'raw' && this.setting !== 'raw') {
      this.raw.epochs = 0;
      this.raw.incompressible = epoch.bytesOut / epoch.bytesIn >= INCOMPRESSIBLE;
    }
    if (next !== this.setting) this.switchTo(next, parts);
    else this.newEpoch();
  }

  private switchTo(next: Setting, parts: Buffer[]): void {
    this.closeFrame(parts);
    this.setting = next;
    if (next === 'raw') this.zstd.release();
    else this.zstd.configure(encoderOptions(next, this.policy.adaptive));
    this.newEpoch();
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
