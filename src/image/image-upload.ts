/**
 * `image upload` and `image cleanup`: put a raw disk image (e.g. the NixOS worker image) into the
 * Hetzner project as a labelled snapshot, the way apricote/hcloud-upload-image does it, since the
 * API has no upload endpoint:
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
 *      temporary labels, on every path (also on error and SIGINT).
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
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, statSync } from 'node:fs';
import ssh2 from 'ssh2';
import { HcloudClient } from '../hcloud/client.js';
import { HcloudError, isNotFound } from '../hcloud/errors.js';
import type { Action, Image, Server } from '../hcloud/types.js';
import { generateKeyPair } from '../ssh/keys.js';
import { LABEL_MANAGED_BY, MANAGED_BY } from '../core/labels.js';
import type { Logger } from '../core/log.js';
import { abortableSleep } from '../hcloud/retry.js';
import { execChannel } from '../ssh/worker-connection.js';

export const LABEL_ROLE = 'nix-hcloud-builder/role';
export const ROLE_IMAGE_UPLOAD = 'image-upload';
/** One upload run: lets step 8 find a server, key or snapshot whose create answer was lost. */
export const LABEL_UPLOAD_RUN = 'nix-hcloud-builder/upload-run';

/**
 * Selector for every temporary server and key of any upload and every snapshot an upload did not
 * finish (what `image cleanup` deletes).
 */
export function uploadLeftoverSelector(): string {
  return `${LABEL_MANAGED_BY}=${MANAGED_BY},${LABEL_ROLE}=${ROLE_IMAGE_UPLOAD}`;
}

/** Selector for the temporary resources of one upload run. */
export function uploadRunSelector(run: string): string {
  return `${uploadLeftoverSelector()},${LABEL_UPLOAD_RUN}=${run}`;
}

export const DEFAULT_SERVER_TYPE: Record<Arch, string> = { x86: 'cx23', arm: 'cax11' };
export const DEFAULT_LOCATION = 'fsn1';
/** Any image boots the temporary server; the rescue system then overwrites its disk. */
const BASE_IMAGE = 'ubuntu-24.04';
const STEPS = 8;
/** After this long without reaching `off` on the shutdown request, the power is cut (the data is synced). */
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 2 * 60_000;
/** Budget of step 8 for deleting the temporary server and key. */
const CLEANUP_TIMEOUT_MS = 5 * 60_000;

export type Arch = 'x86' | 'arm';

export class ImageUploadError extends Error {
  override name = 'ImageUploadError';
}

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
  /** Cancels the upload (SIGINT); the temporary server and key are deleted all the same. */
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

function sha256Fingerprint(key: Buffer): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
}

/** The shell command run in the rescue system: decompress there (when .zst), write, flush. */
export function writeCommand(file: string): string {
  const source = file.endsWith('.zst') ? 'zstd -d -c | ' : '';
  return `bash -o pipefail -c '${source}dd of=/dev/sda bs=4M && sync'`;
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
  const tempLabels = { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_ROLE]: ROLE_IMAGE_UPLOAD, [LABEL_UPLOAD_RUN]: run };
  const step = (n: number, line: string, fields: Record<string, unknown> = {}): void => {
    log.info({ ...fields, run }, `image upload step ${n}/${STEPS}: ${line}`);
    print(`[${n}/${STEPS}] ${line}`);
  };
  const wait = (actions: Action[]): Promise<Action[]> => hcloud.waitForActions(actions, { signal, timeoutMs: actionTimeoutMs });

  let keyId: number | undefined;
  let serverId: number | undefined;
  let ssh: ssh2.Client | undefined;
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
    step(3, `rescue system enabled, server powered on (${host})`);

    // 4. ssh in as root. The rescue system makes a new host key at every boot and the API does
    // not tell it, so this is the one connection of nix-hcloud-builder whose host key is NOT
    // pinned: it is accepted unseen (and logged). Only the image goes over it, no secret.
    let hostKey = '';
    ssh = await connectRescue(host, o.sshPort ?? 22, login.privateKey, o.sshTimeoutMs ?? 5 * 60_000, o.sshRetryMs ?? 2000, signal, (k) => {
      hostKey = sha256Fingerprint(k);
    });
    step(4, `logged in to the rescue system as root (host key ${hostKey}, not pinned: unknowable in advance)`, { hostKey });

    // 5. Stream the image through the ssh channel into /dev/sda.
    const started = Date.now();
    await streamImage(ssh, o.file, writeCommand(o.file), size, signal, (sent) => {
      log.debug({ sent, size }, 'image upload progress');
      print(`      ${mib(sent)} of ${mib(size)} sent`);
    });
    step(5, `wrote ${mib(size)}${o.file.endsWith('.zst') ? ' (zstd, decompressed on the server)' : ''} to /dev/sda in ${((Date.now() - started) / 1000).toFixed(1)} s`);
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
      step(7, `the create_image answer was lost (${(err as Error).message}); found snapshot ${adopted.id} by the run label: adopted, not requested again`, {
        imageId: adopted.id,
        adopted: true,
      });
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

