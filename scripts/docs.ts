/** `npm run docs`: regenerates the config table of docs/configuration.md from src/core/config-reference.ts. */
import { readFileSync, writeFileSync } from 'node:fs';
import { withConfigReference } from '../src/core/config-reference.js';

const file = new URL('../docs/configuration.md', import.meta.url);
writeFileSync(file, withConfigReference(readFileSync(file, 'utf8')));
