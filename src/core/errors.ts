/**
 * The base of every error that means "the input or the world is not as needed" rather than "a
 * bug": a bad config, no token, a refused API call, a failed upload. The CLI prints such an
 * error as one line (its message, which must say what to do) and exits with `exitCode`; any
 * other error is a bug, and NIX_HCLOUD_BUILDER_DEBUG adds its stack.
 */
export class UserError extends Error {
  override name = 'UserError';
  /** The CLI's exit status for it: 1, or 2 for a command line it cannot parse. */
  readonly exitCode: number = 1;
}
