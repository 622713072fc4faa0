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
  const levels = adapt ? `--level ${adapt.start} --adapt ${adapt.min}:${adapt.max} ` : '';
  return `${ZSTD_RELAY} ${levels}-- ${renderedNixCommand}`;
}

/** The word a relay that adapts its level adds to its check's answer. */
export const RELAY_ADAPTS = 'adapt';

export function relayCanAdapt(checkAnswer: string): boolean {
  return checkAnswer.trim().split(/\s+/).includes(RELAY_ADAPTS);
}

/** Answers 0 (and libzstd's version) on a worker whose relay can run. */
export const ZSTD_RELAY_CHECK = `${ZSTD_RELAY} --check`;