function serverAddress(server: Server): string {
  const v4 = server.public_net.ipv4?.ip;
  if (v4) return v4;
  const v6 = server.public_net.ipv6?.ip;
  if (v6) return v6.replace(/\/\d+$/, '').replace(/::$/, '::1');
  throw new ImageUploadError(`server ${server.id} has no public address`);
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
    if (Date.now() > offBy) throw new ImageUploadError(`server ${serverId} is not off ${Math.round(actionTimeoutMs / 1000)} s after poweroff`);
    await abortableSleep(pollMs, signal);
  }
  return 'poweroff';
}

/** The snapshots that still carry the temporary labels of `run`, oldest first. */
async function findRunSnapshots(hcloud: HcloudClient, run: string, signal: AbortSignal): Promise<Image[]> {
  const found = await hcloud.listImages({ type: 'snapshot', labelSelector: uploadRunSelector(run) }, signal);
  return found.sort((a, b) => a.id - b.id);
}

/**
 * Polls a snapshot until it is no longer `creating` (at most `timeoutMs`). With `want`
 * `available`, any other end state is an error.
 */
async function waitForImage(hcloud: HcloudClient, id: number, signal: AbortSignal, timeoutMs: number, want: 'available' | 'settled'): Promise<Image> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const image = await hcloud.getImage(id, signal);
    if (image.status !== 'creating') {
      if (want === 'available' && image.status !== 'available') throw new ImageUploadError(`snapshot ${id} is ${image.status}, not available`);
      return image;
    }
    if (Date.now() > deadline) throw new ImageUploadError(`snapshot ${id} is still being created after ${Math.round(timeoutMs / 1000)} s`);
    await abortableSleep(hcloud.actionPollIntervalMs, signal);
  }
}

/**
 * Step 8: deletes this run's unfinished snapshots (first: a server cannot be deleted while its
 * create_image runs; each is waited for until it is no longer being created), the known server
 * and key, and anything else labelled with this run (a create whose answer was lost). When a
 * create_image had no answer, its snapshot may appear late: the server is then deleted and waited
 * for (so that no snapshot of it can appear any more) and the snapshots are looked for again.
 * Answers the problems (an already deleted resource is not one) and the deleted snapshots.
 */
