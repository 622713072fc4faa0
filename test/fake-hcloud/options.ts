// What a fake cloud is started with (`FakeCloud.start`), and the same with every default filled in.

import { resolve } from 'node:path';
import type { LinkProfile } from '../rig/link.js';

/** With the `link` option, each server's sshd listens this far above `sshPort` (the relay on `sshPort`). */
export const LINK_INNER_PORT_OFFSET = 10_000;

export interface FakeCloudOptions {
  /** The only accepted Bearer token; others get 401 unauthorized. */
  token: string;
  /** Per-server folders go in dataDir/servers/<id>/, per-volume folders in dataDir/volumes/<id>/. */
  dataDir: string;
  /** API listen host, default 127.0.0.1 (the port is random). */
  host?: string;
  /** Default true: each running server is a real sshd; false = API only. */
  realServers?: boolean;
  /** Port each server's sshd listens on, default 22. */
  sshPort?: number;
  /**
   * An emulated uplink in front of every server (cloud-init boots): its sshd listens on
   * `sshPort + LINK_INNER_PORT_OFFSET` and a relay with this profile on `sshPort`, so that
   * everything that reaches the server's ssh port (the daemon, direct OpenSSH) crosses the link.
   */
  link?: LinkProfile;
  /** Each server's sshd MaxSessions (channels per connection), default 64. */
  maxSessions?: number;
  /** Servers get 127.0.0.<firstAddress + k>, default 10 (wraps before 255, reuses freed ones). */
  firstAddress?: number;
  /** create -> "running" and create_server action success, default 1000. */
  bootDelayMs?: number;
  /** After sshd is up, wait this long, then run the cloud-config runcmd, default 500. */
  readyDelayMs?: number;
  /** delete_server action duration, default 200. */
  deleteDelayMs?: number;
  /** Default true: validate every JSON answer against openapi.json (mismatches go to schemaErrors and stderr). */
  validateResponses?: boolean;
  /**
   * The day whose API the fake answers as: a property that openapi.json marks deprecated with a
   * removal date ("will be removed after the 1 July 2026") is left out of every answer from the
   * day after. Default: now. An earlier day gives the API of before.
   */
  apiDate?: Date;
  /** Rate limit bucket: size (default 3600) and refill per second (default 1). */
  rateLimit?: { limit?: number; refillPerSecond?: number };
  /** Most live servers the project may have (403 resource_limit_exceeded past it); default: no limit. */
  serverLimit?: number;
  /** Write one line per request to the log. Default false. */
  logRequests?: boolean;
  /** Where log lines go (schema mismatches, server events, requests). Default: stderr. */
  log?: (line: string) => void;
  /**
   * The servers run Nix from this Debian root (test/rig/nix-roots.sh: another version than the
   * machine's) instead of the machine's own. Default: the machine's.
   */
  nixRoot?: string;
  /** How servers of a NixOS worker image (`addImage({ worker: 'nixos' })`) boot. */
  nixosWorker?: {
    /** NHB_FETCH_ATTEMPTS for fetch-keys.sh (one a second), default 10. */
    fetchAttempts?: number;
    /** NHB_SWAP_MIB for zpool-expand.sh, default 32. */
    swapMib?: number;
    /** The image's size as written to the disk, default 64 (MiB). */
    imageMib?: number;
    /** The server's disk (a sparse file), default 256 (MiB). */
    diskMib?: number;
  };
}

/** The options with their defaults; `rateLimit` goes to the rate limit alone. */
export type ResolvedOptions = Required<Omit<FakeCloudOptions, 'rateLimit' | 'serverLimit' | 'log' | 'nixosWorker' | 'link' | 'nixRoot'>> & {
  serverLimit: number;
  nixRoot: string | undefined;
  link: LinkProfile | undefined;
  log: (line: string) => void;
  nixosWorker: Required<NonNullable<FakeCloudOptions['nixosWorker']>>;
};

export function resolveOptions(opts: FakeCloudOptions): ResolvedOptions {
  return {
    token: opts.token,
    dataDir: resolve(opts.dataDir),
    host: opts.host ?? '127.0.0.1',
    realServers: opts.realServers ?? true,
    sshPort: opts.sshPort ?? 22,
    maxSessions: opts.maxSessions ?? 64,
    firstAddress: opts.firstAddress ?? 10,
    bootDelayMs: opts.bootDelayMs ?? 1000,
    readyDelayMs: opts.readyDelayMs ?? 500,
    deleteDelayMs: opts.deleteDelayMs ?? 200,
    validateResponses: opts.validateResponses ?? true,
    apiDate: opts.apiDate ?? new Date(),
    serverLimit: opts.serverLimit ?? Number.POSITIVE_INFINITY,
    link: opts.link,
    nixRoot: opts.nixRoot,
    logRequests: opts.logRequests ?? false,
    log: opts.log ?? ((line: string) => process.stderr.write(`fake-hcloud: ${line}\n`)),
    nixosWorker: {
      fetchAttempts: opts.nixosWorker?.fetchAttempts ?? 10,
      swapMib: opts.nixosWorker?.swapMib ?? 32,
      imageMib: opts.nixosWorker?.imageMib ?? 64,
      diskMib: opts.nixosWorker?.diskMib ?? 256,
    },
  };
}
