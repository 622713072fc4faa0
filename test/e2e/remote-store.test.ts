/**
 * Remote-store mode: the whole build runs in the worker's store (`nix build --store ssh-ng://…
 * --eval-store auto`), and only the result is copied back (`nix copy --from ssh-ng://…`). The
 * output exists on the worker only until the copy: nothing of it is in the local store before.
 */
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { BUILD_NIX, Rig } from '../rig/rig.js';
import { testedSuites } from '../rig/nix-client.js';

for (const client of testedSuites())
  t.test(`${client}'s Nix: nix build --store ssh-ng://… --eval-store auto, then nix copy --from`, async (t) => {
    // Long enough for the copy after the build: a worker's store lives only as long as the worker.
    const rig = await Rig.start({ pool: { idleTimeout: '60s' }, client });
    t.teardown(() => rig.stop());
    const daemon = await rig.startDaemon();

    // The host key pinned in the URI, as field 8 pins it in a machines line; the alias and port
    // through NIX_SSHOPTS, read by the Nix process that runs ssh (here the client itself).
    const store = `ssh-ng://x86_64@hcloud-builder?ssh-key=${rig.clientKeyFile}&base64-ssh-public-host-key=${rig.hostKeyBase64()}`;
    const env = { ...process.env, NIX_SSHOPTS: `-F ${rig.sshConfig(daemon.port)}` };
    const nix = (args: string[]) =>
      rig.client.run('nix', ['--extra-experimental-features', 'nix-command', ...args], { env, timeoutMs: 180_000 });

    const nonce = `remote-store-${process.pid}-${Date.now()}`;
    // Nix 2.8 has no --print-out-paths: --json names the outputs.
    const build = await nix([
      'build',
      '--store',
      store,
      '--eval-store',
      'auto',
      '-f',
      BUILD_NIX,
      '--argstr',
      'nonce',
      nonce,
      '--no-link',
      '--json',
    ]);
    t.equal(build.code, 0, 'nix build on the remote store succeeded', { stderr: build.stderr });
    const outPath = (JSON.parse(build.stdout) as { outputs: { out: string } }[])[0]?.outputs.out ?? '';
    t.match(outPath, /^\/nix\/store\/[a-z0-9]{32}-nhb-test-/, 'the output path');

    const servers = rig.fake.servers();
    t.equal(servers.length, 1, 'one worker booted');
    const remoteCopy = join(servers[0]?.storeDir ?? '', 'store', basename(outPath));
    t.equal(readFileSync(remoteCopy, 'utf8'), `built by nix-hcloud-builder ${nonce}\n`, "built in the worker's store");
    t.notOk(existsSync(rig.client.local(outPath)), 'absent locally before the copy');
    const localBefore = await rig.client.run('nix-store', ['--check-validity', outPath]);
    t.not(localBefore.code, 0, 'not valid in the local store');

    const copy = await nix(['copy', '--no-check-sigs', '--from', store, outPath]);
    t.equal(copy.code, 0, 'nix copy --from succeeded', { stderr: copy.stderr });
    const localAfter = await rig.client.run('nix-store', ['--check-validity', outPath]);
    t.equal(localAfter.code, 0, 'valid in the local store after the copy', { stderr: localAfter.stderr });
    t.equal(readFileSync(rig.client.local(outPath), 'utf8'), `built by nix-hcloud-builder ${nonce}\n`, 'with the right content');

    const sessions = daemon.lines.filter((l) => l.msg === 'session started');
    t.ok(sessions.length >= 2, 'the build and the copy each came through the endpoint');
    t.ok(
      sessions.every((s) => s.command === 'daemon' && s.worker === servers[0]?.name),
      'both as nix-daemon --stdio, on the same worker',
    );
  });
