/** `npm run docs`: regenerates the README's config table from src/core/config-reference.ts. */
import { readFileSync, writeFileSync } from 'node:fs';
import { withConfigReference } from '../src/core/config-reference.js';

const file = new URL('../README.md', import.meta.url);
writeFileSync(file, withConfigReference(readFileSync(file, 'utf8')));
