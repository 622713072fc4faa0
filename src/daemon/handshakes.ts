/**
 * What each pool's workers answered in Nix's handshake, per image and protocol, kept in the state
 * file: an early session (ssh/early-session.ts) answers the next client from it while a worker boots.
 */
import type { ImageRef } from '../core/config.js';
import { parseHandshakeRecord, type HandshakeProtocol, type HandshakeRecord } from '../ssh/nix-handshake.js';

export interface HandshakeEntry {
  pool: string;
  /** The pool's image as configured (JSON): a new image starts without a record. */
  image: string;
  record: HandshakeRecord;
}

/** The records of a state file, its entries that are not (an edited or older file) dropped. */
export function parseHandshakeEntries(value: unknown): HandshakeEntry[] {
  if (!Array.isArray(value)) return [];
  const entries: HandshakeEntry[] = [];
  for (const x of value as Partial<HandshakeEntry>[]) {
    const record = parseHandshakeRecord(x?.record);
    if (record && typeof x.pool === 'string' && typeof x.image === 'string') entries.push({ pool: x.pool, image: x.image, record });
  }
  return entries;
}

export function imageKey(image: ImageRef): string {
  return JSON.stringify(image);
}

/** One pool's view of the records; `save` persists the state file. */
export class PoolHandshakes {
  private readonly image: string;

  constructor(
    private readonly entries: HandshakeEntry[],
    private readonly pool: string,
    image: ImageRef,
    private readonly save: () => void,
  ) {
    this.image = imageKey(image);
  }

  private find(protocol: HandshakeProtocol): HandshakeEntry | undefined {
    return this.entries.find((e) => e.pool === this.pool && e.image === this.image && e.record.protocol === protocol);
  }

  get(protocol: HandshakeProtocol): HandshakeRecord | undefined {
    return this.find(protocol)?.record;
  }

  set(record: HandshakeRecord): void {
    const entry = this.find(record.protocol);
    if (entry) entry.record = record;
    else this.entries.push({ pool: this.pool, image: this.image, record });
    this.save();
  }
}