async function deleteTemporaries(
  hcloud: HcloudClient,
  t: { serverId: number | undefined; keyId: number | undefined; run: string; snapshotInFlight: boolean; imageWaitMs: number },
  log: Logger,
): Promise<{ problems: string[]; snapshots: number[] }> {
  const problems: string[] = [];
  const deleted: number[] = [];
  const selector = uploadRunSelector(t.run);
  const deleteSnapshots = async (): Promise<void> => {
    const signal = AbortSignal.timeout(t.imageWaitMs + CLEANUP_TIMEOUT_MS);
    let found: Image[];
    try {
      found = await findRunSnapshots(hcloud, t.run, signal);
    } catch (err) {
      problems.push(`listing unfinished snapshots failed: ${(err as Error).message}`);
      return;
    }
    for (const image of found) {
      if (deleted.includes(image.id)) continue;
      try {
        await waitForImage(hcloud, image.id, signal, t.imageWaitMs, 'settled');
        await hcloud.deleteImage(image.id, signal);
        deleted.push(image.id);
        log.info({ imageId: image.id, run: t.run }, 'image upload: deleted an unfinished snapshot of this run');
      } catch (err) {
        if (!isNotFound(err)) problems.push(`deleting snapshot ${image.id} failed: ${(err as Error).message}`);
      }
    }
  };
  await deleteSnapshots();

  const signal = AbortSignal.timeout(CLEANUP_TIMEOUT_MS);
  const servers = new Set<number>(t.serverId === undefined ? [] : [t.serverId]);
  const keys = new Set<number>(t.keyId === undefined ? [] : [t.keyId]);
  try {
    for (const s of await hcloud.listServers({ labelSelector: selector }, signal)) servers.add(s.id);
    for (const k of await hcloud.listSshKeys({ labelSelector: selector }, signal)) keys.add(k.id);
  } catch (err) {
    problems.push(`listing temporary resources failed: ${(err as Error).message}`);
  }
  for (const id of servers) {
    try {
      if (t.snapshotInFlight) await hcloud.deleteServerAndWait(id, { signal, timeoutMs: CLEANUP_TIMEOUT_MS });
      else await hcloud.deleteServer(id, signal);
      log.info({ serverId: id }, 'image upload: deleted the temporary server');
    } catch (err) {
      if (!isNotFound(err)) problems.push(`deleting server ${id} failed: ${(err as Error).message}`);
    }
  }
  for (const id of keys) {
    try {
      await hcloud.deleteSshKey(id, signal);
      log.info({ sshKeyId: id }, 'image upload: deleted the temporary ssh key');
    } catch (err) {
      if (!isNotFound(err)) problems.push(`deleting ssh key ${id} failed: ${(err as Error).message}`);
    }
  }
  if (t.snapshotInFlight) await deleteSnapshots();
  return { problems, snapshots: deleted };
}

function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new ImageUploadError(`image upload aborted${reason === undefined ? '' : `: ${String(reason)}`}`);
}

/** Connects to the rescue system, retrying until its sshd answers. Accepts any host key (see step 4). */
async function connectRescue(
  host: string,
  port: number,
  privateKey: string,
  timeoutMs: number,
  retryMs: number,
  signal: AbortSignal,
  onHostKey: (key: Buffer) => void,
): Promise<ssh2.Client> {
  const deadline = Date.now() + timeoutMs;
  let last: Error | undefined;
  for (;;) {
    if (signal.aborted) throw abortError(signal);
    try {
      return await new Promise<ssh2.Client>((resolve, reject) => {
        const client = new ssh2.Client();
        const onAbort = (): void => {
          client.end();
          reject(abortError(signal));
        };
        signal.addEventListener('abort', onAbort, { once: true });
        client.once('ready', () => {
          signal.removeEventListener('abort', onAbort);
          client.removeAllListeners('error');
          client.on('error', () => {});
          resolve(client);
        });
        client.once('error', (err) => {
          signal.removeEventListener('abort', onAbort);
          client.end();
          reject(err);
        });
        client.connect({
          host,
          port,
          username: 'root',
          privateKey,
          readyTimeout: Math.max(1000, Math.min(30_000, deadline - Date.now())),
          // Not pinned on purpose: the rescue system's host key cannot be known beforehand.
          hostVerifier: (key: Buffer) => {
            onHostKey(key);
            return true;
          },
        });
      });
    } catch (err) {
      if (signal.aborted) throw abortError(signal);
      last = err as Error;
    }
    if (Date.now() + retryMs > deadline) {
      throw new ImageUploadError(`the rescue system at ${host}:${port} did not accept the ssh login within ${Math.round(timeoutMs / 1000)} s: ${last?.message ?? 'no answer'}`);
    }
    await abortableSleep(retryMs, signal).catch(() => {
      throw abortError(signal);
    });
  }
}

/**
 * Runs `command` and feeds it the file as stdin. `pipe` gives backpressure: the file is read only
 * as fast as the ssh channel's window lets the data go. Rejects on a non-zero exit status (with
 * the end of its stderr), a read error, or an abort (the channel is closed, so the remote side
 * gets no complete image and exits).
 */
