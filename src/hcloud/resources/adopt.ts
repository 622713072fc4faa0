/**
 * Recovering a create whose answer was lost: names are unique per project, so a resend after an
 * unknown outcome cannot make a second resource; when it is refused as a duplicate, the resource
 * of that name may be ours, and the create call adopts it after checking it fits.
 */
import { HcloudError } from '../errors.js';

/**
 * How far before our first create attempt a resource found by name may have been created and still
 * be taken for the one that attempt created (covers clock skew between us and the API).
 */
export const ADOPT_CLOCK_MARGIN_MS = 15 * 60_000;

/**
 * Whether a failed create of a uniquely named resource may have created it all the same: a resend
 * after an unknown outcome was refused as a duplicate name, or a 2xx answer could not be read.
 */
export function answerWasLost(err: unknown, outcome: { unknown: boolean }): err is HcloudError {
  return (
    err instanceof HcloudError &&
    ((err.code === 'uniqueness_error' && outcome.unknown) || (err.code === 'invalid_response' && err.status >= 200 && err.status < 300))
  );
}
