/**
 * The warm store on the NixOS worker image (nixos/worker.nix): no cloud-init, so the image's own
 * unit nix-hcloud-builder-store (nixos/scripts/store-volume.sh) puts the store on the volume, as
 * the upper layer of an overlay over the image's /nix. Real Nix against the fake cloud, which runs
 * that script for real inside each server's mount namespace (the volume a folder at
 * /mnt/HC_Volume_<id>; test/nixos/store-volume.test.ts covers the block device and an image
 * change).
 */
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { runCommand } from '../../src/ssh/worker-connection.js';
import { Rig, waitUntil } from '../rig/rig.js';
import { addBigInput, build, bytesUp, MIB, onWorker, recordedWorker, warm } from '../rig/warm-store.js';

const LABEL = 'nix-hcloud-builder/image';

t.test('a NixOS-image pool keeps its store on the volume: the second build, on a new server, uploads nothing big', async (t) => {
  const rig = await Rig.start({
    pool: { image: { labelSelector: `${LABEL}=nixos-worker` }, store: { volumeGb: 10 }, idleTimeout: '3s', bootTimeout: '60s' },
    fake: { nixosWorker: { fetchAttempts: 3, swapMib: 16 } },
  });
  t.teardown(() => rig.stop());
  rig.fake.addImage({ description: 'nix-hcloud-builder worker (nixos/worker.nix)', labels: { [LABEL]: 'nixos-worker' }, worker: 'nixos' });
  const input = await addBigInput(rig);
  const daemon = await rig.startDaemon();
  const nonce = `nixos-warm-${Date.now()}`;
  const a = warm(input, `${nonce}-a`);

  const first = await build(rig, daemon, a);
  t.equal(first.code, 0, 'build A succeeded', { stderr: first.stderr });
  const upA = await bytesUp(daemon, 0);
  t.ok(upA > 64 * MIB, `build A uploaded its 64 MiB input (${upA} bytes)`);
  const volume = rig.fake.volumes()[0];
  const server1 = rig.fake.servers()[0];
  t.ok(volume && server1, 'a volume and a server');
  if (!volume || !server1) return;
  t.equal(server1.bootMode, 'nixos', 'booted as the NixOS worker image (no cloud-init)');
  t.equal(server1.units?.store, 'done', 'its store unit ran');
  t.match(
    readFileSync(join(server1.dir, 'fetch-keys.log'), 'utf8'),
    `store volume settings {"volumeId":${volume.id},"gcAtPercent":80}`,
    "fetch-keys.sh took the volume's settings from the user data",
  );
  t.match(
    readFileSync(join(server1.dir, 'store-volume.log'), 'utf8'),
    `store-volume: /nix is the image's store with volume ${volume.id} over it`,
  );
  const upper = join(rig.fake.volumeDir(volume.id), 'nix-overlay', 'upper');
  t.ok(existsSync(join(upper, 'store', basename(input))), "the input is on the volume (the overlay's upper layer)");
  t.notOk(existsSync(join(server1.storeDir, 'store', basename(input))), "not in the image's own store");
  t.notMatch(first.stderr, /is attached but this worker's store is not on it/, 'no warning: the store is on the volume');
  t.notOk(
    daemon.lines.some((l) => /is attached but/.test(l.msg)),
    'none in the log either',
  );
  // The pool's default compression, zstd: the image's relay answered, and A's upload went through it.
  t.ok(
    daemon.lines.some((l) => l.msg === 'zstd relay answers'),
    "the NixOS worker's zstd relay answered",
  );
  t.notMatch(first.stderr, /relay does not run/);

  // The worker idles out; the volume stays, detached.
  await daemon.waitForMsg(/deleted server/, 30_000);
  await waitUntil(() => rig.fake.volumes()[0]?.server === null, 10_000);

  // Build B needs the same input and A's output: the new worker's overlay has both.
  const before = daemon.lines.length;
  const second = await build(rig, daemon, warm(input, `${nonce}-b`, a));
  t.equal(second.code, 0, 'build B succeeded', { stderr: second.stderr });
  t.match(
    readFileSync(second.stdout.trim().split('\n').pop() as string, 'utf8'),
    new RegExp(`${nonce}-a\n${64 * MIB}\n${nonce}-b`),
    "B read A's output and the input on the worker",
  );
  const upB = await bytesUp(daemon, before);
  t.ok(upB < MIB, `build B sent ${upB} bytes up (under 1 MiB)`);
  const servers = rig.fake.servers();
  t.equal(servers.length, 2, 'B ran on a new server');
  const server2 = servers[1];
  t.equal(rig.fake.volumes()[0]?.server, server2?.id, 'with the same volume attached');
  t.equal(server2?.units?.store, 'done');

  // A's output is valid in the new worker's store (its Nix database, not just a file).
  const outA = first.stdout.trim().split('\n').pop() as string;
  const record = recordedWorker(rig, server2?.id);
  t.ok(record?.address, 'the second worker is still up');
  if (record?.address) {
    await onWorker(record, async (client) => {
      const valid = await runCommand(client, `nix-store --check-validity ${input} ${outA}`, 20_000);
      t.equal(valid.code, 0, `valid on the new worker: ${valid.stderr}`);
      const mounts = await runCommand(
        client,
        'findmnt -n -o FSTYPE /nix | tail -n 1; findmnt -n -o OPTIONS /nix/store | tail -n 1; cat /run/nix-hcloud-builder/store-volume',
        20_000,
      );
      t.match(
        mounts.stdout,
        new RegExp(`^overlay\nro,[^\n]*\n${volume.id}\n$`),
        '/nix is the overlay, /nix/store read-only as NixOS has it, and the marker names the volume',
      );
    });
  }
  t.same(rig.fake.schemaErrors, []);
});
