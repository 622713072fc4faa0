/** The error of `setup`: one line for the user, exit status 1. */
import { UserError } from '../core/errors.js';

export class SetupError extends UserError {
  override name = 'SetupError';
}
