/**
 * The adaptive level (`compressionLevel: "auto"`), in the spirit of `zstd --adapt`: each
 * direction of a session looks back over an epoch (EPOCH_BYTES of input; in the daemon EPOCH_MIN_MS at
 * least) and asks what limited it.
 * - The link: the compressed bytes waited for the link (the channel's window full, the socket
 *   full) a good part of the time, and the codec has room. Bytes are what costs: one level up.
 *   (What waits may also be the far end, a store writing files: the codec's room keeps a level
 *   that would only burn CPU there from climbing.)
 * - The codec: it was busy (its own time, or the process's CPU saturated) while the link waited
 *   for nothing. One level down, to zstd's fast negative levels, then to pass-through frames.
 * - Neither (the source: a store reading its disk, a protocol's requests and answers): hold.
 * Data that does not compress (≥ 0.97 of its size) goes through as it is, with a try at the
 * lowest level now and then. Changes take effect at a frame boundary: concatenated frames are one
 * valid stream for the decoder. worker/zstd-relay.py runs the same rules (a test runs both on the
 * same cases).
 */
import { isDeepStrictEqual } from 'node:util';

/** A level of zstd's, or pass-through frames. */
export type Setting = number | 'raw';

export interface LevelPolicy {
  /** The level after the warm-up (and the only one when not adaptive). */
  start: number;
  min: number;
  max: number;
  adaptive: boolean;
}

/** The policy of a pool's `compressionLevel` ("auto" or a fixed level) and its bounds. */
export function levelPolicyOf(level: number | 'auto', min: number, max: number, autoStart: number): LevelPolicy {
  if (level === 'auto') return { start: Math.min(Math.max(autoStart, min), max), min, max, adaptive: true };
  return { start: level, min: level, max: level, adaptive: false };
}

/** How much input makes an epoch: large enough to measure, small enough to follow a link. */
export const EPOCH_BYTES = 1024 * 1024;
/**
 * And, in the daemon, how long at least: a link's buffers (the socket's, the SSH window) take
 * output in bursts (a window adjust frees 1 MiB at once), and an epoch inside such a burst saw the
 * codec busy and the link waiting for nothing, on a link that is the limit. 200 ms spans several
 * bursts on a 40 Mbit/s uplink. (The relay's epochs stay bytes only: what its writes wait for is
 * mostly the local store, and longer epochs made it climb there.)
 */
export const EPOCH_MIN_MS = 200;
/**
 * What a direction's link takes before anything waits for it: the peer's SSH window (OpenSSH's
 * 2 MiB towards a worker, the daemon's 2 MiB towards the relay), the queues behind it (the
 * daemon's, 1.25 MiB) and the sockets' buffers. A session's first epochs fill it at the codec's
 * pace, so a busy codec there says nothing of the link: a step down counts only epochs that end
 * after the direction's output passed it (countsAsCodecBound). (On the bench's home uplink, a
 * session that started at the level the last one had learned stepped down in its first 400 ms,
 * each time, and climbed back: a new frame per step.)
 */
export const LINK_FILL_BYTES = 4 * 1024 * 1024;
/**
 * Adaptive only: the first bytes go through as they are. They are the protocol's handshake and
 * small requests, which gain next to nothing; a direction that never carries more (the requests
 * of a download) never allocates zstd's tables.
 */
export const WARM_UP_BYTES = 64 * 1024;
/**
 * Adaptive only: the first bytes at a level after pass-through (the warm-up, a stretch of data that
 * did not compress) go as complete one-shot frames, each sized to itself, and show whether the data
 * compresses before the session's encoder allocates its window and tables: a session of random data
 * never does.
 */
export const PROBE_BYTES = 256 * 1024;
/** Share of an epoch spent waiting for the link that makes the link the limit. */
export const LINK_BOUND = 0.25;
/**
 * Share of an epoch spent waiting for the link that makes it all the limit: three levels up at
 * once. Each level is a new frame without the history of the last, so a slow link should reach its
 * level in a few epochs, not in nine.
 */
export const LINK_WAITS_MOST = 0.75;
export const BIG_STEP = 3;
/** Above this share of an epoch in the codec, a level goes no higher, whatever waits. */
export const CODEC_ROOM = 0.3;
/** Share of an epoch spent in the codec, when the link waited for nothing, that makes it the limit. */
export const CODEC_BOUND = 0.5;
/** At most this share of waiting for the link still lets the codec be the limit. */
export const LINK_IDLE = 0.05;
/** Compressed to at least this share of its size: does not compress. */
export const INCOMPRESSIBLE = 0.97;
/** Epochs of pass-through between tries of the lowest level. */
export const RAW_RETRY_EPOCHS = 16;

/** What one epoch measured. Times in milliseconds. */
export interface Epoch {
  wallMs: number;
  /** Time in the compressor. */
  codecMs: number;
  /** Time the compressed bytes waited for the link. */
  blockedMs: number;
  /** The process's CPU was saturated (the daemon's event loop busy nearly all the epoch). */
  cpuSaturated: boolean;
  bytesIn: number;
  bytesOut: number;
}

