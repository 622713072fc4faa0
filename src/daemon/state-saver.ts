/**
 * Writes the daemon's state file: at once when a worker's boot step must survive a restart, or
 * coalesced when sessions start and end in bursts.
 */
import type { Logger } from '../core/log.js';
import type { DeletionRecord } from './deletions.js';
import type { StateFile, WorkerRecord } from './state.js';

export class StateSaver {
  private scheduled = false;

  /** `current` answers what the file is to hold now: the workers' records and the pending deletes. */
  constructor(
    private readonly state: StateFile,
    private readonly current: () => { workers: WorkerRecord[]; deletions: DeletionRecord[] },
    private readonly log: Logger,
  ) {}

  save(): Promise<void> {
    const { workers, deletions } = this.current();
    this.state.data.workers = workers;
    this.state.data.deletions = deletions;
    return this.state.save();
  }

  /** One write for a burst of changes: on the next turn of the event loop. */
  schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.save().catch((err: unknown) => this.log.error({ err }, 'cannot write the state file'));
    });
  }
}
