/**
 * The demo: a fake Hetzner cloud (real sshd + Nix workers on 127.0.0.N), our daemon, and a real
 * `nix-build --max-jobs 0` through it. Prints what happened, step by step.
 */
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Rig } from '../test/rig/rig.js';

const say = (line: string): void => void process.stdout.write(`${line}\n`);

const rig = await Rig.start({ pool: { idleTimeout: '5s' }, fake: { bootDelayMs: 2000, readyDelayMs: 1000 } });
try {
  say(`1. fake Hetzner API at ${rig.fake.url} (its servers boot in 2 s, then 1 s to "ready")`);
  const daemon = await rig.startDaemon();
  say(`2. nix-hcloud-builder listening on 127.0.0.1:${daemon.port}; machines line:`);
  say(`     ${rig.machinesLine('ssh-ng', 'x86_64', 4).replace(/ \S+$/, ' <host key>')}`);
  const nonce = `demo-${Date.now()}`;
  say(`3. nix-build --max-jobs 0 (no local builds allowed) of a derivation named nhb-test-${nonce} ...`);
  const started = Date.now();
  const result = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [nonce] });
  if (result.code !== 0) throw new Error(`nix-build failed:\n${result.stderr}`);
  const outPath = result.outPaths[0] as string;
  say(`   done in ${((Date.now() - started) / 1000).toFixed(1)} s: ${outPath}`);
  for (const line of result.stderr.split('\n').filter((l) => l.includes('nix-hcloud-builder:'))) say(`     | ${line.trim()}`);

  const created = daemon.lines.find((l) => /boot step 1\/5/.test(l.msg));
  const ready = daemon.lines.find((l) => /is ready after/.test(l.msg));
  const server = rig.fake.servers()[0];
  if (!server || !created || !ready) throw new Error('no server was created');
  say(`4. server created: ${server.name} (id ${server.id}, ${server.serverType} in ${server.location}, address ${server.address})`);
  say(`   boot to ready: ${((ready.bootMs as number) / 1000).toFixed(1)} s (the fake's boot + ready delays are 3.0 s)`);
  const onWorker = existsSync(join(server.storeDir, 'store', basename(outPath)));
  say(`5. built on the worker: ${onWorker ? 'yes' : 'NO'} (the output is in the worker's own /nix store)`);
  say('6. waiting for the idle timer (5 s) ...');
  const deleted = await daemon.waitForMsg(/deleted server/, 60_000);
  say(`   server deleted (${deleted.reason as string}); servers still billing: ${rig.fake.liveServers().length}`);
  await daemon.stop();
  if (!onWorker || rig.fake.liveServers().length !== 0) process.exitCode = 1;
} finally {
  await rig.stop();
}
