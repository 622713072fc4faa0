/**
 * The daemon's link to one worker: its kept ssh connection (host key pinned), more connections
 * when the worker's sshd refuses more channels, the probe of the worker's zstd relay, and
 * `openSession`, which runs a session's Nix command on the worker and hands back its channel,
 * write gate and codec. The worker's boot and deletion (daemon/worker.ts) use only this face.
 */
import type { Logger } from '../core/log.js';
import type { WorkerCompression } from '../core/config.js';
import { nixArgv, renderNixCommand, type NixCommand } from './nix-command.js';
import { describeSetting, epochFigures, LinkStart, type LevelPolicy } from './zstd-adapt.js';
import { AdaptiveZstdEncoder, processMeter } from './zstd-adaptive-encoder.js';
import { ZstdDecoder } from './zstd-codec.js';
import { relayFeatures, relayLevels, spareRelayHeader, ZSTD_RELAY_AWAIT, ZSTD_RELAY_CHECK, zstdRelayCommand } from './zstd-relay.js';
import {
  connectWorker,
  execChannel,
  isChannelRefusal,
  negotiatedCompression,
  runCommand,
  writeGateOf,
  type CommandResult,
  type SshClient,
  type WorkerChannel,
  type WorkerSshTarget,
} from './worker-connection.js';

export { HostKeyMismatch, type CommandResult, type WorkerChannel, type WorkerSshTarget } from './worker-connection.js';
export type { NixCommand } from './nix-command.js';
export { levelPolicyOf, UplinkStarts, type LevelPolicy } from './zstd-adapt.js';

export interface WorkerLinkOptions {
  log: Logger;
  /** The pool's compression: with "zstd", sessions go through the worker's relay once it answered. */
  compression: WorkerCompression;
  /** With "zstd": the levels of what the daemon sends up (and, adaptive, of what the relay sends down). */
  zstdLevels: LevelPolicy;
  /** Where sessions' uploads start, shared with the pool's other workers (else this link's own, from zstdLevels). */
  upStart?: LinkStart;
}

/** What the relay probe found: sessions are compressed, or why not. */
export type RelayProbe =
  { zstd: true; relay: string } | { zstd: false; code: number | null; why: string } | { zstd: false; notAsked: true };

/** Relays kept started ahead of sessions per worker (each a channel and an idle Python process there). */
export const SPARE_RELAYS = 2;

export class WorkerLink {
  /** More connections, opened when the worker's sshd refuses more channels on the others (MaxSessions). */
  private readonly extraClients: SshClient[] = [];
  private opening: Promise<SshClient> | undefined;
  /** Sessions go through the worker's zstd relay (compression "zstd", and the relay answered). */
  private zstd = false;
  /** What the worker's relay can do (an older relay answers its check without these words). */
  private relay = { adapt: false, await: false };
  /** Relays started ahead of sessions (zstd-relay.ts, ZSTD_RELAY_AWAIT), each in a channel of the kept connection. */
  private readonly spares: WorkerChannel[] = [];
  private sparesStarting = 0;
  private main: SshClient | undefined;
  /** Where the next session's upload starts (the last session's level, of this worker or the pool's last; the relay's download starts at the pool's start). */
  private readonly upStart: LinkStart;

  private constructor(
    private readonly target: WorkerSshTarget,
    client: SshClient,
    private readonly options: WorkerLinkOptions,
  ) {
    this.main = client;
    this.upStart = options.upStart ?? new LinkStart(options.zstdLevels);
  }

  /** Opens the kept connection (one attempt); throws `HostKeyMismatch` for a wrong host key. */
  static async open(target: WorkerSshTarget, timeoutMs: number, options: WorkerLinkOptions): Promise<WorkerLink> {
    return new WorkerLink(target, await connectWorker(target, timeoutMs), options);
  }

  /** The kept connection, while it is up (for diagnostics and tests). */
  get connection(): SshClient | undefined {
    return this.main;
  }

  /** Relays started ahead of sessions and not yet taken (each an open channel). */
  get spareRelays(): number {
    return this.spares.length;
  }

  /** The kept connection is up (not ended, not lost). */
  get connected(): boolean {
    return this.main !== undefined;
  }

  /** The SSH compression the kept connection negotiated (for the log). */
  get sshCompression(): string | undefined {
    return this.main ? negotiatedCompression(this.main) : undefined;
  }

  /**
   * Calls `listener` once when the kept connection fails or closes, unless `end()` came first.
   * The link is unusable from then on.
   */
  onLost(listener: (why: string) => void): void {
    const client = this.main;
    if (!client) return;
    const lost = (why: string): void => {
      if (this.main !== client) return;
      this.main = undefined;
      listener(why);
    };
    client.on('error', (err: Error) => lost(err.message));
    client.on('close', () => lost('closed'));
  }

  /** Ends every connection to the worker; the server keeps running. */
  end(): void {
    const client = this.main;
    // Forgotten before it ends, so that its close is not taken for a lost link.
    this.main = undefined;
    client?.end();
    for (const extra of this.extraClients.splice(0)) extra.end();
  }

