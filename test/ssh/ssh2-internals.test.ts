/**
 * src/ssh/ssh2-internals.ts: on the installed ssh2 every field is there; with a field gone (a fake
 * object, or a method taken off ssh2's protocol class) each function says so instead of guessing,
 * and the start-up check warns naming the field and what it turns off.
 */
import t from 'tap';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import type { Client, Connection } from 'ssh2';
import { createLogger } from '../../src/core/log.js';
import {
  checkSsh2Internals,
  FEATURES,
  hookWindowGrants,
  installedSsh2Version,
  limitReadBuffer,
  openChannelCount,
  SSH2_VERSION,
  Ssh2InternalsMissing,
  warnIfSsh2InternalsDiffer,
} from '../../src/ssh/ssh2-internals.js';

const policy = { confirm: (_c: unknown, initial: number) => initial, adjust: (_r: number, amount: number) => amount };

function capturingLogger(): { log: ReturnType<typeof createLogger>; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const log = createLogger({ level: 'debug', pretty: false, destination: { write: (line: string) => void out.push(line) } });
  return { log, lines: () => out.map((line) => JSON.parse(line) as Record<string, unknown>) };
}

t.test('package.json pins ssh2 to the version the internals were written for', async (t) => {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { dependencies: Record<string, string> };
  t.equal(pkg.dependencies.ssh2, SSH2_VERSION, 'exact version, no range');
  t.equal(installedSsh2Version(), SSH2_VERSION, 'and that is what is installed');
});

t.test('the installed ssh2 has every field: nothing missing, nothing off, no warning', async (t) => {
  const report = await checkSsh2Internals();
  t.same(report.missing, []);
  t.same(report.off, []);
  const { log, lines } = capturingLogger();
  await warnIfSsh2InternalsDiffer(log);
  t.same(lines(), [], 'silent');
});

t.test('openChannelCount throws when ssh2 keeps no count, instead of answering 0', async (t) => {
  for (const fake of [{}, { _chanMgr: {} }, { _chanMgr: { _count: '0' } }]) {
    t.throws(() => openChannelCount(fake as unknown as Client), Ssh2InternalsMissing, JSON.stringify(fake));
  }
  t.equal(openChannelCount({ _chanMgr: { _count: 3 } } as unknown as Client), 3);
});

t.test('hookWindowGrants and limitReadBuffer change nothing and say so when the fields are absent', async (t) => {
  const protocol = { channelOpenConfirm: () => undefined };
  const fake = { _protocol: protocol, _chanMgr: { get: () => undefined } };
  t.equal(hookWindowGrants(fake as unknown as Connection, policy), false, 'no channelWindowAdjust');
  t.equal(fake._protocol, protocol);
  t.equal(hookWindowGrants({} as unknown as Connection, policy), false, 'no _protocol');

  const stream = new PassThrough({ highWaterMark: 1024 });
  t.equal(limitReadBuffer(stream, 16), true);
  t.equal(stream.readableHighWaterMark, 16);
  t.equal(limitReadBuffer(Object.create(null) as PassThrough, 16), false);
});

t.test('with a protocol method gone from ssh2, the check names it and the window limit as off, at warn level', async (t) => {
  // ssh2's protocol class, as the installed ssh2 has it (not part of its API: that is the point).
  const sshRequire = createRequire(createRequire(import.meta.url).resolve('ssh2'));
  const Protocol = sshRequire('./protocol/Protocol.js') as { prototype: Record<string, unknown> };
  const saved = Protocol.prototype.channelWindowAdjust;
  t.type(saved, 'function', 'ssh2 1.17 has it');
  delete Protocol.prototype.channelWindowAdjust;
  t.teardown(() => {
    Protocol.prototype.channelWindowAdjust = saved;
  });
  const { log, lines } = capturingLogger();
  const report = await warnIfSsh2InternalsDiffer(log);
  Protocol.prototype.channelWindowAdjust = saved;
  t.same(report.off, ['window']);
  t.match(report.missing, ['Connection._protocol.channelWindowAdjust: missing, expected function']);
  const logged = lines();
  t.equal(logged.length, 1, 'one line');
  t.equal(logged[0]?.level, 40, 'pino warn');
  t.match(String(logged[0]?.msg), FEATURES.window, 'names what is off');
  t.match(logged[0]?.missing, ['Connection._protocol.channelWindowAdjust: missing, expected function'], 'and what is missing');
});
