/**
 * The early handshake against real Nix (Debian's nix-bin): a real client (`nix store ping`,
 * `nix copy`) reaches this test's Unix socket through `ssh-ng://localhost` / `ssh://localhost`
 * with `remote-program` set to a bridge (Nix runs the remote program locally for "localhost",
 * no ssh); the socket's handler is an EarlySession whose upstream, when the test lets it come, is
 * a real `nix-daemon --stdio` or `nix-store --serve --write` on a store of its own.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { EarlySession, HandshakeMismatch, type SpliceResult } from '../../src/ssh/early-session.js';
import type { HandshakeProtocol, HandshakeRecord } from '../../src/ssh/nix-handshake.js';
import { run } from '../rig/process.js';
import { rigNixEnv } from '../rig/nix-config.js';

const dir = mkdtempSync(join(tmpdir(), 'early-session-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const env = rigNixEnv();
const socketPath = join(dir, 'sock');
const workerStore = join(dir, 'worker-store');
const clientStore = join(dir, 'client-store');
const bridge = join(dir, 'bridge.sh');
writeFileSync(
  join(dir, 'bridge.mjs'),
  `import { connect } from 'node:net';\nconst s = connect(${JSON.stringify(socketPath)});\nprocess.stdin.pipe(s);\ns.pipe(process.stdout);\n`,
);
writeFileSync(bridge, `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(join(dir, 'bridge.mjs'))}\n`);
chmodSync(bridge, 0o755);
const storeUri = (protocol: HandshakeProtocol): string =>
  `${protocol === 'worker' ? 'ssh-ng' : 'ssh'}://localhost?remote-program=${bridge}`;

/** A real Nix worker on the worker store, as a Duplex (its stdin and stdout). */
let upstreamsStarted = 0;
function startUpstream(protocol: HandshakeProtocol): Duplex {
  upstreamsStarted++;
  const args =
    protocol === 'worker'
      ? ['nix-daemon', ['--stdio', '--store', workerStore]]
      : ['nix-store', ['--serve', '--write', '--store', workerStore]];
  const child = spawn(args[0] as string, args[1] as string[], { env, stdio: ['pipe', 'pipe', 'inherit'] });
  // A session that failed leaves its worker running, as a closed channel would not.
  t.teardown(() => void child.kill());
  const upstream = Duplex.from({ readable: child.stdout, writable: child.stdin });
  // Killed at teardown: a premature close then, which is no test's business.
  upstream.on('error', () => undefined);
  return upstream;
}

/** Pipes both ways from the seam on. */
function pipeOn(client: Socket, upstream: Duplex, result: SpliceResult): void {
  if (result.leftover.length > 0) client.write(result.leftover);
  if (result.workerEnded) client.end();
  else upstream.pipe(client);
  client.pipe(upstream);
}

/** Serves the socket with `handle`; records what each session's client received. */
async function serve(handle: (client: Socket) => Promise<void>): Promise<{ server: Server; received: Buffer[][]; failures: Error[] }> {
  const received: Buffer[][] = [];
  const failures: Error[] = [];
  const server = createServer({ allowHalfOpen: true }, (client) => {
    const got: Buffer[] = [];
    received.push(got);
    served.get(server)?.push(client);
    const write = client.write.bind(client) as (chunk: Buffer, ...rest: unknown[]) => boolean;
    client.write = (chunk: Buffer, ...rest: unknown[]) => {
      got.push(Buffer.from(chunk));
      return write(chunk, ...rest);
    };
    client.on('error', () => undefined);
    handle(client).catch((err: Error) => {
      failures.push(err);
      client.destroy();
    });
  });
  served.set(server, []);
  rmSync(socketPath, { force: true });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return { server, received, failures };
}

/** Stops serving; the sessions' sockets are closed (the client is done with them). */
const close = (server: Server): Promise<void> =>
  new Promise((resolve) => {
    server.close(() => resolve());
    for (const sock of served.get(server) ?? []) sock.destroy();
  });
const served = new WeakMap<Server, Socket[]>();

function nixCli(args: string[]) {
  return run('nix', ['--extra-experimental-features', 'nix-command', ...args], { env, timeoutMs: 60_000 });
}

async function addClientPath(name: string): Promise<string> {
  const file = join(dir, name);
  writeFileSync(file, `${name}\n`);
  const added = await run('nix-store', ['--store', clientStore, '--add', file], { env });
  return added.stdout.trim();
}

const validInWorker = async (path: string) =>
  (await run('nix-store', ['--store', workerStore, '--check-validity', path], { env })).code === 0;

