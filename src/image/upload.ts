/**
 * The image upload as a library (the command line is `cli/image.ts`): put a raw disk image (e.g.
 * the NixOS worker image) into the Hetzner project as a labelled snapshot, the way
 * apricote/hcloud-upload-image does it, since the API has no upload endpoint:
 *
 *   1. create a throwaway project ssh key;
 *   2. create a temporary server (not started) with that key;
 *   3. enable the rescue system (linux64) and power the server on;
 *   4. ssh into the rescue system as root;
 *   5. stream the image into `dd of=/dev/sda` (through `zstd -d` there when it ends in `.zst`);
 *   6. shut the server down (ACPI); when it is not `off` within `shutdownTimeoutMs` (the OS may
 *      ignore the request), cut the power with `poweroff` (the image is synced already);
 *   7. snapshot its disk (`create_image`, type snapshot) with this run's temporary labels, wait
 *      until it is available, then give it the wanted labels (`PUT /images/{id}`);
 *   8. delete the temporary server and the key, and any snapshot of this run that still has the
 *      temporary labels, on every path (also on error and when the caller's signal aborts).
 *
 * Steps 4 and 5 are in `rescue.ts`, step 8 and `image cleanup` in `cleanup.ts`, the labels that
 * find the temporary resources in `temporary.ts`.
 *
 * The temporary server and key carry `managed-by=nix-hcloud-builder`,
 * `nix-hcloud-builder/role=image-upload` and `nix-hcloud-builder/upload-run=<run id>` (no
 * instance label, so no daemon's sweep touches them), which is what `image cleanup` looks for. So
 * does the snapshot until it is complete: a pool never picks a half-made snapshot or the snapshot
 * of a failed upload, and `image cleanup` finds one that a dead run left. The finished snapshot
 * carries the given labels plus `managed-by=nix-hcloud-builder`, never the role label, so a
 * cleanup never deletes it.
 *
 * `create_image` is never resent blindly (a second snapshot would be billed): the client resends
 * it only after a failure that proves it was not applied (429, 409 conflict, 503, no connection;
 * see `hcloud/retry.ts`). When its answer is lost (500, 502, 504, connection lost after sending,
 * timeout), the snapshot may exist all the same: it is looked up by the run label and adopted.
 * Should there ever be more than one snapshot of a run (a refused request that was applied after
 * all), the ones that are not the result keep the temporary labels and are deleted at step 8.
 */
import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { LABEL_MANAGED_BY, MANAGED_BY } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import { serverAddress } from '../hcloud/address.js';
import type { HcloudClient } from '../hcloud/client.js';
import { HcloudError } from '../hcloud/errors.js';
import { abortableSleep } from '../hcloud/retry.js';
import type { Action, Image } from '../hcloud/types.js';
import { generateKeyPair } from '../ssh/keys.js';
import type { SshClient } from '../ssh/worker-connection.js';
import { deleteTemporaries } from './cleanup.js';
import { connectRescue, sha256Fingerprint, streamImage, writeCommand } from './rescue.js';
import {
  abortError,
  findRunSnapshots,
  ImageUploadError,
  LABEL_ROLE,
  LABEL_UPLOAD_RUN,
  temporaryLabels,
  waitForImage,
} from './temporary.js';

export const DEFAULT_SERVER_TYPE: Record<Arch, string> = { x86: 'cx23', arm: 'cax11' };
export const DEFAULT_LOCATION = 'fsn1';
/** Any image boots the temporary server; the rescue system then overwrites its disk. */
const BASE_IMAGE = 'ubuntu-24.04';
const STEPS = 8;
/** After this long without reaching `off` on the shutdown request, the power is cut (the data is synced). */
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 2 * 60_000;

export type Arch = 'x86' | 'arm';

