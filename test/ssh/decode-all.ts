import type { ZstdDecoder } from '../../src/ssh/zstd-codec.js';

/** All the output of `chunk` at once, through the decoder's bounded reads: for tests whose streams are small. */
export function decodeAll(decoder: ZstdDecoder, chunk: Buffer): Buffer[] {
  decoder.write(chunk);
  const parts: Buffer[] = [];
  for (let part = decoder.read(); part; part = decoder.read()) parts.push(part);
  return parts;
}