/** A session spliced at once: today's behaviour, and how each pool's first record is made. */
async function recordFromRealSession(
  protocol: HandshakeProtocol,
  client: () => Promise<{ code: number | null; stderr: string }>,
): Promise<{ record: HandshakeRecord; received: Buffer }> {
  const results: SpliceResult[] = [];
  const { server, received } = await serve(async (sock) => {
    const session = new EarlySession(sock, protocol, undefined);
    const upstream = startUpstream(protocol);
    const result = await session.splice(upstream);
    results.push(result);
    pipeOn(sock, upstream, result);
  });
  const done = await client();
  await close(server);
  if (done.code !== 0 || !results[0]?.record)
    throw new Error(`the recording session failed: ${JSON.stringify(done)} ${JSON.stringify(results)}`);
  return { record: results[0].record, received: Buffer.concat(received[0] ?? []) };
}

/** A real `nix copy` answered early; the worker is started only once the client waits in its first operation. */
async function earlyCopy(t: Test, protocol: HandshakeProtocol, record: HandshakeRecord): Promise<void> {
  const path = await addClientPath(`early-copy-${protocol}`);
  const started = upstreamsStarted;
  const { server, failures } = await serve(async (sock) => {
    const session = new EarlySession(sock, protocol, record);
    t.equal(await session.answered, true, 'opening answered from the record');
    const opening = session.heldBytes;
    // Held: the client got its answers and went on to its first operation.
    await new Promise<void>((resolve) => session.on('client-data', (held: number) => held > opening && resolve()));
    t.equal(upstreamsStarted, started, 'still no worker while the client waits in its first operation');
    const upstream = startUpstream(protocol);
    pipeOn(sock, upstream, await session.splice(upstream));
  });
  const copied = await nixCli(['copy', '--from', clientStore, '--to', storeUri(protocol), path]);
  await close(server);
  t.equal(copied.code, 0, `nix copy succeeded ${copied.stderr}`);
  t.same(failures, []);
  t.ok(await validInWorker(path), 'the path is in the worker store');
}

