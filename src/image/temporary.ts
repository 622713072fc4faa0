/**
 * What an upload makes for a while, and how it is found again: the temporary server and ssh key,
 * and the snapshot until it is finished, carry `managed-by=nix-hcloud-builder`,
 * `nix-hcloud-builder/role=image-upload` and `nix-hcloud-builder/upload-run=<run id>` (no
 * instance label, so no daemon's sweep touches them). A finished snapshot never has the role
 * label, so nothing here ever deletes it.
 */
import { LABEL_MANAGED_BY, MANAGED_BY } from '../core/labels.js';
import { UserError } from '../core/errors.js';
import type { HcloudClient } from '../hcloud/client.js';
import type { Image } from '../hcloud/types.js';
import { abortableSleep } from '../hcloud/retry.js';

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

/** The labels of one run's temporary resources. */
export function temporaryLabels(run: string): Record<string, string> {
  return { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_ROLE]: ROLE_IMAGE_UPLOAD, [LABEL_UPLOAD_RUN]: run };
}

export class ImageUploadError extends UserError {
  override name = 'ImageUploadError';
}

/** The error an aborted upload ends with: the signal's reason, or one saying it was aborted. */
export function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof Error) return reason;
  // eslint-disable-next-line @typescript-eslint/no-base-to-string -- a reason that is no Error is shown as String() shows it
  const shown = reason === undefined ? '' : `: ${String(reason)}`;
  return new ImageUploadError(`image upload aborted${shown}`);
}

/** The snapshots that still carry the temporary labels of `run`, oldest first. */
export async function findRunSnapshots(hcloud: HcloudClient, run: string, signal: AbortSignal): Promise<Image[]> {
  const found = await hcloud.listImages({ type: 'snapshot', labelSelector: uploadRunSelector(run) }, signal);
  return found.sort((a, b) => a.id - b.id);
}

/**
 * Polls a snapshot until it is no longer `creating` (at most `timeoutMs`). With `want`
 * `available`, any other end state is an error.
 */
export async function waitForImage(
  hcloud: HcloudClient,
  id: number,
  signal: AbortSignal,
  timeoutMs: number,
  want: 'available' | 'settled',
): Promise<Image> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const image = await hcloud.getImage(id, signal);
    if (image.status !== 'creating') {
      if (want === 'available' && image.status !== 'available')
        throw new ImageUploadError(`snapshot ${id} is ${image.status}, not available`);
      return image;
    }
    if (Date.now() > deadline) throw new ImageUploadError(`snapshot ${id} is still being created after ${Math.round(timeoutMs / 1000)} s`);
    await abortableSleep(hcloud.actionPollIntervalMs, signal);
  }
}
