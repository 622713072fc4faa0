import { frameWindow } from '../../src/ssh/zstd-codec.js';
import { RAW_FRAME_HEADER } from '../../src/ssh/zstd-frames.js';

export interface FrameInfo {
  kind: 'zstd' | 'skippable';
  /** The bytes the frame takes in the stream. */
  length: number;
  /** A zstd frame's window (bytes), from its header. */
  window?: number;
  /** A zstd frame whose window is its content (the size in its header). */
  singleSegment?: boolean;
  /** Our pass-through frame (it starts with RAW_FRAME_HEADER). */
  ours?: boolean;
}

/** The frames of a zstd stream, walked by their headers and block headers (RFC 8878, 3.1). */
export function frameList(stream: Buffer): FrameInfo[] {
  const frames: FrameInfo[] = [];
  for (let at = 0; at < stream.length;) {
    const magic = stream.readUInt32LE(at);
    if (magic >>> 4 === 0x184d2a5) {
      const length = 8 + stream.readUInt32LE(at + 4);
      frames.push({ kind: 'skippable', length });
      at += length;
      continue;
    }
    if (magic !== 0xfd2fb528) throw new Error(`no frame starts at ${at}`);
    const descriptor = stream[at + 4] as number;
    const singleSegment = (descriptor & 0x20) !== 0;
    const sizeFlag = descriptor >> 6;
    const sizeBytes = sizeFlag === 0 ? (singleSegment ? 1 : 0) : ([1, 2, 4, 8][sizeFlag] as number);
    let end = at + 5 + (singleSegment ? 0 : 1) + ([0, 1, 2, 4][descriptor & 3] as number) + sizeBytes;
    for (let last = false; !last;) {
      const block = stream.readUIntLE(end, 3);
      last = (block & 1) === 1;
      end += 3 + (((block >> 1) & 3) === 1 ? 1 : block >>> 3); // an RLE block holds one byte
    }
    if (descriptor & 4) end += 4; // the checksum
    frames.push({
      kind: 'zstd',
      length: end - at,
      window: frameWindow(stream.subarray(at)) as number,
      singleSegment,
      ours: stream.subarray(at, at + RAW_FRAME_HEADER.length).equals(RAW_FRAME_HEADER),
    });
    at = end;
  }
  return frames;
}
