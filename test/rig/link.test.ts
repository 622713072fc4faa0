/**
 * The link emulator of the rig: a raw TCP copy through it reaches the set rate in each direction
 * (and no more), the round trip of small messages is twice the one-way delay, and the byte
 * counters count what crossed.
 */
import t from 'tap';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { HOME, LinkRelay, linkProfile, type LaneQueueStats, type LinkProfile } from './link.js';

const HOST = '127.0.0.1';

/** Waits for a condition the code under test brings about (no deadline of its own: tap's timeout is the bound). */
async function waitFor(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((r) => setTimeout(r, 5));
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen({ host: HOST, port: 0 }, resolve));
  return (server.address() as { port: number }).port;
}

async function relayTo(server: Server, profile: LinkProfile): Promise<LinkRelay> {
  return LinkRelay.start({ listenHost: HOST, listenPort: 0, targetHost: HOST, targetPort: await listen(server), profile });
}

function connected(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: HOST, port }, () => resolve(s));
    s.once('error', reject);
  });
}

/** Sends `bytes` one way and returns the rate seen by the receiver, in bit/s (first byte sent → last byte received, less one delay). */
async function copyRate(
  direction: 'up' | 'down',
  bytes: number,
  profile: LinkProfile,
): Promise<{ bitsPerSecond: number; relay: LinkRelay }> {
  const payload = Buffer.alloc(bytes, 0x5a);
  let received = 0;
  let started = 0;
  const done = new Promise<number>((resolve) => {
    const count = (s: Socket): void => {
      s.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received === bytes) resolve(performance.now());
      });
    };
    const server = createServer((s) => {
      if (direction === 'up') count(s);
      else {
        started = performance.now();
        s.end(payload);
      }
    });
    servers.push(server);
    void relayTo(server, profile).then(async (relay) => {
      relays.push(relay);
      const client = await connected(relay.port);
      sockets.push(client);
      if (direction === 'up') {
        started = performance.now();
        client.end(payload);
      } else count(client);
    });
  });
  const finished = await done;
  const relay = relays[relays.length - 1] as LinkRelay;
  return { bitsPerSecond: (bytes * 8 * 1000) / (finished - started - profile.delayMs), relay };
}

/**
 * The rate as a share of the set one, in up to three copies: the upper bound must hold for each,
 * the lower one for the best. The relay shares two cores with the test's own sender and receiver,
 * so a copy slowed by the machine says nothing about the emulator, while one over the set rate does.
 */
async function rateShares(
  direction: 'up' | 'down',
  bytes: number,
  profile: LinkProfile,
  setRate: number,
): Promise<{ shares: number[]; relay: LinkRelay }> {
  const shares: number[] = [];
  let relay: LinkRelay | undefined;
  while (shares.length < 3 && (shares.length === 0 || Math.max(...shares) < 0.9)) {
    const copy = await copyRate(direction, bytes, profile);
    shares.push(copy.bitsPerSecond / setRate);
    relay = copy.relay;
  }
  return { shares, relay: relay as LinkRelay };
}

const percents = (shares: number[]): string => shares.map((s) => `${(s * 100).toFixed(1)} %`).join(', ');

const servers: Server[] = [];
const relays: LinkRelay[] = [];
const sockets: Socket[] = [];
t.teardown(async () => {
  for (const s of sockets) s.destroy();
  await Promise.all(relays.map((r) => r.stop()));
  for (const s of servers) s.close();
});

t.test('upload: a copy through the home profile runs at 90–100 % of 40 Mbit/s, and the counter counts it', async (t) => {
  const bytes = 5_000_000; // ≈ 1 s at 40 Mbit/s
  const { shares, relay } = await rateShares('up', bytes, HOME, HOME.upBitsPerSecond);
  t.ok(
    shares.every((s) => s <= 1.0),
    `never above the set rate: ${percents(shares)}`,
  );
  t.ok(Math.max(...shares) >= 0.9, `at least 90 % of it: ${percents(shares)}`);
  t.equal(relay.bytes.up, bytes, 'every byte counted upwards');
  t.equal(relay.bytes.down, 0, 'nothing came back');
});

