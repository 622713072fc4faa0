/**
 * isChannelRefusal on the errors ssh2 really gives: a server's SSH_MSG_CHANNEL_OPEN_FAILURE is a
 * refusal (another connection may take the session); a channel closed instead (ssh2 gives that
 * error a `reason` too, '') or a connection that dies while the channel opens is not.
 */
import t from 'tap';
import type { AddressInfo } from 'node:net';
import ssh2 from 'ssh2';
import type { Connection } from 'ssh2';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { execChannel, isChannelRefusal } from '../../src/ssh/worker-connection.js';

/** The error of opening one exec channel on a server that handles the channel open with `onSession`. */
async function openError(onSession: (conn: Connection, reject: () => void) => void): Promise<unknown> {
  const server = new ssh2.Server({ hostKeys: [generateKeyPair('test-host').privateKey] }, (conn) => {
    conn.on('error', () => undefined);
    conn.on('authentication', (ctx) => ctx.accept());
    conn.on('ready', () => conn.on('session', (_accept, reject) => onSession(conn, reject)));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const client = new ssh2.Client();
  client.on('error', () => undefined);
  try {
    await new Promise<void>((resolve, reject) => {
      client.once('ready', resolve).once('error', reject);
      client.connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port, username: 'u', password: 'p' });
    });
    await execChannel(client, 'true');
    return undefined;
  } catch (err) {
    return err;
  } finally {
    client.end();
    server.close();
  }
}

t.test("a server's refusal to open the channel is a refusal", async (t) => {
  const err = await openError((_conn, reject) => reject());
  t.type(err, Error);
  t.equal((err as { reason?: unknown }).reason, 2, 'ssh2 passes the SSH reason code (CONNECT_FAILED, as OpenSSH for MaxSessions)');
  t.equal(isChannelRefusal(err), true);
});

t.test('ADMINISTRATIVELY_PROHIBITED (older OpenSSH) and RESOURCE_SHORTAGE are refusals; UNKNOWN_CHANNEL_TYPE is not', async (t) => {
  const withReason = (reason: number): Error => Object.assign(new Error('(SSH) Channel open failure: open failed'), { reason });
  t.equal(isChannelRefusal(withReason(1)), true);
  t.equal(isChannelRefusal(withReason(4)), true);
  t.equal(isChannelRefusal(withReason(3)), false);
});

t.test("a channel closed instead of refused is no refusal, although ssh2 gives it a `reason` ('')", async (t) => {
  // As ssh2 1.17 makes it (lib/utils.js, onChannelOpenFailure) when CHANNEL_CLOSE answers the open.
  const err = Object.assign(new Error('(SSH) Channel open failure: server closed channel unexpectedly'), { reason: '' });
  t.equal(isChannelRefusal(err), false);
});

t.test('a connection that ends while the channel opens is no refusal', async (t) => {
  const err = await openError((conn) => conn.end());
  t.type(err, Error, String(err));
  t.equal(isChannelRefusal(err), false);
});

t.test('errors by message text alone are no refusal', async (t) => {
  t.equal(isChannelRefusal(new Error('No free channels available')), false);
  t.equal(isChannelRefusal(new Error('(SSH) Channel open failure: open failed')), false);
  t.equal(isChannelRefusal('open failed'), false);
});
