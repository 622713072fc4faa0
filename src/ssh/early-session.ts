/**
 * A Nix session whose worker is not there yet: the endpoint answers the client's opening itself,
 * from what a worker of that pool answered before (a HandshakeRecord), so the client's Nix gets on
 * with other work while the worker boots. When the worker is there, `splice` joins it in without a
 * seam:
 *   1. replay to it every byte the client sent so far (its version, features, the obsolete words,
 *      SetOptions, and whatever followed);
 *   2. read the worker's answers to the phases said early and check them against what the client
 *      was told (negotiated version, negotiated features, trust), dropping them;
 *   3. relay the phases that were not said early (no record, or one that lacks what this client
 *      needs), reading them on the way, so every session leaves a complete record;
 *   4. hand both streams back positioned right after the opening: the caller pipes from there on.
 * A worker that answers differently ends the session with HandshakeMismatch (which carries the
 * worker's new record, so the next session is answered right).
 *
 * Once Nix has its answer, its build hook prints `# accept` and from then on drops whatever it
 * reads on the session's stderr that is not its own log format (NixOS/nix
 * `derivation-building-goal.cc`, `handleChildOutput`). So while an early-answered worker-protocol
 * session waits, the boot's progress lines travel inside the protocol instead, as STDERR_NEXT log
 * messages of the client's next operation (`progressSink`): the hook's RemoteStore prints them
 * as log messages, which Nix shows. The serve protocol has no such messages; there the lines stay
 * on stderr, which Nix reads as the build's log.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import {
  encodeStderrError,
  encodeStderrLast,
  encodeStderrNext,
  encodeStrings,
  encodeU64,
  expectMagic,
  FEATURE_DISABLE_SET_OPTIONS,
  intersectFeatures,
  mergeRecords,
  minorOf,
  readClientPostHandshake,
  readSetOptionsBody,
  readStderrStream,
  SERVE_MAGIC_1,
  SERVE_MAGIC_2,
  WireEnd,
  WireError,
  WireReader,
  WORKER_MAGIC_1,
  WORKER_MAGIC_2,
  WOP_SET_OPTIONS,
  type HandshakeProtocol,
  type HandshakeRecord,
} from './nix-handshake.js';
import { answerDifference, HandshakeMismatch, infoAnswer, recordOf, WorkerRefused, type Facts, type Phase } from './handshake-check.js';

export { HandshakeMismatch, WorkerRefused } from './handshake-check.js';

/** Client bytes held before the worker is there; past this the client is paused (SSH window). */
export const HOLD_LIMIT = 1024 * 1024;

export interface SpliceResult {
  /** What the worker answered (merged with the record it was answered from); undefined when the opening could not be read whole. */
  record: HandshakeRecord | undefined;
  /** True when `record` differs from the record the session was answered from. */
  changed: boolean;
  /** Log lines the worker sent in the phases said early (the client never sees them). */
  messages: string[];
  /** True when the worker's stream (stdout) had ended by then: `leftover` holds its last bytes. */
  workerEnded: boolean;
  /** The worker's bytes past the opening when its stream had ended already (otherwise they are back on its readable side). */
  leftover: Buffer;
}

export class EarlySession extends EventEmitter {
  private readonly captured: Buffer[] = [];
  private capturedBytes = 0;
  private readonly fromClient = new WireReader();
  private readonly fromWorker = new WireReader();
  /** Phases answered from the record, in order. */
  private readonly said: Phase[] = [];
  /** What the worker says, as read at splice time. */
  private readonly worker: Facts = {};
  private readonly client: Facts = {};
  private upstream: Duplex | undefined;
  private upstreamEnded = false;
  private clientEnded = false;
  private checked = false;
  private saidChecked = false;
  private complete = false;
  private readonly messages: string[] = [];
  private spliced!: () => void;
  private readonly whenSpliced = new Promise<void>((resolve) => (this.spliced = resolve));
  private readonly done: Promise<void>;
  /** Why the opening was not answered whole before the worker came (for logs); undefined while all went to plan. */
  stoppedBecause: string | undefined;
  /** Resolves when the session has answered all it can without the worker: true when that is the whole opening. */
  readonly answered: Promise<boolean>;
  private answeredAll!: (whole: boolean) => void;

