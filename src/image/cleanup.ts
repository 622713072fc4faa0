/**
 * Deleting what uploads leave: step 8 of one upload (`deleteTemporaries`, on every path of
 * `uploadImage`) and `image cleanup` (`cleanupUploads`, everything any upload left, found by label).
 */
import type { Logger } from '../core/log.js';
import type { HcloudClient } from '../hcloud/client.js';
import { isNotFound } from '../hcloud/errors.js';
import type { Image, Server } from '../hcloud/types.js';
import { findRunSnapshots, ImageUploadError, uploadLeftoverSelector, uploadRunSelector, waitForImage } from './temporary.js';

/** Budget of step 8 for deleting the temporary server and key. */
const CLEANUP_TIMEOUT_MS = 5 * 60_000;

/**
 * Step 8: deletes this run's unfinished snapshots (first: a server cannot be deleted while its
 * create_image runs; each is waited for until it is no longer being created), the known server
 * and key, and anything else labelled with this run (a create whose answer was lost). When a
 * create_image had no answer, its snapshot may appear late: the server is then deleted and waited
 * for (so that no snapshot of it can appear any more) and the snapshots are looked for again.
 * Answers the problems (an already deleted resource is not one) and the deleted snapshots.
 */
export async function deleteTemporaries(
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
export async function cleanupUploads(
  hcloud: HcloudClient,
  dryRun: boolean,
  print: (line: string) => void,
  log: Logger,
  signal?: AbortSignal,
): Promise<CleanupResult> {
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
    ...snapshots.map((i) => ({
      kind: 'snapshot',
      id: i.id,
      shown: `unfinished snapshot ${i.id} (${i.description}, ${i.status}, created ${i.created})`,
      logKey: 'imageId' as const,
      logged: 'an unfinished snapshot',
      remove: () => hcloud.deleteImage(i.id, signal),
    })),
    ...servers.map((v) => ({
      kind: 'server',
      id: v.id,
      shown: `server ${v.name} (id ${v.id}, ${v.status}, created ${v.created})`,
      logKey: 'serverId' as const,
      logged: 'a temporary server',
      remove: () => hcloud.deleteServer(v.id, signal),
    })),
    ...sshKeys.map((k) => ({
      kind: 'ssh key',
      id: k.id,
      shown: `ssh key ${k.name} (id ${k.id}, created ${k.created})`,
      logKey: 'sshKeyId' as const,
      logged: 'a temporary ssh key',
      remove: () => hcloud.deleteSshKey(k.id, signal),
    })),
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
