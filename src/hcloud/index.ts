export { HcloudClient, PER_PAGE, type HcloudClientOptions, type WaitForActionsOptions } from './client.js';
export { HcloudError, isHcloudError, isNotFound, type ClientErrorCode, type HcloudErrorInit } from './errors.js';
export { defaultRetryPolicy, type RetryPolicy, type Replay } from './retry.js';
export type * from './types.js';
