import t from 'tap';
import { readFileSync } from 'node:fs';
import { parseConfig } from '../../src/core/config.js';
import { CONFIG_REFERENCE, withConfigReference } from '../../src/core/config-reference.js';

const pool = { serverTypes: ['cx23'] };

/** The loader's own list of keys at one level, read from its unknown-key error. */
function knownKeys(input: unknown): string[] {
  try {
    parseConfig(input, '/');
  } catch (err) {
    const m = /known keys here: (.*)$/.exec((err as Error).message);
    if (m) return (m[1] as string).split(', ');
    throw err;
  }
  throw new Error('no error for an unknown key');
}

t.test('the reference documents exactly the keys the loader knows', async (t) => {
  const fromLoader = [
    ...knownKeys({ pools: { p: pool }, zzz: 1 }),
    ...knownKeys({ pools: { p: pool }, listen: { zzz: 1 } }).map((k) => `listen.${k}`),
    ...knownKeys({ pools: { p: pool }, hcloud: { zzz: 1 } }).map((k) => `hcloud.${k}`),
    ...knownKeys({ pools: { p: { ...pool, zzz: 1 } } }).map((k) => `pools.<name>.${k}`),
    ...knownKeys({ pools: { p: { ...pool, store: { volumeGb: 10, zzz: 1 } } } }).map((k) => `pools.<name>.store.${k}`),
    ...knownKeys({ pools: { p: { ...pool, nix: { zzz: 1 } } } }).map((k) => `pools.<name>.nix.${k}`),
    ...knownKeys({ pools: { p: pool }, budget: { maxEurPerMonth: 1, zzz: 1 } }).map((k) => `budget.${k}`),
    ...knownKeys({ pools: { p: pool }, limits: { zzz: 1 } }).map((k) => `limits.${k}`),
    ...knownKeys({ pools: { p: pool }, deleteRetry: { zzz: 1 } }).map((k) => `deleteRetry.${k}`),
    ...knownKeys({ pools: { p: pool }, log: { zzz: 1 } }).map((k) => `log.${k}`),
  ];
  const leaves = fromLoader.filter(
    (k) => !['listen', 'hcloud', 'pools', 'budget', 'limits', 'deleteRetry', 'log', 'pools.<name>.store', 'pools.<name>.nix'].includes(k),
  );
  const documented = CONFIG_REFERENCE.map((d) => d.key).filter((k) => k !== 'pools.<name>');
  t.same([...documented].sort(), [...leaves].sort());
});

t.test('the table in docs/configuration.md is the generated one (run npm run docs after changing the reference)', async (t) => {
  const readme = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
  t.equal(withConfigReference(readme), readme);
});
