// The fake cloud's clock: what happens later (a boot, an action's end), on timers that belong to a
// server (cleared when it is deleted) or to the cloud; none fires once the cloud stops.

export class Timers {
  /** The cloud is stopping: no timer fires any more, and the rooms start nothing new. */
  stopping = false;
  private readonly global = new Set<NodeJS.Timeout>();

  /** Runs `fn` in `ms`, on the timers of `owner` (a server) or the cloud's. */
  later(owner: { timers: Set<NodeJS.Timeout> } | null, ms: number, fn: () => void): void {
    const set = owner ? owner.timers : this.global;
    const t = setTimeout(() => {
      set.delete(t);
      if (!this.stopping) fn();
    }, ms);
    t.unref();
    set.add(t);
  }

  /** The cloud stops: its own timers are cleared (the servers' are cleared with the servers). */
  stop(): void {
    this.stopping = true;
    for (const t of this.global) clearTimeout(t);
    this.global.clear();
  }
}
