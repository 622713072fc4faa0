/**
 * The `compression` setting of a pool, end to end over the rig's emulated link: a build through
 * the daemon gives the same output bytes with each setting and both protocols, the worker
 * connection negotiated the setting (boot step 4 names it; zstd runs inside the sessions, through
 * the worker's relay, which the daemon checked), and with zlib and zstd far fewer bytes crossed
 * the link than the input and output hold.
 */
import t from 'tap';
import type { StateData } from '../../src/daemon/state.js';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { remoteBuildArgs, ROOT, Rig, run } from '../rig/rig.js';
import { linkProfile } from '../rig/link.js';
import { LABEL_POOL } from '../../src/core/labels.js';

const TRANSFORM_NIX = join(ROOT, 'test', 'fixtures', 'transform.nix');
/** Text that compresses well, large enough that the SSH handshake and login do not matter. */
const INPUT_BYTES = 8 * 1024 * 1024;

t.test('each compression setting builds the same bytes, negotiates itself, and zlib and zstd shrink the bytes on the link', async (t) => {
  const settings = ['none', 'zlib', 'zstd'] as const;
  const builds = [...settings.map((pool) => ({ pool, protocol: 'ssh-ng' as const })), { pool: 'zstd' as const, protocol: 'ssh' as const }];
  const rig = await Rig.start({
    // A fast link: this test is about bytes and correctness, not time.
    fake: { link: linkProfile('400/400/1') },
    pools: Object.fromEntries(settings.map((c) => [c, { compression: c, idleTimeout: '60s' }])),
  });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();

  /** Each build its own input (a path already on the worker would not be uploaded again). */
  const makeInput = (name: string): string => {
    const file = join(rig.dir, `input-${name.replace(/\W+/g, '-')}.txt`);
    const lines: string[] = [];
    for (let i = 0, length = 0; length < INPUT_BYTES; i++) {
      const line = `line ${i} of a text for ${name} that compresses well, with a number in it\n`;
      lines.push(line);
      length += line.length;
    }
    writeFileSync(file, lines.join('').slice(0, INPUT_BYTES));
    return file;
  };

  const sessionsSeen = new Set<object>();
  const linkSeen: Record<string, { up: number; down: number }> = {};
  for (const { pool: compression, protocol } of builds) {
    const name = `${compression} (${protocol})`;
    const input = makeInput(name);
    const expr = `import ${TRANSFORM_NIX} { input = ${input}; nonce = "${compression}-${protocol}-${Date.now()}"; }`;
    const result = await run('nix-build', remoteBuildArgs(expr, rig.machinesLine(protocol, compression, 1)), {
      env: { ...process.env, NIX_SSHOPTS: `-F ${rig.sshConfig(daemon.port)}` },
    });
    t.equal(result.code, 0, `${name}: nix-build succeeded`, { stderr: result.stderr });
    const out = result.stdout.trim().split('\n').pop() as string;
    const expected = createHash('sha256').update(readFileSync(input, 'utf8').toUpperCase()).digest('hex');
    t.equal(createHash('sha256').update(readFileSync(out)).digest('hex'), expected, `${name}: the output is the input, upper-cased`);

    const step4 = await daemon.waitFor((l) => l.pool === compression && /^boot step 4\/5/.test(l.msg));
    t.equal(step4.compression, compression === 'zlib' ? 'zlib@openssh.com' : 'none', `${name}: the worker connection negotiated it`);
    if (compression === 'zstd') {
      const relay = await daemon.waitFor((l) => l.pool === compression && l.msg === 'zstd relay answers');
      t.match(relay.relay, /^libzstd \d/, "zstd: the worker's relay answered the check");
      const session = await daemon.waitFor(
        (l) =>
          l.msg === 'session ended' &&
          l.user === compression &&
          typeof l.wireUp === 'number' &&
          (l.up as number) > INPUT_BYTES &&
          !sessionsSeen.has(l),
      );
      sessionsSeen.add(session);
      t.ok(
        (session.wireUp as number) < (session.up as number) / 4,
        `zstd: the session sent ${String(session.wireUp)} bytes for ${String(session.up)}`,
      );
      // The default level is "auto": the session says what each direction settled on.
      t.match(session.zstd, { up: /^level -?\d+$/ }, `zstd (${protocol}): the upload settled on a level: ${JSON.stringify(session.zstd)}`);
    }

    const server = rig.fake.liveServers().find((s) => s.labels[LABEL_POOL] === compression);
    t.ok(server?.linkBytes, `${name}: the server sits behind the emulated link`);
    const total = server?.linkBytes ?? { up: 0, down: 0 };
    const before = linkSeen[compression] ?? { up: 0, down: 0 };
    const bytes = { up: total.up - before.up, down: total.down - before.down };
    linkSeen[compression] = { ...total };
    if (compression === 'none') {
      t.ok(bytes.up > INPUT_BYTES, `${name}: ${bytes.up} bytes up for an input of ${INPUT_BYTES}`);
      t.ok(bytes.down > INPUT_BYTES, `${name}: ${bytes.down} bytes down for an output of ${INPUT_BYTES}`);
    } else {
      t.ok(bytes.up < INPUT_BYTES / 4, `${name}: ${bytes.up} bytes up for an input of ${INPUT_BYTES}`);
      t.ok(bytes.down < INPUT_BYTES / 4, `${name}: ${bytes.down} bytes down for an output of ${INPUT_BYTES}`);
    }
  }
  // The relay reported its level in the stream; the state file (what `status` shows) keeps both.
  const state = JSON.parse(readFileSync(join(rig.dir, 'state', 'state.json'), 'utf8')) as StateData;
  const zstdWorker = state.workers.find((w) => w.pool === 'zstd');
  t.match(zstdWorker?.zstd, { up: /^level -?\d+$/, down: /^level -?\d+$/ }, `status shows the levels: ${JSON.stringify(zstdWorker?.zstd)}`);
});

t.test("a worker whose zstd relay does not run: said on the build's stderr, and the build goes uncompressed", async (t) => {
  const rig = await Rig.start({
    pools: {
      // The relay is removed before the worker reports ready, as on an image without it.
      zstd: {
        compression: 'zstd',
        idleTimeout: '60s',
        readyCommand: 'rm -f /usr/local/bin/nix-hcloud-builder-zstd-relay; test -e /run/nix-hcloud-builder/ready && nix-store --version',
      },
    },
  });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const input = join(rig.dir, 'input.txt');
  writeFileSync(input, `a small input ${Date.now()}\n`);
  const result = await run(
    'nix-build',
    remoteBuildArgs(
      `import ${TRANSFORM_NIX} { input = ${input}; nonce = "fallback-${Date.now()}"; }`,
      rig.machinesLine('ssh-ng', 'zstd', 1),
    ),
    { env: { ...process.env, NIX_SSHOPTS: `-F ${rig.sshConfig(daemon.port)}` } },
  );
  t.equal(result.code, 0, 'nix-build succeeded', { stderr: result.stderr });
  t.match(result.stderr, /compression "zstd": the worker's relay does not run \(status 127/, "the build's stderr says why");
  const warning = await daemon.waitFor((l) => /the worker's relay does not run/.test(l.msg));
  t.equal(warning.level, 40, 'logged as a warning');
  const session = await daemon.waitFor((l) => l.msg === 'session ended' && l.user === 'zstd');
  t.equal(session.wireUp, undefined, 'the session ran without the codec');
});
