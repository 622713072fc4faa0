/**
 * The warm store slot one worker holds (pools with `store`): taken before its server's create,
 * given up when the boot goes cold elsewhere, checked once sshd answers, flushed before the
 * delete, and given back once the server is gone.
 */
import type { Logger } from '../core/log.js';
import type { WorkerLink } from '../ssh/worker-link.js';
import { STORE_MARKER } from './store-script.js';
import type { StoreLease, StoreVolume, StoreVolumes } from './store-volumes.js';

export class WorkerStoreSlot {
  private lease: StoreLease | undefined;

  /** `store` is the pool's store volumes; without it the slot stays empty. */
  constructor(
    private readonly store: StoreVolumes | undefined,
    private readonly log: Logger,
    private readonly say: (line: string) => void,
  ) {}

  /** The volume the server is to be created with (or has), if any. */
  get volume(): StoreVolume | undefined {
    return this.lease?.volume;
  }

  /** Takes the pool's lowest free slot and gets its volume ready (a boot's step 1). */
  async acquire(signal: AbortSignal): Promise<void> {
    if (this.store) this.lease = await this.store.acquire(signal, this.say);
  }

  /** Holds a slot claimed for an adopted server (after a restart). */
  hold(lease: StoreLease | undefined): void {
    this.lease = lease;
  }

  /**
   * The volume's location cannot take a server now (`tried` says what was tried): the slot goes
   * back and the boot goes on elsewhere with an empty store.
   */
  goCold(tried: string[]): void {
    const lease = this.lease;
    if (!lease?.volume) return;
    this.lease = undefined;
    lease.release();
    this.log.warn(
      { volume: lease.volume.name, location: lease.volume.location },
      "the store volume's location cannot take a server; booting with an empty store elsewhere",
    );
    this.say(
      `store volume ${lease.volume.name} is in ${lease.volume.location}, which cannot take a server now (${tried.join(', ')}); booting elsewhere with an empty store`,
    );
  }

  /**
   * A volume is billed whether it is used or not: say so loudly when the worker did not put its
   * store on it (the mount failed and the store started empty, or the image cannot use it: one
   * with neither cloud-init nor the NixOS worker image's store unit).
   */
  async check(link: Pick<WorkerLink, 'run'>, volumeId: number): Promise<void> {
    const result = await link.run(`test -e ${STORE_MARKER}`, 30_000);
    if (result.code === 0) return;
    const line = `store volume ${volumeId} is attached but this worker's store is not on it (no ${STORE_MARKER}): the build runs on an empty store while the volume is billed; the volume did not appear or could not be mounted (see the worker's boot log), or the image uses neither cloud-init nor nixos/worker.nix's store unit (a NixOS worker image built before it: rebuild it, or unset "store")`;
    this.log.warn({ volumeId }, line);
    this.say(line);
  }

  /**
   * A server's delete is a power cut for its volume: what the store wrote is flushed first (ext4's
   * journal and Nix's database keep it consistent without, but recent paths could be lost).
   */
  async flush(link: Pick<WorkerLink, 'run' | 'connected'> | undefined): Promise<void> {
    const volume = this.lease?.volume;
    if (!volume || !link?.connected) return;
    const result = await link.run('sync', 10_000).catch((err: unknown) => ({ code: -1, stderr: (err as Error).message }));
    if (result.code === 0) this.log.info({ volume: volume.name }, 'flushed the store volume before deleting the server');
    else this.log.warn({ volume: volume.name, code: result.code }, 'could not flush the store volume; deleting the server anyway');
  }

  /** The server is gone (Hetzner detached the volume): the slot is free again. */
  release(): void {
    this.lease?.release();
    this.lease = undefined;
  }
}