/**
 * What the epochs before said: pass-through so far (how many epochs, and whether the data did not
 * compress, else the codec was too slow), and whether the codec was the limit in the last one.
 */
export interface AdaptHistory {
  rawEpochs: number;
  incompressible: boolean;
  codecBound: boolean;
}

/** An epoch's figures as a log line gives them: milliseconds and bytes, rounded. */
export function epochFigures(epoch: Epoch): Record<keyof Epoch, number | boolean> {
  return {
    wallMs: Math.round(epoch.wallMs),
    codecMs: Math.round(epoch.codecMs),
    blockedMs: Math.round(epoch.blockedMs),
    cpuSaturated: epoch.cpuSaturated,
    bytesIn: epoch.bytesIn,
    bytesOut: epoch.bytesOut,
  };
}

/** A new direction's history. */
export const FRESH_HISTORY: Readonly<AdaptHistory> = { rawEpochs: 0, incompressible: false, codecBound: false };

/** The codec was the limit: busy (or the process's CPU saturated) while the link waited for nothing. */
export function codecBound(epoch: Epoch): boolean {
  const wall = Math.max(epoch.wallMs, 1e-3);
  return (epoch.cpuSaturated || epoch.codecMs / wall >= CODEC_BOUND) && epoch.blockedMs / wall < LINK_IDLE;
}

/**
 * What the next epoch remembers of this one (AdaptHistory.codecBound): the codec was the limit,
 * and the direction's output so far (`totalOut`, this epoch's included) passed LINK_FILL_BYTES.
 */
export function countsAsCodecBound(epoch: Epoch, totalOut: number): boolean {
  return codecBound(epoch) && totalOut >= LINK_FILL_BYTES;
}

/**
 * The setting for the next epoch. A step down needs the codec to be the limit two epochs in a
 * row: each change starts a frame without the last one's history (a restart every 8 MiB costs 4 %
 * more bytes at level 12), and one epoch of a busy codec may be a burst into freed buffers.
 */
export function nextSetting(setting: Setting, epoch: Epoch, policy: LevelPolicy, history: AdaptHistory): Setting {
  if (!policy.adaptive) return setting;
  const wall = Math.max(epoch.wallMs, 1e-3);
  const linkBound = epoch.blockedMs / wall >= LINK_BOUND && epoch.codecMs / wall <= CODEC_ROOM;
  if (setting === 'raw') return (linkBound && !history.incompressible) || history.rawEpochs >= RAW_RETRY_EPOCHS ? policy.min : 'raw';
  if (epoch.bytesIn > 0 && epoch.bytesOut / epoch.bytesIn >= INCOMPRESSIBLE) return 'raw';
  if (linkBound) return Math.min(step(setting, epoch.blockedMs / wall >= LINK_WAITS_MOST ? BIG_STEP : 1), policy.max);
  if (codecBound(epoch) && history.codecBound) return setting > policy.min ? Math.max(step(setting, -1), policy.min) : 'raw';
  return setting;
}

/** Levels up or down; zstd's level 0 means its default (3), so the levels go from -1 to 1. */
function step(level: number, by: number): number {
  const index = (level > 0 ? level - 1 : level) + by;
  return index >= 0 ? index + 1 : index;
}

/**
 * zstd's window (2^n bytes) at a level, when adaptive: the level rises where the link is slow, so
 * memory follows the level instead of every session holding zstd's default 2–8 MiB window. The
 * decoder at the other end holds one such window too.
 */
export function adaptiveWindowLog(level: number): number {
  if (level <= 0) return 17;
  if (level <= 2) return 18;
  if (level <= 5) return 19;
  if (level <= 9) return 20;
  return LONG_WINDOW_LOG_ADAPTIVE;
}

/**
 * From level 10 the link is slow enough that bytes are worth memory: an 8 MiB window with zstd's
 * long-distance matching (store paths repeat libraries and headers far apart), ≈ 25 MB per such
 * session (window, input buffer, tables capped at the window). A 2 MiB window at level 12 sent as
 * many bytes as level 3 with zstd's own 2 MiB window.
 */
export const LONG_WINDOW_FROM_LEVEL_ADAPTIVE = 10;
export const LONG_WINDOW_LOG_ADAPTIVE = 23;

/**
 * The daemon's upload, the user's slow and costly direction, looks back further: 16 MiB (on the
 * bench's payload at level 12: 1.6 % fewer bytes than 8 MiB, 3.5 % fewer than level 9's 1 MiB),
 * for at most LONG_WINDOW_SESSIONS sessions of the daemon at once (≈ 34 MB each); the others go
 * no higher than level 9. The worker's relay keeps LONG_WINDOW_LOG_ADAPTIVE: the daemon decodes
 * what it sends, and the download is the fast direction.
 */
