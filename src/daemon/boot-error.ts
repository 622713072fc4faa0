/** A boot that failed: the pool deletes its server, and its waiting sessions get this message. */
export class BootError extends Error {
  override name = 'BootError';
}