  constructor(
    private readonly clientStream: Duplex,
    readonly protocol: HandshakeProtocol,
    private readonly record: HandshakeRecord | undefined,
    private readonly holdLimit = HOLD_LIMIT,
  ) {
    super();
    this.answered = new Promise((resolve) => (this.answeredAll = resolve));
    clientStream.on('data', this.onClientData);
    clientStream.on('end', this.onClientEnd);
    clientStream.on('error', this.onClientEnd);
    this.done = this.run();
    // A failure is reported by splice(); until then, nobody may be listening.
    this.done.catch(() => undefined);
  }

  /** Bytes the client sent that the worker has not been given yet. */
  get heldBytes(): number {
    return this.capturedBytes;
  }

  private readonly onClientData = (chunk: Buffer): void => {
    if (this.upstream) this.upstream.write(chunk);
    else {
      this.captured.push(chunk);
      this.capturedBytes += chunk.length;
      if (this.capturedBytes >= this.holdLimit) this.clientStream.pause();
    }
    this.fromClient.push(chunk);
    this.emit('client-data', this.capturedBytes);
  };

  private readonly onClientEnd = (): void => {
    this.clientEnded = true;
    this.fromClient.end();
    this.forwardEnd();
  };

  /**
   * The client's end reaches the worker only once the answers said early are read: a nix-daemon
   * whose stdin hangs up stops at once, without answering what it was sent.
   */
  private forwardEnd(): void {
    if (this.clientEnded && this.upstream && this.saidChecked) this.upstream.end();
  }

  private readonly onWorkerData = (chunk: Buffer): void => this.fromWorker.push(chunk);
  private readonly onWorkerEnd = (): void => {
    this.upstreamEnded = true;
    this.fromWorker.end();
  };

  /**
   * Where a session's progress lines go: inside the protocol while the client was answered early
   * and waits for the worker (see the module comment), else to `toStderr`. Lines that come while
   * it is still open whether the opening will be answered whole are held until that is known.
   */
  progressSink(toStderr: (line: string) => void): (line: string) => void {
    if (this.protocol !== 'worker' || !this.record) return toStderr;
    let held: string[] | undefined = [];
    void this.answered.then(() => {
      const lines = held ?? [];
      held = undefined;
      for (const line of lines) this.tell(line, toStderr);
    });
    return (line) => {
      if (held) held.push(line);
      else this.tell(line, toStderr);
    };
  }

  private tell(line: string, toStderr: (line: string) => void): void {
    // Once spliced, the worker's stream owns the client's side.
    if (this.upstream === undefined && this.answeredFromRecord()) this.clientStream.write(encodeStderrNext(line));
    else toStderr(line);
  }

  /** True when the client got the whole worker-protocol opening from the record (and can still be written to). */
  private answeredFromRecord(): boolean {
    return (
      this.protocol === 'worker' && this.record !== undefined && this.complete && this.said.includes('info') && this.clientStream.writable
    );
  }

  /**
   * Ends a session whose worker protocol opening the client got from the record with `message`
   * as the error of its next operation: after an early answer, Nix reads the session's stderr
   * into the build log only, and may drop it. False when that is not possible (serve protocol,
   * or an opening not answered whole from the record).
   */
  refuseNextOperation(message: string): boolean {
    if (!this.answeredFromRecord() || this.client.clientVersion === undefined) return false;
    this.clientStream.write(encodeStderrError(message, Math.min(this.client.clientVersion, (this.record as HandshakeRecord).version)));
    return true;
  }

