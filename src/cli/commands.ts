/** Every command of the CLI, in the order the usage text lists them. */
import type { Command } from './command.js';
import { down } from './down.js';
import { gc } from './gc.js';
import { imageCleanup, imageUpload } from './image.js';
import { serve } from './serve.js';
import { setup } from './setup.js';
import { status } from './status.js';
import { up } from './up.js';

export const COMMANDS: readonly Command[] = [serve, status, down, setup, up, gc, imageUpload, imageCleanup];
