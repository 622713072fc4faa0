/**
 * The `compression` setting of a pool, end to end over the rig's emulated link: a build through
 * the daemon gives the same output bytes with each setting, the worker connection negotiated the
 * setting (boot step 4 names it), and with zlib far fewer bytes crossed the link than the input
 * and output hold.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, Rig, run } from '../rig/rig.js';
import { linkProfile } from '../rig/link.js';
import { LABEL_POOL } from '../../src/core/labels.js';

const TRANSFORM_NIX = join(ROOT, 'test', 'fixtures', 'transform.nix');
/** Text that compresses well, large enough that the SSH handshake and login do not matter. */
const INPUT_BYTES = 8 * 1024 * 1024;

t.test('each compression setting builds the same bytes, negotiates itself, and zlib shrinks the bytes on the link', async (t) => {
  const settings = ['none', 'zlib'] as const;
  const rig = await Rig.start({
    // A fast link: this test is about bytes and correctness, not time.
    fake: { link: linkProfile('400/400/1') },
    pools: Object.fromEntries(settings.map((c) => [c, { compression: c, idleTimeout: '60s' }])),
  });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();

  const input = join(rig.dir, 'input.txt');
  const lines: string[] = [];
  for (let i = 0, length = 0; length < INPUT_BYTES; i++) {
    const line = `line ${i} of a text that compresses well, with a number in it\n`;
    lines.push(line);
    length += line.length;
  }
  writeFileSync(input, lines.join('').slice(0, INPUT_BYTES));

  const hashes: Record<string, string> = {};
  for (const compression of settings) {
    const expr = `import ${TRANSFORM_NIX} { input = ${input}; nonce = "${compression}-${Date.now()}"; }`;
    const result = await run('nix-build', [
      '-E', expr, '--no-out-link', '--max-jobs', '0',
      '--builders', rig.machinesLine('ssh-ng', compression, 1),
      '--option', 'substituters', '', '--option', 'builders-use-substitutes', 'false',
    ], { env: { ...process.env, NIX_SSHOPTS: `-F ${rig.sshConfig(daemon.port)}` } });
    t.equal(result.code, 0, `${compression}: nix-build succeeded`, { stderr: result.stderr });
    const out = result.stdout.trim().split('\n').pop() as string;
    hashes[compression] = createHash('sha256').update(readFileSync(out)).digest('hex');

    const step4 = await daemon.waitFor((l) => l.pool === compression && /^boot step 4\/5/.test(l.msg));
    t.equal(step4.compression, compression === 'zlib' ? 'zlib@openssh.com' : 'none', `${compression}: the worker connection negotiated it`);

    const server = rig.fake.liveServers().find((s) => s.labels[LABEL_POOL] === compression);
    t.ok(server?.linkBytes, `${compression}: the server sits behind the emulated link`);
    const bytes = server?.linkBytes ?? { up: 0, down: 0 };
    if (compression === 'none') {
      t.ok(bytes.up > INPUT_BYTES, `none: ${bytes.up} bytes up for an input of ${INPUT_BYTES}`);
      t.ok(bytes.down > INPUT_BYTES, `none: ${bytes.down} bytes down for an output of ${INPUT_BYTES}`);
    } else {
      t.ok(bytes.up < INPUT_BYTES / 4, `zlib: ${bytes.up} bytes up for an input of ${INPUT_BYTES}`);
      t.ok(bytes.down < INPUT_BYTES / 4, `zlib: ${bytes.down} bytes down for an output of ${INPUT_BYTES}`);
    }
  }
  t.equal(hashes.zlib, hashes.none, 'the same output bytes with each setting');
  const expected = createHash('sha256').update(readFileSync(input, 'utf8').toUpperCase()).digest('hex');
  t.equal(hashes.none, expected, 'and they are the input, upper-cased');
});
