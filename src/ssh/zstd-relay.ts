/**
 * The contract with the worker's end of compression "zstd" (worker/zstd-relay.py): its name and
 * place on the worker, where its source is in the package, and the command lines that run it.
 * The cloud-config (daemon/user-data.ts) and nixos/worker.nix install it; the worker link runs it.
 */

/** The relay's name on the worker's PATH (the cloud-config and nixos/worker.nix install it). */
export const ZSTD_RELAY = 'nix-hcloud-builder-zstd-relay';

/** Where the stock-image cloud-config writes the relay. */
export const ZSTD_RELAY_PATH = `/usr/local/bin/${ZSTD_RELAY}`;

/** The relay's source, from the package (worker/zstd-relay.py). */
export const ZSTD_RELAY_SOURCE = 'worker/zstd-relay.py';

/** The worker's command line: the relay around the Nix command, which renderNixCommand already quoted. */
export function zstdRelayCommand(renderedNixCommand: string): string {
  return `${ZSTD_RELAY} -- ${renderedNixCommand}`;
}

/** Answers 0 (and libzstd's version) on a worker whose relay can run. */
export const ZSTD_RELAY_CHECK = `${ZSTD_RELAY} --check`;
