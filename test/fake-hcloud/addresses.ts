// The loopback addresses of real servers, 127.0.0.<firstAddress…254>: each is locked machine-wide
// (a lock file per address:port, so that parallel test runs never share one) and probed before
// use (an sshd of the host listening on *:PORT makes them all unusable).

import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createTcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Addresses (address:port) held by any fake cloud of this process. */
const addressesInUse = new Set<string>();
/** Lock files shared by every process on this machine, so that parallel test runs never share an address. */
const LOCK_DIR = join(tmpdir(), 'fake-hcloud-addresses');

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes address:port for this process; false when another live process holds it. */
function lockAddress(key: string): boolean {
  if (addressesInUse.has(key)) return false;
  mkdirSync(LOCK_DIR, { recursive: true, mode: 0o1777 });
  const file = join(LOCK_DIR, key.replace(':', '_'));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(file, String(process.pid), { flag: 'wx' });
      addressesInUse.add(key);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      let holder = NaN;
      try {
        holder = Number(readFileSync(file, 'utf8'));
      } catch {
        continue; // released meanwhile
      }
      if (Number.isInteger(holder) && holder > 0 && pidAlive(holder)) return false;
      rmSync(file, { force: true }); // left by a dead process
    }
  }
  return false;
}

function unlockAddress(key: string): void {
  if (!addressesInUse.delete(key)) return;
  const file = join(LOCK_DIR, key.replace(':', '_'));
  try {
    if (readFileSync(file, 'utf8') === String(process.pid)) rmSync(file, { force: true });
  } catch {
    // already gone
  }
}

/** Last-resort cleanup (process exit): releases every address this process holds. */
export function releaseAllAddressesSync(): void {
  for (const key of [...addressesInUse]) unlockAddress(key);
}

/** The addresses of one cloud's servers: handed out round-robin, freed ones reused. */
export class AddressPool {
  private nextOffset = 0;

  constructor(private readonly o: { firstAddress: number; sshPort: number; realServers: boolean; log: (line: string) => void }) {}

  /** A free address other than `taken` (the live servers'), locked when servers are real; null when none is left. */
  async allocate(taken: Set<string>): Promise<string | null> {
    const first = this.o.firstAddress;
    const span = 255 - first;
    for (let i = 0; i < span; i++) {
      const offset = (this.nextOffset + i) % span;
      const address = `127.0.0.${first + offset}`;
      const key = `${address}:${this.o.sshPort}`;
      if (taken.has(address)) continue;
      // Addresses of API-only servers are just numbers; real ones are locked machine-wide.
      if (!this.o.realServers) {
        this.nextOffset = (offset + 1) % span;
        return address;
      }
      if (!lockAddress(key)) continue;
      if (!(await this.portFree(address))) {
        unlockAddress(key);
        this.o.log(`${key} is in use (another sshd listening on *:${this.o.sshPort}?): address skipped`);
        continue;
      }
      this.nextOffset = (offset + 1) % span;
      return address;
    }
    return null;
  }

  release(address: string): void {
    unlockAddress(`${address}:${this.o.sshPort}`);
  }

  private portFree(address: string): Promise<boolean> {
    return new Promise((resolveFree) => {
      const probe = createTcpServer();
      probe.once('error', () => resolveFree(false));
      probe.listen({ host: address, port: this.o.sshPort, exclusive: true }, () => {
        probe.close(() => resolveFree(true));
      });
    });
  }
}