export interface UploadOptions {
  hcloud: HcloudClient;
  /** Path of a raw disk image, optionally zstd-compressed (name ends in `.zst`). */
  file: string;
  arch: Arch;
  /** Labels of the snapshot (`managed-by=nix-hcloud-builder` is added). */
  labels: Record<string, string>;
  serverType?: string;
  location?: string;
  description?: string;
  /** Port of the rescue system's sshd; 22 on Hetzner. */
  sshPort?: number;
  /** How long to wait for the rescue system's sshd; default 5 min. */
  sshTimeoutMs?: number;
  /** Pause between ssh connection attempts; default 2 s. */
  sshRetryMs?: number;
  /** Limit for each wait on actions (the snapshot of a big disk takes minutes); default 60 min. */
  actionTimeoutMs?: number;
  /**
   * How long the server may take to reach `off` after the (ACPI) shutdown request before its
   * power is cut with `poweroff`; default 2 min.
   */
  shutdownTimeoutMs?: number;
  /** Cancels the upload (the CLI's SIGINT); the temporary server and key are deleted all the same. */
  signal?: AbortSignal;
  log: Logger;
  /** One line per step, for the user. */
  print: (line: string) => void;
}

export interface UploadResult {
  image: Image;
  /** The temporary server's id (gone by now). */
  serverId: number | undefined;
}

/** Parses `k=v` label arguments (at least one; keys and values as the API allows them). */
export function parseLabels(args: string[]): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const arg of args) {
    const eq = arg.indexOf('=');
    if (eq <= 0) throw new ImageUploadError(`--label: expected KEY=VALUE, got ${JSON.stringify(arg)}`);
    const key = arg.slice(0, eq);
    const value = arg.slice(eq + 1);
    if (!/^([a-z0-9]([a-z0-9.-]*[a-z0-9])?\/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/.test(key)) {
      throw new ImageUploadError(`--label: ${JSON.stringify(key)} is not a valid label key`);
    }
    if (value !== '' && !/^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/.test(value)) {
      throw new ImageUploadError(`--label: ${JSON.stringify(value)} is not a valid label value`);
    }
    if (key === LABEL_ROLE || key === LABEL_UPLOAD_RUN) throw new ImageUploadError(`--label: ${key} is reserved for temporary resources`);
    labels[key] = value;
  }
  return labels;
}

export function parseArch(value: string | undefined): Arch {
  if (value === 'x86' || value === 'arm') return value;
  throw new ImageUploadError(`--arch: expected x86 or arm, got ${value === undefined ? 'nothing' : JSON.stringify(value)}`);
}