t.test('download: a copy through the home profile runs at 90–100 % of 250 Mbit/s', async (t) => {
  const bytes = 25_000_000; // ≈ 0.8 s at 250 Mbit/s
  const { shares, relay } = await rateShares('down', bytes, HOME, HOME.downBitsPerSecond);
  t.ok(
    shares.every((s) => s <= 1.0),
    `never above the set rate: ${percents(shares)}`,
  );
  t.ok(Math.max(...shares) >= 0.9, `at least 90 % of it: ${percents(shares)}`);
  t.equal(relay.bytes.down, bytes, 'every byte counted downwards');
});

t.test('a round trip of small messages takes 2 × the one-way delay (within 10 %)', async (t) => {
  const server = createServer((s) => s.pipe(s));
  servers.push(server);
  const relay = await relayTo(server, HOME);
  relays.push(relay);
  const client = await connected(relay.port);
  sockets.push(client);
  client.setNoDelay(true);
  const expected = 2 * HOME.delayMs;
  // Rounds of 20 pings, up to three (as for the rates: a busy machine can only add time).
  const medians: number[] = [];
  let fastest = Number.POSITIVE_INFINITY;
  while (medians.length < 3 && (medians.length === 0 || Math.min(...medians) > expected * 1.1)) {
    const rtts: number[] = [];
    for (let i = 0; i < 20; i++) {
      const sent = performance.now();
      await new Promise<void>((resolve) => {
        client.once('data', () => resolve());
        client.write('ping');
      });
      rtts.push(performance.now() - sent);
    }
    rtts.sort((a, b) => a - b);
    fastest = Math.min(fastest, rtts[0] as number);
    medians.push(rtts[10] as number);
  }
  const shown = medians.map((m) => `${m.toFixed(1)} ms`).join(', ');
  t.ok(
    fastest >= expected * 0.9,
    `no round trip shorter than 2 × the delay less 10 %: fastest ${fastest.toFixed(1)} ms, expected ${expected} ms`,
  );
  t.ok(Math.min(...medians) <= expected * 1.1, `median round trip within 10 %: ${shown}, expected ${expected} ms`);
  t.equal(relay.bytes.up, 4 * 20 * medians.length, 'bytes up counted');
  t.equal(relay.bytes.down, 4 * 20 * medians.length, 'bytes down counted');
});

t.test("the queue pushes back: a sender faster than the link is held to the link's buffer", async (t) => {
  // The far side reads, so the link is the limit. How much the kernel's socket buffers absorb on
  // the way (autotuned, several MB on loopback) is not the emulator's to say, so this checks only
  // what the emulator decides: the bytes it lets cross, and that its own queue stays bounded
  // because it pauses its source instead of reading on.
  const profile = linkProfile('8/8/10');
  let serverSocket: Socket | undefined;
  const server = createServer((s) => (serverSocket = s));
  servers.push(server);
  const relay = await relayTo(server, profile);
  relays.push(relay);
  const client = await connected(relay.port);
  sockets.push(client);
  // 32 MB into a 1 MB/s link: more than any kernel buffer holds, so the relay's queue must fill.
  const sent = Date.now();
  client.write(Buffer.alloc(32_000_000));
  await waitFor(() => (relay.queues.up[0]?.pauses ?? 0) > 0);
  await new Promise((r) => setTimeout(r, 300));
  const lane = relay.queues.up[0] as LaneQueueStats;
  const elapsedMs = Date.now() - sent;
  // At 1 MB/s, no more than the elapsed time's worth (plus the one slice the wire may start early).
  const allowed = (profile.upBitsPerSecond / 8) * (elapsedMs / 1000) + 16 * 1024;
  t.ok(relay.bytes.up <= allowed, `${relay.bytes.up} bytes crossed in ${elapsedMs} ms at 8 Mbit/s (at most ${Math.round(allowed)})`);
  t.ok(lane.pauses >= 1, `the source was paused ${lane.pauses} times`);
  // One socket read (at most 64 KiB) can land on a queue just under its limit.
  t.ok(lane.peakQueued <= lane.limit + 64 * 1024, `the relay held at most ${lane.peakQueued} bytes (limit ${lane.limit})`);
  serverSocket?.destroy();
  client.destroy();
});

t.test('profiles by name or as UP/DOWN/DELAY', async (t) => {
  t.equal(linkProfile('home'), HOME);
  t.same(linkProfile('100/200/5'), { name: '100/200/5', upBitsPerSecond: 100e6, downBitsPerSecond: 200e6, delayMs: 5 });
  t.throws(() => linkProfile('fast'), /expected home, office or UP_MBIT\/DOWN_MBIT\/DELAY_MS/);
});
