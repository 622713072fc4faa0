import { randomBytes } from 'node:crypto';

/** Text that compresses about 3:1, not trivially: the kind of bytes a NAR of binaries and text holds. */
export function sample(bytes: number): Buffer {
  const words = ['nix', 'store', 'derivation', '/nix/store/', 'lib', '.so', 'ELF', '\0\0\0\0', 'x86_64'];
  const parts: Buffer[] = [];
  let n = 0;
  while (n < bytes) {
    const part = Math.random() < 0.05 ? randomBytes(8) : Buffer.from(words[Math.floor(Math.random() * words.length)] as string);
    parts.push(part);
    n += part.length;
  }
  return Buffer.concat(parts).subarray(0, bytes);
}
