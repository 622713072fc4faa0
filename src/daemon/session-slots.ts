/** Per worker, the sessions running plus the sessions promised a slot: the pool alone counts them. */
export class SessionSlots<W> {
  private readonly counts = new Map<W, number>();

  of(worker: W): number {
    return this.counts.get(worker) ?? 0;
  }

  /** Promises a slot on `worker` to a session (one waiting for the boot, or one about to start). */
  reserve(worker: W): void {
    this.counts.set(worker, this.of(worker) + 1);
  }

  /** Gives a slot on `worker` back; answers how many remain. */
  release(worker: W): number {
    const left = this.of(worker) - 1;
    this.counts.set(worker, left);
    return left;
  }

  /** The worker is gone. */
  forget(worker: W): void {
    this.counts.delete(worker);
  }
}