export async function uploadImage(o: UploadOptions): Promise<UploadResult> {
  const { hcloud, log, print } = o;
  const signal = o.signal ?? new AbortController().signal;
  let stat;
  try {
    stat = statSync(o.file);
  } catch (err) {
    throw new ImageUploadError(`cannot read the image ${o.file}: ${(err as Error).message}`);
  }
  if (!stat.isFile()) throw new ImageUploadError(`${o.file} is not a file`);
  const size = stat.size;
  const serverType = o.serverType ?? DEFAULT_SERVER_TYPE[o.arch];
  const location = o.location ?? DEFAULT_LOCATION;
  const actionTimeoutMs = o.actionTimeoutMs ?? 60 * 60_000;
  const run = randomBytes(4).toString('hex');
  const name = `nhb-image-upload-${run}`;
  const tempLabels = temporaryLabels(run);
  const step = (n: number, line: string, fields: Record<string, unknown> = {}): void => {
    log.info({ ...fields, run }, `image upload step ${n}/${STEPS}: ${line}`);
    print(`[${n}/${STEPS}] ${line}`);
  };
  const wait = (actions: Action[]): Promise<Action[]> => hcloud.waitForActions(actions, { signal, timeoutMs: actionTimeoutMs });

  let keyId: number | undefined;
  let serverId: number | undefined;
  let ssh: SshClient | undefined;
  /** create_image was sent and neither answered nor its snapshot found (yet). */
  let snapshotInFlight = false;
  try {
    // 1. A throwaway project ssh key: the rescue system authorizes only project keys.
    const login = generateKeyPair(name);
    const key = await hcloud.createSshKey({ name, public_key: login.publicKey, labels: tempLabels }, signal);
    keyId = key.id;
    step(1, `created temporary ssh key ${name} (id ${key.id})`, { sshKeyId: key.id });

    // 2. The temporary server, not started: its first boot is into the rescue system.
    const created = await hcloud.createServer(
      { name, server_type: serverType, location, image: BASE_IMAGE, start_after_create: false, ssh_keys: [name], labels: tempLabels },
      signal,
    );
    serverId = created.server.id;
    await wait([created.action, ...created.next_actions]);
    step(2, `created temporary server ${name} (id ${serverId}), ${serverType} in ${location}`, { serverId });

    // 3. Rescue system on the next boot, then boot.
    const rescue = await hcloud.enableRescue(serverId, { type: 'linux64', ssh_keys: [key.id] }, signal);
    await wait([rescue.action]);
    await wait([await hcloud.poweron(serverId, signal)]);
    const server = await hcloud.getServer(serverId, signal);
    const host = serverAddress(server);
    if (host === undefined) throw new ImageUploadError(`server ${serverId} has no public address`);
    step(3, `rescue system enabled, server powered on (${host})`);

    // 4. ssh in as root. The rescue system makes a new host key at every boot and the API does
    // not tell it, so this is the one connection of nix-hcloud-builder whose host key is NOT
    // pinned: it is accepted unseen (and logged). Only the image goes over it, no secret.
    let hostKey = '';
    ssh = await connectRescue({
      host,
      port: o.sshPort ?? 22,
      privateKey: login.privateKey,
      timeoutMs: o.sshTimeoutMs ?? 5 * 60_000,
      retryMs: o.sshRetryMs ?? 2000,
      signal,
      onHostKey: (k) => {
        hostKey = sha256Fingerprint(k);
      },
    });
    step(4, `logged in to the rescue system as root (host key ${hostKey}, not pinned: unknowable in advance)`, { hostKey });

    // 5. Stream the image through the ssh channel into /dev/sda.
    const started = Date.now();
    await streamImage(ssh, o.file, writeCommand(o.file), size, signal, (sent) => {
      log.debug({ sent, size }, 'image upload progress');
      print(`      ${mib(sent)} of ${mib(size)} sent`);
    });
    step(
      5,
      `wrote ${mib(size)}${o.file.endsWith('.zst') ? ' (zstd, decompressed on the server)' : ''} to /dev/sda in ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
    ssh.end();
    ssh = undefined;

    // 6. Shut down, so the disk is consistent for the snapshot; cut the power if that is ignored.
    const shutdownTimeoutMs = o.shutdownTimeoutMs ?? Math.min(actionTimeoutMs, DEFAULT_SHUTDOWN_TIMEOUT_MS);
    const how = await shutDown(hcloud, serverId, { signal, graceMs: shutdownTimeoutMs, actionTimeoutMs }, (why) => {
      step(6, `${why}: cutting the power (poweroff; the image is synced already)`, { fallback: 'poweroff' });
    });
    step(6, how === 'poweroff' ? 'server is off (powered off)' : 'server is off', { how });

    // 7. The snapshot, made with this run's temporary labels; the wanted labels come once it is
    // complete (see the top of this file).
    const description = o.description ?? `nix-hcloud-builder image ${o.file.split('/').pop() ?? o.file}`;
    let snapshotId: number;
    let snapshotAction: Action | undefined;
    snapshotInFlight = true;
    try {
      const snap = await hcloud.createImage(serverId, { type: 'snapshot', description, labels: tempLabels }, signal);
      snapshotId = snap.image.id;
      snapshotAction = snap.action;
    } catch (err) {
      // Not sent again (a second snapshot would be billed), but the request may have been carried
      // out all the same: look for its snapshot by the run label.
      if (signal.aborted) throw err;
      const found = await findRunSnapshots(hcloud, run, signal).catch((e: unknown) => {
        log.warn({ run, err: e }, 'image upload: looking for the snapshot of a failed create_image failed');
        return [];
      });
      const adopted = found[0];
      if (adopted === undefined) throw err;
      snapshotId = adopted.id;
      step(
        7,
        `the create_image answer was lost (${(err as Error).message}); found snapshot ${adopted.id} by the run label: adopted, not requested again`,
        {
          imageId: adopted.id,
          adopted: true,
        },
      );
    }
    snapshotInFlight = false;
    if (snapshotAction !== undefined) await wait([snapshotAction]);
    await waitForImage(hcloud, snapshotId, signal, actionTimeoutMs, 'available');
    const image = await hcloud.updateImage(snapshotId, { labels: { ...o.labels, [LABEL_MANAGED_BY]: MANAGED_BY } }, signal);
    step(7, `snapshot ${image.id} created (${description})`, { imageId: image.id });
    return { image, serverId };
  } catch (err) {
    // An abort shows up as whatever request or wait it cut short; say why instead.
    if (signal.aborted && err !== signal.reason) {
      const reason = abortError(signal);
      throw new ImageUploadError(reason.message, { cause: err });
    }
    throw err;
  } finally {
    ssh?.end();
    // 8. Delete the temporary server and key and any unfinished snapshot of this run whatever
    // happened, with signals of their own (the caller's may be aborted: this must still run).
    const r = await deleteTemporaries(hcloud, { serverId, keyId, run, snapshotInFlight, imageWaitMs: actionTimeoutMs }, log);
    if (r.problems.length === 0) {
      const snaps = r.snapshots.length === 0 ? '' : `, and the unfinished snapshot(s) ${r.snapshots.join(', ')} of this run`;
      step(8, `deleted the temporary server and ssh key${snaps}`, { deletedSnapshots: r.snapshots });
    } else {
      for (const p of r.problems) print(`cleanup: ${p}`);
      print('some temporary resources may be left: run "nix-hcloud-builder image cleanup"');
    }
  }
}

function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/**
 * Step 6: the ACPI shutdown request, then up to `graceMs` for the server to be `off`. Hetzner's
 * shutdown action only says that the request was delivered, and an OS may ignore it; then (or
 * when the action fails) the power is cut with `poweroff`, safe here since the image was synced
 * (`dd … && sync`). `onPowerOff` is told why before. Answers how the server went off.
 */
async function shutDown(
  hcloud: HcloudClient,
  serverId: number,
  o: { signal: AbortSignal; graceMs: number; actionTimeoutMs: number },
  onPowerOff: (why: string) => void,
): Promise<'shutdown' | 'poweroff'> {
  const { signal, graceMs, actionTimeoutMs } = o;
  const pollMs = hcloud.actionPollIntervalMs;
  const deadline = Date.now() + graceMs;
  let why = `server not off ${(graceMs / 1000).toFixed(1)} s after the shutdown request (ignored by the OS?)`;
  let failed = false;
  try {
    await hcloud.waitForActions([await hcloud.shutdown(serverId, signal)], { signal, timeoutMs: graceMs });
  } catch (err) {
    if (!(err instanceof HcloudError && (err.code === 'action_wait_timeout' || err.action !== undefined))) throw err;
    if (err.action !== undefined) {
      failed = true;
      why = `the shutdown action failed (${err.message})`;
    }
  }
  while (!failed) {
    if ((await hcloud.getServer(serverId, signal)).status === 'off') return 'shutdown';
    const left = deadline - Date.now();
    if (left <= 0) break;
    await abortableSleep(Math.min(pollMs, left), signal);
  }
  onPowerOff(why);
  await hcloud.waitForActions([await hcloud.poweroff(serverId, signal)], { signal, timeoutMs: actionTimeoutMs });
  const offBy = Date.now() + actionTimeoutMs;
  while ((await hcloud.getServer(serverId, signal)).status !== 'off') {
    if (Date.now() > offBy)
      throw new ImageUploadError(`server ${serverId} is not off ${Math.round(actionTimeoutMs / 1000)} s after poweroff`);
    await abortableSleep(pollMs, signal);
  }
  return 'poweroff';
}