async function streamImage(client: ssh2.Client, file: string, command: string, size: number, signal: AbortSignal, progress: (sent: number) => void): Promise<void> {
  const channel = await execChannel(client, command);
  await new Promise<void>((resolve, reject) => {
    const input = createReadStream(file, { highWaterMark: 1024 * 1024 });
    let sent = 0;
    let lastReport = Date.now();
    let code: number | null = null;
    let exitSignal: string | undefined;
    let stderr = '';
    let failure: Error | undefined;
    const fail = (err: Error): void => {
      if (failure !== undefined) return;
      failure = err;
      input.unpipe(channel);
      input.destroy();
      channel.close();
    };
    const onAbort = (): void => fail(abortError(signal));
    if (signal.aborted) onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    input.on('data', (chunk: Buffer | string) => {
      sent += chunk.length;
      if (Date.now() - lastReport >= 5000 && sent < size) {
        lastReport = Date.now();
        progress(sent);
      }
    });
    input.on('error', (err) => fail(new ImageUploadError(`reading ${file}: ${err.message}`)));
    channel.on('data', () => {});
    channel.stderr.on('data', (b: Buffer) => {
      stderr = (stderr + b.toString('utf8')).slice(-2000);
    });
    channel.on('exit', (c: number | null, s?: string) => {
      code = c;
      exitSignal = s;
    });
    channel.on('close', () => {
      signal.removeEventListener('abort', onAbort);
      input.destroy();
      if (failure !== undefined) reject(failure);
      else if (code === 0) resolve();
      else {
        const how = exitSignal ? `signal ${exitSignal}` : `status ${code ?? 'unknown'}`;
        reject(new ImageUploadError(`writing the image on the server failed (${how}): ${stderr.trim().split('\n').slice(-3).join(' / ')}`));
      }
    });
    input.pipe(channel);
  });
}

export interface CleanupResult {
  servers: Server[];
  sshKeys: { id: number; name: string }[];
  /** Snapshots an upload did not finish (they still carry the temporary labels). */
  snapshots: { id: number; description: string }[];
}

/**
 * Deletes (or with `dryRun` only lists) every temporary server and ssh key an upload left behind
 * and every snapshot an upload did not finish (a run that died during step 7), all found by label
 * (`uploadLeftoverSelector`). A finished snapshot never has that label: it is never touched.
 */
export async function cleanupUploads(hcloud: HcloudClient, dryRun: boolean, print: (line: string) => void, log: Logger, signal?: AbortSignal): Promise<CleanupResult> {
  const selector = uploadLeftoverSelector();
  const servers = await hcloud.listServers({ labelSelector: selector }, signal);
  const sshKeys = await hcloud.listSshKeys({ labelSelector: selector }, signal);
  const snapshots = await hcloud.listImages({ type: 'snapshot', labelSelector: selector, sort: ['id:asc'] }, signal);
  const verb = dryRun ? 'would delete' : 'deleting';
  const failures: string[] = [];
  /** One leftover: how it is named, and how it goes. */
  interface Leftover {
    kind: string;
    id: number;
    shown: string;
    logKey: 'imageId' | 'serverId' | 'sshKeyId';
    logged: string;
    remove: () => Promise<unknown>;
  }
  const leftovers: Leftover[] = [
    // Snapshots first: a server cannot be deleted while its create_image runs.
    ...snapshots.map((i) => ({ kind: 'snapshot', id: i.id, shown: `unfinished snapshot ${i.id} (${i.description}, ${i.status}, created ${i.created})`, logKey: 'imageId' as const, logged: 'an unfinished snapshot', remove: () => hcloud.deleteImage(i.id, signal) })),
    ...servers.map((v) => ({ kind: 'server', id: v.id, shown: `server ${v.name} (id ${v.id}, ${v.status}, created ${v.created})`, logKey: 'serverId' as const, logged: 'a temporary server', remove: () => hcloud.deleteServer(v.id, signal) })),
    ...sshKeys.map((k) => ({ kind: 'ssh key', id: k.id, shown: `ssh key ${k.name} (id ${k.id}, created ${k.created})`, logKey: 'sshKeyId' as const, logged: 'a temporary ssh key', remove: () => hcloud.deleteSshKey(k.id, signal) })),
  ];
  for (const l of leftovers) {
    print(`${verb} ${l.shown}`);
    if (dryRun) continue;
    try {
      await l.remove();
      log.info({ [l.logKey]: l.id }, `image cleanup: deleted ${l.logged}`);
    } catch (err) {
      if (!isNotFound(err)) failures.push(`${l.kind} ${l.id}: ${(err as Error).message}`);
    }
  }
  if (failures.length > 0) throw new ImageUploadError(`image cleanup: ${failures.join('; ')}`);
  return {
    servers,
    sshKeys: sshKeys.map((k) => ({ id: k.id, name: k.name })),
    snapshots: snapshots.map((i) => ({ id: i.id, description: i.description })),
  };
}