export const UPLOAD_LONG_WINDOW_LOG = 24;
export const LONG_WINDOW_SESSIONS = 4;
/**
 * With a long window the upload's hash table gets 2^21 entries, not the cap's 2^20 (zstd's row
 * match finder, levels 5–12, has no chain table): 0.8 % fewer bytes on the bench's payload at
 * levels 10–12 for ≈ 5 MB more per session (2^22: 1.3 % for ≈ 16 MB, and 40 % more codec time).
 */
export const UPLOAD_LONG_TABLE_LOG = 21;

/**
 * Where the next session over a link starts: where the last session's adaptation left it, but
 * never below the pool's start (the user's uplink to a worker does not change between sessions,
 * so each need not climb again: climbing is slow and costs bytes, while a level too high for the
 * CPU comes down by itself, and the start level is cheap everywhere). A session that went
 * to pass-through because its data did not compress says nothing of the link and leaves it as it
 * was.
 */
export class LinkStart {
  private level: number;

  constructor(private readonly policy: LevelPolicy) {
    this.level = policy.start;
  }

  /** The policy for the next session: the pool's, starting where the last one ended. */
  next(): LevelPolicy {
    return { ...this.policy, start: this.level };
  }

  /** What a session ended on (undefined: it never left its warm-up and probe, or its data did not compress). */
  learn(level: number | undefined): void {
    if (level !== undefined && this.policy.adaptive) this.level = Math.min(Math.max(level, this.policy.start), this.policy.max);
  }
}

/**
 * The LinkStart of each pool, kept across its workers: the next worker is reached over the same
 * uplink, so its first session need not climb from the start level again (an idle worker is
 * deleted within minutes, and a new one boots for the next build). A pool whose levels changed
 * (a reload) starts afresh.
 */
export class UplinkStarts {
  private readonly byPool = new Map<string, { policy: LevelPolicy; start: LinkStart }>();

  for(pool: string, policy: LevelPolicy): LinkStart {
    const kept = this.byPool.get(pool);
    if (kept && isDeepStrictEqual(kept.policy, policy)) return kept.start;
    const start = new LinkStart(policy);
    this.byPool.set(pool, { policy, start });
    return start;
  }
}

/** From this level up zstd's hash and chain tables outgrow the window; adaptive caps each at the window's size (2^(windowLog-2) entries of 4 bytes), at most 4 MiB (the upload's long window: UPLOAD_LONG_TABLE_LOG). */
export const TABLE_CAP_FROM_LEVEL = 6;

/** A setting as the log and `status` say it. */
export function describeSetting(setting: Setting): string {
  return setting === 'raw' ? 'pass-through' : `level ${setting}`;
}

/** What a direction did over a session: where it ended, and the setting that carried most of its input. */
export interface DirectionSummary {
  /** The setting that carried most input bytes (undefined: no input). */
  settled?: Setting;
  final: Setting;
  bytesIn: number;
  bytesOut: number;
}

/** What a session's directions settled on, as the log and `status` say it; a direction that carried only its warm-up is left out. */
export interface SettledLevels {
  up?: string;
  down?: string;
}

/** The relay's report (a line of JSON in a skippable frame): its setting now and the one that carried most. */
export function parseRelayReport(payload: Buffer | undefined): DirectionSummary | undefined {
  if (!payload) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(payload.toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const { settled, final, in: bytesIn, out: bytesOut } = value as Record<string, unknown>;
  const isSetting = (v: unknown): v is Setting => v === 'raw' || (typeof v === 'number' && Number.isInteger(v));
  if (!isSetting(final) || typeof bytesIn !== 'number' || typeof bytesOut !== 'number') return undefined;
  return { ...(isSetting(settled) ? { settled } : {}), final, bytesIn, bytesOut };
}

/**
 * The upload's summary is the daemon's own, at the session's end; the download's is the relay's
 * last report, sent when its setting changed (and at a stream's proper end, which Nix's sessions
 * rarely reach): without a count yet, the setting it changed to is the one it holds.
 */
export function settledLevels(up: DirectionSummary | undefined, down: DirectionSummary | undefined): SettledLevels {
  const downSetting = down?.settled ?? down?.final;
  return {
    ...(up?.settled !== undefined ? { up: describeSetting(up.settled) } : {}),
    ...(downSetting !== undefined ? { down: describeSetting(downSetting) } : {}),
  };
}

/** Input bytes per setting, for the summary. */
export class SettingTally {
  private readonly bytes = new Map<Setting, number>();

  add(setting: Setting, bytes: number): void {
    this.bytes.set(setting, (this.bytes.get(setting) ?? 0) + bytes);
  }

  /** The setting that carried most, warm-up aside; undefined when the warm-up was all there was. */
  settled(warmUpBytes: number): Setting | undefined {
    let best: Setting | undefined;
    let most = 0;
    for (const [setting, bytes] of this.bytes) {
      const counted = setting === 'raw' ? bytes - warmUpBytes : bytes;
      if (counted > most) [best, most] = [setting, counted];
    }
    return best;
  }
}
