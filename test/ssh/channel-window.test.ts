/**
 * src/ssh/channel-window.ts on a real ssh2 connection: while the server does not read, the client may
 * send only the window we granted; once the server reads, everything arrives intact. The same
 * test without the limit shows ssh2's 2 MiB (so the assertion can fail).
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import ssh2 from 'ssh2';
import type { ClientChannel, ServerChannel } from 'ssh2';
import { CLIENT_WINDOW, limitChannelWindows } from '../../src/ssh/channel-window.js';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { PAUSED_READ_BUFFER } from '../../src/ssh/session-pipe.js';
import { limitReadBuffer } from '../../src/ssh/ssh2-internals.js';

const PAYLOAD = randomBytes(8 * 1024 * 1024);

interface Run {
  /** Bytes that reached the paused server channel before it read anything. */
  heldWhilePaused: number;
  /** The largest window the client saw granted. */
  largestGrant: number;
  received: Buffer;
  limited: boolean;
}

async function transfer(limit: boolean, limitRead = true): Promise<Run> {
  const hostKey = generateKeyPair('test-host').privateKey;
  let limited = false;
  const gotChannel = new Promise<ServerChannel>((resolve) => {
    const server = new ssh2.Server({ hostKeys: [hostKey] }, (conn) => {
      if (limit) limited = limitChannelWindows(conn);
      conn.on('authentication', (ctx) => ctx.accept());
      conn.on('ready', () => {
        conn.on('session', (accept) => {
          accept().on('exec', (acceptExec) => {
            const channel = acceptExec();
            channel.pause();
            if (limitRead) limitReadBuffer(channel, PAUSED_READ_BUFFER);
            resolve(channel);
          });
        });
      });
    });
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      const client = new ssh2.Client();
      client.on('ready', () => {
        client.exec('cat', (err, channel: ClientChannel) => {
          if (err) throw err;
          const outgoing = (channel as unknown as { outgoing: { window: number } }).outgoing;
          let largest = outgoing.window;
          const watch = setInterval(() => (largest = Math.max(largest, outgoing.window)), 1);
          channel.end(PAYLOAD);
          void gotChannel.then(async (ch) => {
            await sleep(300); // let the client send all the window allows
            const heldWhilePaused = ch.readableLength;
            const chunks: Buffer[] = [];
            ch.on('data', (c: Buffer) => chunks.push(c));
            ch.resume();
            await once(ch, 'end');
            clearInterval(watch);
            client.end();
            server.close();
            done({ heldWhilePaused, largestGrant: largest, received: Buffer.concat(chunks), limited });
          });
        });
      });
      client.connect({ host: '127.0.0.1', port, username: 'u', password: 'p' });
    });
  });
  let done!: (r: Run) => void;
  const finished = new Promise<Run>((resolve) => (done = resolve));
  await gotChannel;
  return finished;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

t.test('a client channel gets CLIENT_WINDOW, topped up as it is read, and the data arrives intact', async (t) => {
  const run = await transfer(true);
  t.ok(run.limited, 'ssh2 internals are as expected (the limit is in force)');
  t.ok(run.largestGrant <= CLIENT_WINDOW, `the client never had more than ${CLIENT_WINDOW} bytes of window (had ${run.largestGrant})`);
  t.ok(run.heldWhilePaused <= CLIENT_WINDOW, `a paused channel held ${run.heldWhilePaused} bytes, at most the window`);
  t.ok(run.heldWhilePaused > 0, 'the client did send up to the window');
  t.equal(run.received.length, PAYLOAD.length, 'all 8 MiB arrived');
  t.equal(sha(run.received), sha(PAYLOAD), 'byte for byte');
});

t.test('without the limit, ssh2 grants 2 MiB (what the limit is for)', async (t) => {
  const run = await transfer(false);
  t.ok(run.largestGrant > CLIENT_WINDOW, `ssh2's own grant: ${run.largestGrant}`);
  t.ok(run.heldWhilePaused > CLIENT_WINDOW, `a paused channel held ${run.heldWhilePaused} bytes`);
  t.equal(sha(run.received), sha(PAYLOAD));
});

t.test(
  "with ssh2's 2 MiB read buffer as well, a paused channel holds more than its window: limitReadBuffer is what stops it",
  async (t) => {
    const run = await transfer(false, false);
    t.ok(run.heldWhilePaused > 2 * 1024 * 1024, `a paused channel held ${run.heldWhilePaused} bytes`);
    t.equal(sha(run.received), sha(PAYLOAD));
  },
);
