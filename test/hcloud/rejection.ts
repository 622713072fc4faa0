import { HcloudError } from '../../src/hcloud/errors.js';

/** The HcloudError a promise rejects with (anything else is rethrown; fulfilling is an error). */
export async function rejection(p: Promise<unknown>): Promise<HcloudError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof HcloudError) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}