export const IMAGE_USAGE = `usage:
  nix-hcloud-builder image upload IMAGE.raw[.zst] --arch x86|arm --label KEY=VALUE [--label …]
                     [--server-type TYPE] [--location LOC] [--description TEXT] [--ssh-port N]
  nix-hcloud-builder image cleanup [--dry-run]
`;

export interface ImageCommandOptions {
  hcloud: HcloudClient;
  args: string[];
  // `| undefined`: the command line passes its unset options as they are.
  arch?: string | undefined;
  labels: string[];
  serverType?: string | undefined;
  location?: string | undefined;
  description?: string | undefined;
  sshPort?: string | undefined;
  dryRun: boolean;
  log: Logger;
  /** Progress lines (stderr). */
  print: (line: string) => void;
  /** Results (stdout): the cleanup listing, the new snapshot's id alone on its line. */
  out: (line: string) => void;
}

/**
 * The `image` command of the CLI. On SIGINT/SIGTERM the upload is aborted and its temporary
 * server and key are still deleted; a second signal exits at once.
 */
export async function imageCommand(o: ImageCommandOptions): Promise<number> {
  const [sub, ...rest] = o.args;
  if (sub === 'cleanup') {
    if (rest.length > 0) throw new ImageUploadError(`image cleanup takes no arguments\n${IMAGE_USAGE}`);
    const r = await cleanupUploads(o.hcloud, o.dryRun, o.out, o.log);
    o.out(`${o.dryRun ? 'would delete' : 'deleted'} ${r.servers.length} server(s), ${r.sshKeys.length} ssh key(s) and ${r.snapshots.length} unfinished snapshot(s)`);
    return 0;
  }
  if (sub !== 'upload' || rest.length !== 1 || rest[0] === undefined) throw new ImageUploadError(IMAGE_USAGE.trimEnd());
  const arch = parseArch(o.arch);
  if (o.labels.length === 0) throw new ImageUploadError('image upload: give at least one --label KEY=VALUE (pools select the snapshot by label)');
  const labels = parseLabels(o.labels);
  let sshPort: number | undefined;
  if (o.sshPort !== undefined) {
    sshPort = Number(o.sshPort);
    if (!Number.isInteger(sshPort) || sshPort < 1 || sshPort > 65535) throw new ImageUploadError(`--ssh-port: expected a port number, got ${JSON.stringify(o.sshPort)}`);
  }
  const controller = new AbortController();
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) {
      o.print(`${sig} again: exiting now; run "nix-hcloud-builder image cleanup" to delete what is left`);
      process.exit(130);
    }
    o.print(`${sig}: stopping the upload, deleting the temporary server and ssh key (again to exit at once)`);
    controller.abort(new ImageUploadError(`image upload interrupted by ${sig}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const result = await uploadImage({
      hcloud: o.hcloud,
      file: rest[0],
      arch,
      labels,
      ...(o.serverType === undefined ? {} : { serverType: o.serverType }),
      ...(o.location === undefined ? {} : { location: o.location }),
      ...(o.description === undefined ? {} : { description: o.description }),
      ...(sshPort === undefined ? {} : { sshPort }),
      signal: controller.signal,
      log: o.log,
      print: o.print,
    });
    o.out(String(result.image.id));
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

