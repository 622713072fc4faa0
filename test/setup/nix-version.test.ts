import t from 'tap';
import { choosePortStyle, detectNixVersion, NIX_VERSION_ENV, parseNixVersion } from '../../src/setup/nix-version.js';

t.test('version lines of CppNix and Lix', async (t) => {
  t.same(parseNixVersion('nix (Nix) 2.31.0\n'), { implementation: 'Nix', major: 2, minor: 31, patch: 0, version: '2.31.0' });
  t.same(parseNixVersion('nix-daemon (Nix) 2.8.0'), { implementation: 'Nix', major: 2, minor: 8, patch: 0, version: '2.8.0' });
  t.same(parseNixVersion('nix (Lix, like Nix) 2.93.0'), { implementation: 'Lix', major: 2, minor: 93, patch: 0, version: '2.93.0' });
  t.equal(parseNixVersion('nix (Nix) 2.32.0pre20250901_abcdef')?.version, '2.32.0pre20250901_abcdef');
  t.equal(parseNixVersion('nix (Nix) 3.1')?.major, 3);
  for (const junk of ['', 'command not found', '2.31.0', 'nix (Guix) 2.31.0'])
    t.equal(parseNixVersion(junk), undefined, JSON.stringify(junk));
});

t.test('the port goes into the URI only where that Nix reads it', async (t) => {
  const cases: [string, string][] = [
    ['nix (Nix) 2.31.0', 'authority'],
    ['nix (Nix) 2.32.1', 'authority'],
    ['nix (Nix) 3.0.0', 'authority'],
    ['nix (Nix) 2.30.2', 'alias'],
    ['nix (Nix) 2.8.0', 'alias'],
    ['nix (Lix, like Nix) 2.93.0', 'query'],
    ['nix (Lix, like Nix) 2.94.1', 'query'],
    ['nix (Lix, like Nix) 2.92.0', 'alias'],
  ];
  for (const [text, style] of cases) t.equal(choosePortStyle(parseNixVersion(text), 'test').style, style, text);
});

t.test('the reason says what was chosen and why, in one line', async (t) => {
  const reasons = [
    choosePortStyle(parseNixVersion('nix (Nix) 2.31.0'), 'nix-daemon --version'),
    choosePortStyle(parseNixVersion('nix (Lix, like Nix) 2.93.0'), 'nix-daemon --version'),
    choosePortStyle(parseNixVersion('nix (Nix) 2.30.2'), 'nix-daemon --version'),
    choosePortStyle(parseNixVersion('nix (Lix, like Nix) 2.92.0'), 'nix-daemon --version'),
    choosePortStyle(undefined, 'neither nix-daemon nor nix answered --version on PATH'),
    choosePortStyle(parseNixVersion('nix (Nix) 2.31.0'), 'test', false),
  ].map((c) => c.reason);
  t.match(reasons[0], /^machines lines name host:port, no ssh alias needed: Nix 2\.31\.0 \(nix-daemon --version\) takes a port/);
  t.match(reasons[1], /^machines lines name \?port=, no ssh alias needed: Lix 2\.93\.0/);
  t.match(reasons[2], /^machines lines name the ssh alias: Nix 2\.30\.2 .* cannot take a port in a builder URI \(that needs Nix ≥ 2\.31\)/);
  t.match(reasons[3], /that needs Lix ≥ 2\.93/);
  t.match(reasons[4], /could not tell which Nix runs the builds \(neither nix-daemon nor nix/);
  t.match(reasons[5], /IPv6/);
  for (const r of reasons) t.notMatch(r, /\n/);
});

t.test('the environment overrides what is on PATH', async (t) => {
  t.same(detectNixVersion({ [NIX_VERSION_ENV]: 'nix (Lix, like Nix) 2.93.0' }), {
    text: 'nix (Lix, like Nix) 2.93.0',
    source: `$${NIX_VERSION_ENV}`,
  });
  t.same(detectNixVersion({ PATH: '/nonexistent' }), { source: 'neither nix-daemon nor nix answered --version on PATH' });
});
