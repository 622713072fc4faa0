/**
 * The endpoint's sessions against a pool the test drives by hand: no client can end the daemon.
 * A client that leaves while its worker boots gets no more writes; a second command on one
 * session is refused and the first goes on.
 */
import t from 'tap';
import type { ClientChannel } from 'ssh2';
import type { AcquireOptions, SessionLease, SessionPool } from '../../src/ssh/endpoint.js';
import { login, startEndpoint } from './endpoint-harness.js';

/** A pool whose acquire() waits until the test settles it; `called` resolves with each call's options. */
class HeldPool implements SessionPool {
  readonly calls: AcquireOptions[] = [];
  private settle: { reject(err: Error): void } | undefined;
  private onCall: ((options: AcquireOptions) => void) | undefined;

  acquire(options: AcquireOptions): Promise<SessionLease> {
    this.calls.push(options);
    this.onCall?.(options);
    return new Promise((_resolve, reject) => (this.settle = { reject }));
  }

  /** The options of the next acquire() call (or of the last one, if made already). */
  called(): Promise<AcquireOptions> {
    const last = this.calls.at(-1);
    if (last) return Promise.resolve(last);
    return new Promise((resolve) => (this.onCall = resolve));
  }

  fail(err: Error): void {
    this.settle?.reject(err);
  }
}

function exec(client: import('ssh2').Client, command: string): Promise<ClientChannel> {
  return new Promise((resolve, reject) => client.exec(command, (err, channel) => (err ? reject(err) : resolve(channel))));
}

function collect(channel: ClientChannel): { stderr: () => string; exit: Promise<number | undefined> } {
  let text = '';
  channel.stderr.on('data', (chunk: Buffer) => (text += chunk.toString()));
  const exit = new Promise<number | undefined>((resolve) => {
    let code: number | undefined;
    channel.on('exit', (c: number | null) => (code = c ?? undefined));
    channel.on('close', () => resolve(code));
  });
  channel.resume();
  return { stderr: () => text, exit };
}

const turns = (n: number): Promise<void> =>
  n <= 0 ? Promise.resolve() : new Promise((r) => setImmediate(() => void turns(n - 1).then(r)));

t.test('a client that left during the boot: a progress line for it is dropped, the daemon goes on', async (t) => {
  const pool = new HeldPool();
  const { port, clientKey } = await startEndpoint(t, { pools: new Map([['x86_64', pool]]) });
  const client = await login(t, port, clientKey);
  const channel = await exec(client, 'nix-daemon --stdio');
  const options = await pool.called();
  // The endpoint answers the client's close with its own: once the client sees it, the endpoint's
  // side of the channel is closed and its stderr ended.
  // The client reads no stderr: once its window (2 MiB) is full, the endpoint's stderr holds a
  // write, and the end ssh2 gives it at the client's close stays pending.
  for (let i = 0; i < 3 * 1024; i++) options.progress(`nix-hcloud-builder: boot progress ${'.'.repeat(1000)}`);
  const closed = new Promise((resolve) => channel.once('close', resolve));
  channel.resume();
  channel.close();
  await closed;
  t.ok(options.signal.aborted, 'the pool is told that the client left (it drops its progress listener)');
  // A boot step said to the leaver all the same (a pool that still holds its listener).
  options.progress('nix-hcloud-builder: boot step 3/5: waiting for ssh');
  await turns(3);
  t.pass('no unhandled write-after-end error');

  const again = collect(await exec(client, 'nix-daemon --stdio'));
  await pool.called();
  t.equal(pool.calls.length, 2, 'a second session reaches the pool');
  pool.calls[1]?.progress('nix-hcloud-builder: boot step 1/5');
  pool.fail(new Error('no worker today'));
  t.equal(await again.exit, 1);
  t.match(again.stderr(), /boot step 1\/5\n.*no worker today/s, 'the same connection still gets sessions served');
});

const SECOND_REQUESTS: [string, (protocol: Ssh2ClientProtocol, id: number) => void][] = [
  ['exec', (p, id) => p.exec(id, 'nix-store --serve --write', true)],
  ['shell', (p, id) => p.shell(id, true)],
  ['subsystem', (p, id) => p.subsystem(id, 'sftp', true)],
];

interface Ssh2ClientProtocol {
  exec(id: number, command: string, wantReply: boolean): void;
  shell(id: number, wantReply: boolean): void;
  subsystem(id: number, name: string, wantReply: boolean): void;
}

/** ssh2's client sends one request per channel; its protocol object can send another on the same channel. */
function secondRequest(channel: ClientChannel, send: (protocol: Ssh2ClientProtocol, id: number) => void): Promise<'refused' | 'accepted'> {
  const internals = channel as unknown as {
    _callbacks: ((failed: boolean) => void)[];
    _client: { _protocol: Ssh2ClientProtocol };
    outgoing: { id: number };
  };
  return new Promise((resolve) => {
    internals._callbacks.push((failed) => resolve(failed ? 'refused' : 'accepted'));
    send(internals._client._protocol, internals.outgoing.id);
  });
}

for (const [request, send] of SECOND_REQUESTS) {
  t.test(`a second request (${request}) on a running session is refused; the session and its connection go on`, async (t) => {
    const pool = new HeldPool();
    const { port, clientKey, logged } = await startEndpoint(t, { pools: new Map([['x86_64', pool]]) });
    const client = await login(t, port, clientKey);
    let dropped = false;
    client.on('close', () => (dropped = true));
    const channel = await exec(client, 'nix-daemon --stdio');
    const session = collect(channel);
    const options = await pool.called();
    const dropNoticed = new Promise<'dropped'>((resolve) => client.once('close', () => resolve('dropped')));
    t.equal(await Promise.race([secondRequest(channel, send), dropNoticed]), 'refused');
    t.equal(pool.calls.length, 1, 'the second request ran nothing');
    options.progress('nix-hcloud-builder: boot step 4/5');
    pool.fail(new Error('the boot failed'));
    t.equal(await session.exit, 1, 'the first command ends with its own status');
    t.match(session.stderr(), /boot step 4\/5\n.*the boot failed/s, 'and its own lines');
    t.notOk(dropped, 'the connection was kept');
    t.match(logged(), /refused: a second command on one session/);
  });
}
