/**
 * The Nix side vanishes (SIGKILL of ssh, as Nix always does) 200 times in a row: no connection,
 * channel, session slot, timer or listener may leak; the idle timer starts; and no secret ever
 * reaches the log. The daemon runs in this process so its insides can be counted.
 */
import t from 'tap';
import { SPARE_RELAYS } from '../../src/ssh/worker-link.js';
import type { EventEmitter } from 'node:events';
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { openChannelCount } from '../../src/ssh/ssh2-internals.js';
import { Rig, TOKEN, waitUntil } from '../rig/rig.js';

const SERVE_HELLO = Buffer.from('eb9d0c39000000000702000000000000', 'hex');
const SERVE_MAGIC = Buffer.from('cbee525400000000', 'hex');

function timers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

t.test('200 abrupt sessions leak nothing, and logs hold no secret', async (t) => {
  const rig = await Rig.start({ pool: { idleTimeout: '10m' } });
  t.teardown(() => rig.stop());
  const { daemon, lines: logLines, config } = await rig.startInProcessDaemon({ level: 'debug' });
  t.teardown(() => daemon.stop());

  const session = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const ssh = spawn('ssh', rig.sshArgs(daemon, ['nix-store --serve --write']), { stdio: ['pipe', 'pipe', 'ignore'] });
      let got = Buffer.alloc(0);
      const timer = setTimeout(() => {
        ssh.kill('SIGKILL');
        reject(new Error('no serve handshake answer within 60 s'));
      }, 60_000);
      ssh.stdout.on('data', (d: Buffer) => {
        got = Buffer.concat([got, d]);
        if (got.length >= 8) {
          clearTimeout(timer);
          if (!got.subarray(0, 8).equals(SERVE_MAGIC)) reject(new Error(`unexpected answer ${got.toString('hex')}`));
          ssh.kill('SIGKILL');
        }
      });
      ssh.once('exit', () => resolve());
      ssh.stdin.on('error', () => undefined);
      ssh.stdin.write(SERVE_HELLO);
    });

  await session();
  const pool = daemon.pools.get('x86_64');
  const worker = pool?.workers[0];
  t.ok(worker?.link?.connection, 'a worker is up');
  await waitUntil(() => daemon.endpoint.activeSessions === 0, 10_000);
  const workerSocket = (worker?.link?.connection as unknown as { _sock?: EventEmitter } | undefined)?._sock;
  const baseline = {
    timers: timers(),
    clientListeners: worker?.link?.connection?.listenerCount('close') ?? -1,
    drainListeners: workerSocket?.listenerCount('drain') ?? -1,
  };

  const rounds = 200;
  for (let i = 0; i < rounds; i++) await session();
  await waitUntil(
    () =>
      daemon.endpoint.activeSessions === 0 &&
      daemon.endpoint.connections.size === 0 &&
      openChannelCount(worker!.link!.connection!) === worker!.link!.spareRelays,
    15_000,
  );

  t.equal(daemon.endpoint.connections.size, 0, 'no client connection left');
  t.equal(daemon.endpoint.activeSessions, 0, 'no session left');
  t.equal(worker ? pool?.sessionsOn(worker) : -1, 0, 'no session slot held');
  // Compression "zstd" (the default) keeps relays started ahead of sessions, each in a channel.
  t.equal(worker!.link!.spareRelays, SPARE_RELAYS, 'the spare relays are there, and no more');
  t.equal(openChannelCount(worker!.link!.connection!), SPARE_RELAYS, 'no channel left open on the worker connection but theirs');
  t.ok(timers() <= baseline.timers + 2, `timers: ${timers()} now, ${baseline.timers} before`);
  t.equal(worker?.link?.connection?.listenerCount('close'), baseline.clientListeners, 'no listener piled up on the worker connection');
  t.ok(workerSocket, 'the worker connection has its socket');
  t.equal(workerSocket?.listenerCount('drain'), baseline.drainListeners, "no write-gate waiter piled up on the worker's socket");
  t.equal(daemon.endpoint.trackedSockets, 0, 'no client socket left tracked for its write gate');
  t.equal(rig.fake.servers().length, 1, 'one server served all sessions');
  t.ok(worker?.record.idleSince, 'the idle timer started after the last session');
  const started = logLines.filter((l) => l.includes('"session started"')).length;
  t.equal(started, rounds + 1, 'every session was piped to the worker');
  await waitUntil(() => false, 1000);
  const server = rig.fake.servers()[0];
  const sshdPid = readFileSync(join(server?.dir as string, 'sshd.pid'), 'utf8').trim();
  t.equal(serveProcessesInNamespaceOf(sshdPid), 0, 'no nix-store process left running on the worker');

  // Secrets: the token, the worker's login key, the endpoint's and the worker's host private keys.
  const state = JSON.parse(readFileSync(join(config.stateDir, 'state.json'), 'utf8')) as { workers: { loginPrivateKey: string }[] };
  const secrets = [
    TOKEN,
    ...state.workers.map((w) => keyBody(w.loginPrivateKey)),
    keyBody(readFileSync(join(config.stateDir, 'ssh_host_ed25519_key'), 'utf8')),
    ...rig.fake
      .servers()
      .map((s) =>
        keyBody(
          (JSON.parse((s.userData ?? '').replace(/^#cloud-config\n/, '')) as { ssh_keys: { ed25519_private: string } }).ssh_keys
            .ed25519_private,
        ),
      ),
  ];
  t.equal(secrets.length, 4);
  const hostKeyPem = readFileSync(join(config.stateDir, 'ssh_host_ed25519_key'), 'utf8');
  t.ok(JSON.stringify({ key: hostKeyPem }).includes(keyBody(hostKeyPem)), 'the check would see a key logged as JSON');
  const allLogs = logLines.join('');
  for (const secret of secrets)
    t.notOk(allLogs.includes(secret), `a secret (${secret.slice(0, 6)}…) is not in ${logLines.length} log lines`);
});

/**
 * The third base64 line of an OpenSSH private key: it holds private key bytes, and stays whole in
 * any copy of the key, JSON-escaped or not (the first lines are the same for every key).
 */
function keyBody(pem: string): string {
  const line = pem.split('\n').filter((l) => l && !l.startsWith('-----'))[2];
  if (!line || line.length < 40) throw new Error('not an OpenSSH private key');
  return line;
}

/** `nix-store --serve` processes in the worker's own mount namespace (other runs on the machine do not count). */
function serveProcessesInNamespaceOf(pid: string): number {
  const ns = readlinkSync(`/proc/${pid}/ns/mnt`);
  let count = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readlinkSync(`/proc/${entry}/ns/mnt`) !== ns) continue;
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').slice(0, 2).join(' ').endsWith('nix-store --serve')) count++;
    } catch {
      // gone meanwhile
    }
  }
  return count;
}