  /**
   * Joins the worker in (see the module comment). Resolves once the opening is through, with
   * both streams paused and positioned after it; rejects with HandshakeMismatch or WorkerRefused
   * when the session cannot go on.
   */
  async splice(upstream: Duplex): Promise<SpliceResult> {
    if (this.upstream) throw new Error('EarlySession: spliced twice');
    this.upstream = upstream;
    upstream.on('data', this.onWorkerData);
    upstream.on('end', this.onWorkerEnd);
    upstream.on('error', this.onWorkerEnd);
    const replay = Buffer.concat(this.captured);
    this.captured.length = 0;
    this.capturedBytes = 0;
    if (replay.length > 0) upstream.write(replay);
    this.clientStream.resume();
    this.spliced();
    try {
      await this.done;
    } finally {
      this.detach();
    }
    const record = this.complete ? this.freshRecord() : undefined;
    const merged = record && mergeRecords(this.record, record);
    return {
      record: merged,
      changed: merged !== undefined && JSON.stringify(merged) !== JSON.stringify(this.record),
      messages: this.messages,
      workerEnded: this.upstreamEnded,
      leftover: this.upstreamEnded ? this.fromWorker.rest() : Buffer.alloc(0),
    };
  }

  private detach(): void {
    this.clientStream.removeListener('data', this.onClientData);
    this.clientStream.removeListener('end', this.onClientEnd);
    this.clientStream.removeListener('error', this.onClientEnd);
    this.clientStream.pause();
    const upstream = this.upstream as Duplex;
    upstream.removeListener('data', this.onWorkerData);
    upstream.removeListener('end', this.onWorkerEnd);
    upstream.removeListener('error', this.onWorkerEnd);
    upstream.pause();
    if (!this.upstreamEnded) {
      const rest = this.fromWorker.rest();
      if (rest.length > 0) upstream.unshift(rest);
    }
  }

  private async run(): Promise<void> {
    try {
      if (this.protocol === 'serve') await this.serveOpening();
      else await this.workerOpening();
      this.openingAnswered();
    } catch (err) {
      if (!(err instanceof WireError || err instanceof WireEnd)) throw err;
      // Not the opening as expected (or a stream ended): the rest flows as it is, unread.
      if (!this.complete) this.stoppedBecause ??= err.message;
    }
    this.answeredAll(this.complete && this.upstream === undefined);
    await this.needWorker();
  }

  /** The client has all it needs to go on (what may follow is optional). */
  private openingAnswered(): void {
    this.complete = true;
    this.answeredAll(this.upstream === undefined);
  }

  /** Waits for the worker, then checks (and drops) its answers to the phases said early. */
  private async needWorker(): Promise<void> {
    if (this.checked) return;
    this.answeredAll(false);
    await this.whenSpliced;
    this.checked = true;
    try {
      for (const phase of this.said) await this.check(phase);
    } catch (err) {
      if (err instanceof WireEnd) throw new WorkerRefused('the worker closed the session during its handshake');
      if (err instanceof WireError) throw new WorkerRefused(`the worker's handshake is not Nix's protocol: ${err.message}`);
      throw err;
    } finally {
      this.saidChecked = true;
      this.forwardEnd();
    }
  }

  /** Answers a phase from the record before the worker is there; false when the worker must. */
  private say(phase: Phase, bytes: Buffer | undefined, why: string): boolean {
    if (this.upstream || bytes === undefined) {
      this.stoppedBecause ??= this.upstream ? undefined : why;
      return false;
    }
    this.clientStream.write(bytes);
    this.said.push(phase);
    return true;
  }

  /** Relays the worker's answer to a phase to the client, reading it on the way. */
  private async relay(phase: Phase): Promise<void> {
    await this.needWorker();
    const taken = this.fromWorker.tap();
    let refusal: string | undefined;
    try {
      refusal = await this.readWorkerPhase(phase);
    } finally {
      const bytes = taken();
      if (bytes.length > 0) this.clientStream.write(bytes);
    }
    // The client got the worker's own refusal: what follows is not an opening any more.
    if (refusal !== undefined) throw new WireError(refusal);
  }

  private async phase(phase: Phase, answer: Buffer | undefined, why: string): Promise<void> {
    if (!this.say(phase, answer, why)) await this.relay(phase);
  }

  private negotiated(): number {
    return Math.min(this.client.clientVersion ?? 0, this.worker.version ?? (this.record?.version as number));
  }

