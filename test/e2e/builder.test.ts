/**
 * The builder, end to end: real nix-build → our daemon → a worker of the fake cloud (real sshd,
 * its own /nix store) and back, for ssh-ng:// and ssh://.
 */
import t from 'tap';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Rig } from '../rig/rig.js';
import { installHello, nixInstall, testedSuites, type NixSuite } from '../rig/nix-client.js';
import { hello } from '../rig/nix-handshake.js';

/**
 * The Nix versions users run, as clients: this machine's 2.8 (bookworm) and Debian's newer ones
 * (trixie, sid) with the machine's Nix on the workers, so an older worker than the client; and
 * 2.8 building on workers that run sid's Nix, a newer worker than the client.
 */
const versions: { client: NixSuite; workerNix?: NixSuite }[] = [
  ...testedSuites().map((client) => ({ client })),
  ...(testedSuites().includes('sid') ? [{ client: 'bookworm' as const, workerNix: 'sid' as const }] : []),
];

for (const { client, workerNix } of versions) {
  for (const scheme of ['ssh-ng', 'ssh'] as const) {
    const workers = workerNix === undefined ? '' : `, workers on ${workerNix}'s Nix`;
    t.test(
      `${scheme}://, ${client}'s Nix as the client${workers}: a build runs on a booted worker, and the idle timer deletes it`,
      async (t) => {
        const rig = await Rig.start({ pool: { idleTimeout: '3s' }, client, ...(workerNix === undefined ? {} : { workerNix }) });
        t.teardown(() => rig.stop());
        const daemon = await rig.startDaemon();
        const nonce = `${scheme}-${client}-${Date.now()}`;

        const result = await rig.nixBuild(daemon, { scheme, nonces: [nonce] });
        t.equal(result.code, 0, `nix-build of ${rig.client.name} succeeded`, { stderr: result.stderr });
        t.equal(result.outPaths.length, 1);
        const outPath = result.outPaths[0] as string;
        t.equal(
          readFileSync(rig.client.local(outPath), 'utf8'),
          `built by nix-hcloud-builder ${nonce}\n`,
          "the output was copied back to the client's store",
        );

        const servers = rig.fake.servers();
        t.equal(servers.length, 1, 'one server was created');
        const server = servers[0];
        t.ok(server && existsSync(join(server.storeDir, 'store', basename(outPath))), "the output was built in the worker's own store");
        t.match(result.stderr + daemon.raw.join('\n'), /created server/);
        if (workerNix !== undefined) {
          // The worker's nix-daemon, asked through the endpoint, answers as that version's does.
          const answer = await hello('daemon', 'ssh', rig.sshArgs(daemon, ['nix-daemon', '--stdio']));
          t.same(answer, await installHello(nixInstall(workerNix), 'daemon'), `the worker runs ${workerNix}'s nix-daemon`);
          t.not(
            answer.version,
            (await installHello(rig.client.install, 'daemon')).version,
            'which speaks a newer protocol than the client',
          );
        }

        const booted = await daemon.waitForMsg(/is ready after/);
        t.type(booted.bootMs, 'number');
        await daemon.waitForMsg(/deleted server/, 30_000);
        t.same(rig.fake.liveServers(), [], 'the idle timer deleted the server');
        t.same(rig.fake.schemaErrors, [], 'every fake API answer matched openapi.json');

        t.equal(await daemon.stop(), 0, 'SIGTERM stops the daemon cleanly');
      },
    );
  }
}

t.test('4 parallel builds on a pool with maxWorkers 1 create exactly one server', async (t) => {
  const rig = await Rig.start({ pool: { maxWorkers: 1, jobsPerWorker: 8, idleTimeout: '2s' }, fake: { bootDelayMs: 1500 } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  const nonces = [1, 2, 3, 4].map((i) => `par-${i}-${Date.now()}`);
  const result = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces, sleep: 2, maxJobs: 4 });
  t.equal(result.code, 0, 'nix-build succeeded', { stderr: result.stderr });
  t.equal(result.outPaths.length, 4);
  t.equal(rig.fake.servers().length, 1, 'one server for four builds');
  const started = daemon.lines.filter((l) => l.msg === 'session started');
  t.ok(started.length >= 4, `${started.length} sessions were piped`);
  t.equal(new Set(started.map((l) => l.worker)).size, 1, 'all on the same worker');
  await daemon.waitForMsg(/deleted server/, 30_000);
  t.same(rig.fake.liveServers(), []);
});

t.test('large outputs come back through the pipe (backpressure both ways), ssh-ng and ssh', async (t) => {
  const rig = await Rig.start({ pool: { idleTimeout: '2s' } });
  t.teardown(() => rig.stop());
  const daemon = await rig.startDaemon();
  for (const scheme of ['ssh-ng', 'ssh'] as const) {
    const result = await rig.nixBuild(daemon, { scheme, nonces: [`big-${scheme}-${Date.now()}`], mib: 64 });
    t.equal(result.code, 0, `${scheme}: a 64 MiB output was copied back`, { stderr: result.stderr });
    const out = result.outPaths[0] as string;
    t.equal(statSync(out).size, 64 * 1024 * 1024, `${scheme}: all of it`);
  }
});