  /** Runs a command on the kept connection and collects its output. */
  async run(command: string, timeoutMs: number): Promise<CommandResult> {
    if (!this.main) throw new Error('the worker connection is gone');
    return runCommand(this.main, command, timeoutMs);
  }

  /**
   * With compression "zstd", sessions run through the worker's relay: checks once that it runs
   * (Python, libzstd). Without it sessions go uncompressed; the caller says so loudly.
   */
  async probeRelay(): Promise<RelayProbe> {
    this.zstd = false;
    if (this.options.compression !== 'zstd') return { zstd: false, notAsked: true };
    const result = await this.run(ZSTD_RELAY_CHECK, 30_000);
    if (result.code === 0) {
      this.zstd = true;
      this.relay = relayFeatures(result.stdout);
      this.refillSpares();
      return { zstd: true, relay: result.stdout.trim() };
    }
    return { zstd: false, code: result.code, why: (result.stderr || result.stdout).trim().split('\n').pop()?.slice(0, 200) ?? '' };
  }

  /**
   * Runs a session's Nix command on the worker: as it is, or inside the zstd relay with the
   * daemon's ends of the two compressed streams.
   */
  async openSession(command: NixCommand): Promise<WorkerChannel> {
    const rendered = renderNixCommand(command);
    if (!this.zstd) return this.exec(rendered);
    const levels = this.options.zstdLevels;
    const adapt = levels.adaptive && this.relay.adapt ? relayLevels(levels) : undefined;
    const log = this.options.log;
    const encoder = new AdaptiveZstdEncoder(this.upStart.next(), processMeter, ({ from, to, epoch }) => {
      // What the adaptation saw, for whoever tunes it: one line per change, not per epoch.
      if (log.isLevelEnabled('debug'))
        log.debug({ from: describeSetting(from), to: describeSetting(to), epoch: epochFigures(epoch) }, 'upload compression changed');
    });
    const codec = { encoder, decoder: new ZstdDecoder() };
    const spare = this.spares.shift();
    this.refillSpares();
    if (spare) spare.channel.write(spareRelayHeader(nixArgv(command), adapt));
    let opened: WorkerChannel;
    try {
      opened = spare ?? (await this.exec(zstdRelayCommand(rendered, adapt)));
    } catch (err) {
      codec.encoder.close();
      throw err;
    }
    // However the session ends, the channel closes: the encoder's memory goes, the link learns its level.
    opened.channel.once('close', () => {
      codec.encoder.close();
      this.upStart.learn(codec.encoder.learnedLevel());
    });
    return { ...opened, codec };
  }

  /**
   * Keeps SPARE_RELAYS relays started ahead of sessions, so that a session need not wait for the
   * relay's Python to start (≈ 40 ms on a small machine). Only on the kept connection and only
   * while it takes another channel: a spare never opens a connection of its own.
   */
  private refillSpares(): void {
    const client = this.main;
    if (!client || !this.zstd || !this.relay.await) return;
    while (this.spares.length + this.sparesStarting < SPARE_RELAYS) {
      this.sparesStarting++;
      execChannel(client, ZSTD_RELAY_AWAIT).then(
        (channel) => {
          this.sparesStarting--;
          if (this.main !== client) {
            channel.close();
            return;
          }
          const spare = { channel, gate: writeGateOf(client) };
          channel.on('error', () => undefined);
          channel.once('close', () => {
            const index = this.spares.indexOf(spare);
            if (index >= 0) this.spares.splice(index, 1);
          });
          this.spares.push(spare);
        },
        (err: unknown) => {
          this.sparesStarting--;
          this.options.log.debug({ err: (err as Error).message }, 'no spare zstd relay');
        },
      );
    }
  }

  /**
   * Runs a command on the worker in a new channel of a kept connection. When every connection
   * refuses another channel (OpenSSH's MaxSessions, 10 by default), one more is opened.
   */
  private async exec(command: string): Promise<WorkerChannel> {
    for (const client of [this.main, ...this.extraClients]) {
      if (!client) continue;
      try {
        return { channel: await execChannel(client, command), gate: writeGateOf(client) };
      } catch (err) {
        if (!isChannelRefusal(err)) throw err;
      }
    }
    if (!this.main) throw new Error('the worker connection is gone');
    this.opening ??= connectWorker(this.target, 15_000).then(
      (client) => {
        this.opening = undefined;
        this.extraClients.push(client);
        client.on('error', () => undefined);
        client.on('close', () => {
          const index = this.extraClients.indexOf(client);
          if (index >= 0) this.extraClients.splice(index, 1);
        });
        this.options.log.info({ connections: 1 + this.extraClients.length }, 'the worker refused more channels; opened another connection');
        return client;
      },
      (err: unknown) => {
        this.opening = undefined;
        throw err;
      },
    );
    const client = await this.opening;
    return { channel: await execChannel(client, command), gate: writeGateOf(client) };
  }
}