  private async serveOpening(): Promise<void> {
    const record = this.record?.protocol === 'serve' ? this.record : undefined;
    await expectMagic(this.fromClient, SERVE_MAGIC_1, 'client');
    await this.phase('hello', record && encodeU64(SERVE_MAGIC_2, record.version), "no record of this pool's worker");
    this.client.clientVersion = await this.fromClient.u64();
  }

  private async workerOpening(): Promise<void> {
    const record = this.record?.protocol === 'worker' ? this.record : undefined;
    const c = this.fromClient;
    await expectMagic(c, WORKER_MAGIC_1, 'client');
    await this.phase('hello', record && encodeU64(WORKER_MAGIC_2, record.version), "no record of this pool's worker");
    this.client.clientVersion = await c.u64();
    let features: string[] = [];
    if (minorOf(this.negotiated()) >= 38) {
      this.client.clientFeatures = await c.strings();
      await this.phase('features', record?.features ? encodeStrings(record.features) : undefined, 'the record has no feature set');
      features = intersectFeatures(this.client.clientFeatures, (this.worker.features ?? record?.features) as string[]);
    }
    const n = this.negotiated();
    await readClientPostHandshake(c, n);
    await this.phase('info', record && infoAnswer(record, n), 'the record lacks the version string or trust status');
    this.openingAnswered();
    if (features.includes(FEATURE_DISABLE_SET_OPTIONS)) return;
    // Over ssh-ng no SetOptions comes (see nix-handshake.ts); a socket client sends it first.
    // The worker's coming ends the wait: a SetOptions not answered by then flows to it as it is.
    const setOptions = this.answerSetOptions(n);
    setOptions.catch(() => undefined);
    await Promise.race([setOptions, this.whenSpliced]);
  }

  private async answerSetOptions(negotiated: number): Promise<void> {
    if ((await this.fromClient.u64()) !== WOP_SET_OPTIONS) return;
    await readSetOptionsBody(this.fromClient, negotiated);
    if (!this.upstream) await this.phase('set-options', encodeStderrLast(), '');
  }

  /** Reads the worker's answer to a phase into `this.worker`; the worker's refusal, if it refused. */
  private async readWorkerPhase(phase: Phase): Promise<string | undefined> {
    const w = this.fromWorker;
    switch (phase) {
      case 'hello':
        await expectMagic(w, this.protocol === 'serve' ? SERVE_MAGIC_2 : WORKER_MAGIC_2, 'worker');
        this.worker.version = await w.u64();
        return undefined;
      case 'features':
        this.worker.features = (await w.strings()).sort();
        return undefined;
      case 'info': {
        const n = this.negotiated();
        this.worker.nixVersion = minorOf(n) >= 33 ? await w.string() : null;
        this.worker.trust = minorOf(n) >= 35 ? await w.u64() : null;
        const startup = await readStderrStream(w, n);
        this.worker.startupMessages = startup.messages;
        return startup.error === undefined ? undefined : `the worker refused the session: ${startup.error}`;
      }
      case 'set-options': {
        const answer = await readStderrStream(w, this.negotiated());
        this.messages.push(...answer.messages);
        return answer.error === undefined ? undefined : `the worker refused the client's settings: ${answer.error}`;
      }
    }
  }

  /** Reads the worker's answer to a phase said early and compares it with what the client was told. */
  private async check(phase: Phase): Promise<void> {
    const refusal = await this.readWorkerPhase(phase);
    if (phase === 'info') this.messages.push(...(this.worker.startupMessages ?? []));
    if (refusal !== undefined) throw new WorkerRefused(refusal);
    const differs = answerDifference(phase, this.record as HandshakeRecord, this.worker, this.client, this.negotiated());
    if (differs !== undefined)
      throw new HandshakeMismatch(
        `the worker's Nix answered the handshake differently than recorded (${differs}); the record is updated, so the next session is answered right`,
        this.freshRecord(),
      );
  }

  /** The record of what the worker said, as far as this session saw it. */
  private freshRecord(): HandshakeRecord {
    return recordOf(this.protocol, this.worker);
  }
}
