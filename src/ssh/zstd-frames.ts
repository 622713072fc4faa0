/**
 * zstd frames written by hand, both valid parts of one zstd stream (RFC 8878), which any decoder
 * reads between the frames libzstd writes:
 * - pass-through ("raw") frames: the bytes as they are, in raw blocks; for data that does not
 *   compress, or when even zstd's fastest level would slow the session down. No CPU, 3 bytes of
 *   framing per 128 KiB.
 * - skippable frames: a report a decoder passes over (libzstd skips them); the worker's relay
 *   says in them at which level it sends (see ZstdDecoder's `reports`).
 * worker/zstd-relay.py writes the same bytes.
 */

/** A zstd frame's magic number, little-endian. */
const FRAME_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
/**
 * Frame header descriptor 0 (no content size, not single-segment, no checksum, no dictionary),
 * then the window descriptor: exponent 7, mantissa 1, a window of 2^17 + 2^14 bytes (the largest
 * block, 128 KiB, fits). The mantissa is what makes the header ours: libzstd writes a window as a
 * power of two (mantissa 0), so none of its frames starts with these bytes. (With mantissa 0 a
 * libzstd frame at a negative level, window 2^17, began exactly so, and the daemon's decoder
 * took it for pass-through.) Any decoder reads it as the zstd frame it is.
 */
export const RAW_FRAME_HEADER = Buffer.concat([FRAME_MAGIC, Buffer.from([0x00, ((17 - 10) << 3) | 1])]);
/** An empty raw block with the last-block bit: the frame's end. */
export const RAW_FRAME_END = Buffer.from([0x01, 0x00, 0x00]);
/** zstd's largest block. */
export const MAX_BLOCK = 128 * 1024;

/** The raw blocks (3-byte header: last = 0, type raw, size) that carry `data` as it is. */
export function rawBlocks(data: Buffer): Buffer[] {
  const parts: Buffer[] = [];
  for (let at = 0; at < data.length; at += MAX_BLOCK) {
    const block = data.subarray(at, at + MAX_BLOCK);
    const header = Buffer.allocUnsafe(3);
    header.writeUIntLE(block.length << 3, 0, 3);
    parts.push(header, block);
  }
  return parts;
}

/** Skippable frames use magics 0x184D2A50 to 0x184D2A5F; ours is the last. */
const SKIPPABLE_MAGIC = 0x184d2a5f;
/** What a report may hold: it is a line of JSON, not data. */
export const MAX_REPORT = 4096;

/** A skippable frame carrying `payload`. */
export function skippableFrame(payload: Buffer): Buffer {
  const header = Buffer.allocUnsafe(8);
  header.writeUInt32LE(SKIPPABLE_MAGIC, 0);
  header.writeUInt32LE(payload.length, 4);
  return Buffer.concat([header, payload]);
}

/**
 * At a frame boundary of `data`: the length of a skippable frame that starts there and its
 * payload, 'short' when `data` holds only a part of it, or undefined when what starts there is
 * not a skippable frame of ours (or is one too long to be a report).
 */
export function skippableAt(data: Buffer): { length: number; payload: Buffer } | 'short' | undefined {
  if (data.length < 8) return data.length > 0 && isMagicPrefix(data) ? 'short' : undefined;
  if (data.readUInt32LE(0) !== SKIPPABLE_MAGIC) return undefined;
  const size = data.readUInt32LE(4);
  if (size > MAX_REPORT) return undefined;
  if (data.length < 8 + size) return 'short';
  return { length: 8 + size, payload: data.subarray(8, 8 + size) };
}

function isMagicPrefix(data: Buffer): boolean {
  const magic = Buffer.allocUnsafe(4);
  magic.writeUInt32LE(SKIPPABLE_MAGIC, 0);
  return magic.subarray(0, Math.min(4, data.length)).equals(data.subarray(0, Math.min(4, data.length)));
}
