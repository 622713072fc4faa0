/**
 * What a boot waits for once its server exists, each polled until the boot's signal aborts: an
 * address, sshd answering with the pinned host key, and readyCommand (or the reason the worker's
 * setup wrote when a step it cannot do without failed); then the zstd relay's probe.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { SETUP_FAILED_MARKER } from '../core/config.js';
import type { Logger } from '../core/log.js';
import { serverAddress } from '../hcloud/address.js';
import type { HcloudClient } from '../hcloud/client.js';
import { HostKeyMismatch, type WorkerLink } from '../ssh/worker-link.js';
import { BootError } from './boot-error.js';

/** The server's address once it runs: IPv4 when it has one, else IPv6. */
export async function waitForAddress(hcloud: Pick<HcloudClient, 'getServer'>, id: number, signal: AbortSignal): Promise<string> {
  for (;;) {
    const server = await hcloud.getServer(id, signal);
    if (server.status === 'running') {
      const ip = serverAddress(server);
      if (ip) return ip;
    }
    await sleep(500, undefined, { signal });
  }
}

/** Opens links until one answers; a host key other than the pinned one fails the boot at once. */
export async function waitForSsh(open: () => Promise<WorkerLink>, log: Logger, signal: AbortSignal): Promise<WorkerLink> {
  let lastError = '';
  for (let attempt = 1; ; attempt++) {
    signal.throwIfAborted();
    try {
      return await open();
    } catch (err) {
      if (err instanceof HostKeyMismatch) throw new BootError(err.message);
      const message = (err as Error).message;
      if (message !== lastError) log.debug({ attempt, err: message }, 'sshd not reachable yet');
      lastError = message;
    }
    // Short first retries: sshd usually comes up within a second of "running".
    await sleep(Math.min(100 * attempt, 2000), undefined, { signal });
  }
}

/** Runs `readyCommand` until it succeeds (disk expansion done, Nix up). */
export async function waitForReady(link: Pick<WorkerLink, 'run'>, readyCommand: string, log: Logger, signal: AbortSignal): Promise<void> {
  let last = '';
  for (let attempt = 1; ; attempt++) {
    signal.throwIfAborted();
    const result = await link.run(readyCommand, 60_000);
    if (result.code === 0) return;
    // A setup step the worker cannot do without failed (the cloud-config wrote why): it never
    // becomes ready, so the boot fails now, with that reason, instead of at bootTimeout.
    const failed = await link.run(`cat ${SETUP_FAILED_MARKER} 2>/dev/null`, 60_000);
    const reason = failed.code === 0 ? failed.stdout.trim().split('\n')[0]?.slice(0, 500) : undefined;
    if (reason) throw new BootError(`the worker's setup failed: ${reason}`);
    last = (result.stderr || result.stdout).trim().split('\n').pop() ?? '';
    if (attempt === 1 || attempt % 40 === 0)
      log.info({ attempt, code: result.code, output: last.slice(0, 200) }, 'waiting for readyCommand');
    await sleep(250, undefined, { signal });
  }
}

/** Probes the worker's zstd relay (with compression "zstd"); without it sessions go uncompressed, said loudly. */
export async function checkZstdRelay(link: Pick<WorkerLink, 'probeRelay'>, log: Logger, say: (line: string) => void): Promise<void> {
  const probe = await link.probeRelay();
  if ('notAsked' in probe) return;
  if (probe.zstd) {
    log.info({ relay: probe.relay }, 'zstd relay answers');
    return;
  }
  const line = `compression "zstd": the worker's relay does not run (status ${probe.code}${probe.why ? `: ${probe.why}` : ''}); its sessions go uncompressed`;
  log.warn({ code: probe.code }, line);
  say(line);
}