t.test('worker protocol: recorded from a real nix-daemon, answered early, spliced without a seam', async (t) => {
  const ping = () => nixCli(['store', 'ping', '--store', storeUri('worker')]);
  const { record, received: direct } = await recordFromRealSession('worker', ping);
  t.same(
    record,
    { protocol: 'worker', version: 0x122, features: null, nixVersion: '2.8.0', trust: null, startupMessages: [] },
    'Nix 2.8: protocol 1.34, its version string, no features or trust at 1.34',
  );

  t.test('a client served by the record alone, with no worker at all', async (t) => {
    const started = upstreamsStarted;
    let session: EarlySession | undefined;
    const { server, received } = await serve(async (sock) => {
      session = new EarlySession(sock, 'worker', record);
    });
    const pinged = await ping();
    t.equal(pinged.code, 0, 'nix store ping succeeded');
    t.match(pinged.stderr, /Version: 2\.8\.0/, 'with the recorded version string');
    t.equal(upstreamsStarted, started, 'no worker was started');
    t.equal(await session?.answered, true, 'the whole opening was answered');
    t.same(Buffer.concat(received[0] ?? []), direct, 'the client got the very bytes a real nix-daemon sent it');
    // The worker comes after the client left: its answers are checked and dropped.
    const result = await (session as EarlySession).splice(startUpstream('worker'));
    t.equal(result.changed, false, 'the worker answered as recorded');
    t.same(result.record, record);
    await close(server);
  });

  t.test('a client of the daemon socket sends SetOptions: answered early too', async (t) => {
    const socketPing = () => nixCli(['store', 'ping', '--store', `unix://${socketPath}`]);
    const direct = await recordFromRealSession('worker', socketPing);
    t.same(direct.record, record, 'the same record from a socket client');
    const started = upstreamsStarted;
    let session: EarlySession | undefined;
    const { server, received } = await serve(async (sock) => {
      session = new EarlySession(sock, 'worker', record);
    });
    const pinged = await socketPing();
    t.equal(pinged.code, 0, 'nix store ping succeeded');
    t.equal(upstreamsStarted, started, 'no worker was started');
    const early = Buffer.concat(received[0] ?? []);
    t.same(early, direct.received, 'the client got the very bytes a real nix-daemon sent it');
    t.same(
      early.subarray(-16),
      Buffer.from('73746c610000000073746c6100000000', 'hex'),
      'the last of them: STDERR_LAST of the opening, then of SetOptions',
    );
    const result = await (session as EarlySession).splice(startUpstream('worker'));
    t.equal(result.changed, false, "the worker's answers, SetOptions' too, checked and dropped");
    await close(server);
  });

  t.test('a real copy: the client sends its first operation before the worker exists', (t) => earlyCopy(t, 'worker', record));

  t.test('progress lines while the client waits reach it as log messages of its first operation', async (t) => {
    const path = await addClientPath('early-progress');
    const toStderr: string[] = [];
    const { server, failures } = await serve(async (sock) => {
      const session = new EarlySession(sock, 'worker', record);
      const progress = session.progressSink((line) => toStderr.push(line));
      progress('step 1/5: before the opening is answered (held until it is)');
      t.equal(await session.answered, true);
      const opening = session.heldBytes;
      progress('step 2/5: after the opening, before the first operation');
      await new Promise<void>((resolve) => session.on('client-data', (held: number) => held > opening && resolve()));
      progress('step 3/5: while the client waits in its first operation');
      const upstream = startUpstream('worker');
      pipeOn(sock, upstream, await session.splice(upstream));
      progress('after the splice: the worker owns the stream');
    });
    const copied = await nixCli(['copy', '--from', clientStore, '--to', storeUri('worker'), path]);
    await close(server);
    t.equal(copied.code, 0, `nix copy succeeded ${copied.stderr}`);
    t.same(failures, []);
    for (const step of ['step 1/5: before', 'step 2/5: after the opening', 'step 3/5: while the client waits'])
      t.match(copied.stderr, step, `Nix printed "${step}…"`);
    t.same(toStderr, ['after the splice: the worker owns the stream'], 'only the line after the splice went to stderr');
    t.ok(await validInWorker(path));
  });

  t.test('a record of another protocol version: one clear error, and the next session is right', async (t) => {
    const stale: HandshakeRecord = { ...record, version: 0x121 };
    const path = await addClientPath('mismatch-copy');
    const { server, failures } = await serve(async (sock) => {
      const session = new EarlySession(sock, 'worker', stale);
      await session.answered;
      const upstream = startUpstream('worker');
      pipeOn(sock, upstream, await session.splice(upstream));
    });
    const failed = await nixCli(['copy', '--from', clientStore, '--to', storeUri('worker'), path]);
    await close(server);
    t.not(failed.code, 0, 'the session failed');
    t.equal(failures.length, 1);
    const mismatch = failures[0] as HandshakeMismatch;
    t.type(mismatch, HandshakeMismatch);
    t.equal(
      mismatch.message,
      "the worker's Nix answered the handshake differently than recorded (protocol 1.34, not 1.33); the record is updated, so the next session is answered right",
    );
    t.equal(mismatch.record.version, 0x122, "the error carries the worker's real version");

    // The mismatch was seen in the first answer, so the new record lacks the version string yet:
    // the next session is answered as far as it goes, relays the rest, and completes the record.
    const results: SpliceResult[] = [];
    const next = await serve(async (sock) => {
      const session = new EarlySession(sock, 'worker', mismatch.record);
      const upstream = startUpstream('worker');
      const result = await session.splice(upstream);
      results.push(result);
      pipeOn(sock, upstream, result);
    });
    const copied = await nixCli(['copy', '--from', clientStore, '--to', storeUri('worker'), path]);
    await close(next.server);
    t.equal(copied.code, 0, `the next session succeeded ${copied.stderr}`);
    t.ok(await validInWorker(path));
    t.same(results[0]?.record, record, 'and left the whole record, so the one after is answered early whole');
  });
});

t.test('serve protocol: recorded from a real nix-store --serve, answered early, spliced', async (t) => {
  const first = await addClientPath('serve-first');
  const { record } = await recordFromRealSession('serve', () => nixCli(['copy', '--from', clientStore, '--to', storeUri('serve'), first]));
  t.same(record, { protocol: 'serve', version: 0x207 }, 'Nix 2.8 serves 2.7');
  t.ok(await validInWorker(first));

  t.test('early answer, then a real copy through the splice', (t) => earlyCopy(t, 'serve', record));
  t.test('progress lines stay on stderr: the serve protocol has no log messages', async (t) => {
    const { server } = await serve(async (sock) => {
      const session = new EarlySession(sock, 'serve', record);
      const toStderr = (): void => undefined;
      t.equal(session.progressSink(toStderr), toStderr, 'the sink is stderr itself');
    });
    await nixCli(['store', 'ping', '--store', storeUri('serve')]);
    await close(server);
  });

  t.test('a record of another version fails the session with the clear line', async (t) => {
    const path = await addClientPath('serve-mismatch');
    const { server, failures } = await serve(async (sock) => {
      const session = new EarlySession(sock, 'serve', { protocol: 'serve', version: 0x206 });
      await session.answered;
      const upstream = startUpstream('serve');
      pipeOn(sock, upstream, await session.splice(upstream));
    });
    const failed = await nixCli(['copy', '--from', clientStore, '--to', storeUri('serve'), path]);
    await close(server);
    t.not(failed.code, 0);
    t.match(failures[0]?.message, /protocol 2\.7, not 2\.6/);
    t.same((failures[0] as HandshakeMismatch).record, { protocol: 'serve', version: 0x207 });
  });
});
