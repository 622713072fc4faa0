/**
 * The contract with the worker's end of compression "zstd" (worker/zstd-relay.py): its name and
 * place on the worker, where its source is in the package, and the command lines that run it.
 * The cloud-config (daemon/user-data.ts) and nixos/worker.nix install it; the worker link runs it.
 */
import type { LevelPolicy } from './zstd-adapt.js';

/** The relay's name on the worker's PATH (the cloud-config and nixos/worker.nix install it). */
export const ZSTD_RELAY = 'nix-hcloud-builder-zstd-relay';

/** Where the stock-image cloud-config writes the relay. */
export const ZSTD_RELAY_PATH = `/usr/local/bin/${ZSTD_RELAY}`;

/** The relay's source, from the package (worker/zstd-relay.py). */
export const ZSTD_RELAY_SOURCE = 'worker/zstd-relay.py';

/**
 * The worker's command line: the relay around the Nix command, which renderNixCommand already
 * quoted; with `adapt`, the relay adapts its level between the bounds as the daemon does (else it
 * sends at its fixed level 3: the worker's downlink is the fast one).
 */
export function zstdRelayCommand(renderedNixCommand: string, adapt?: LevelPolicy): string {
  return [ZSTD_RELAY, ...levelArgs(adapt), '--', renderedNixCommand].join(' ');
}

/**
 * The levels of the relay's download under an adaptive pool: down for the worker's CPU and to
 * pass-through, never above the start. What its writes wait for is mostly the local store writing
 * files, not the link, and there a higher level only costs time (measured: the download at levels
 * 5–8 made 0.86–1.01× of direct's throughput, at 3 0.97–1.26×). Nor does it start lower: starting
 * at level 1 gained nothing measurable on the bench's office and loopback links and sent 11 % more
 * bytes, which a home downlink pays for (bench/README.md, Uplink).
 */
export function relayLevels(pool: LevelPolicy): LevelPolicy {
  return { ...pool, max: pool.start };
}

function levelArgs(adapt: LevelPolicy | undefined): string[] {
  return adapt ? ['--level', String(adapt.start), '--adapt', `${adapt.min}:${adapt.max}`] : [];
}

/**
 * A relay started ahead of its session (a spare): Python and libzstd loaded, it waits for one line
 * on its stdin, the JSON array of its arguments (as zstdRelayCommand's, the Nix command as words),
 * and then runs as if started with them. A session that takes it starts without waiting for Python.
 */
export const ZSTD_RELAY_AWAIT = `${ZSTD_RELAY} --await`;

/** The first line a spare relay reads: its arguments. */
export function spareRelayHeader(nixArgv: string[], adapt?: LevelPolicy): Buffer {
  return Buffer.from(`${JSON.stringify([...levelArgs(adapt), '--', ...nixArgv])}\n`);
}

/** What the relay's check answers besides libzstd's version: the features the daemon may use. */
export const RELAY_ADAPTS = 'adapt';
export const RELAY_AWAITS = 'await';

export function relayFeatures(checkAnswer: string): { adapt: boolean; await: boolean } {
  const words = checkAnswer.trim().split(/\s+/);
  return { adapt: words.includes(RELAY_ADAPTS), await: words.includes(RELAY_AWAITS) };
}

/** Answers 0 (and libzstd's version) on a worker whose relay can run. */
export const ZSTD_RELAY_CHECK = `${ZSTD_RELAY} --check`;
