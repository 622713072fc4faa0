/**
 * The NixOS worker image (nixos/worker.nix), end to end: a pool whose image is a snapshot selected
 * by label, the fake cloud booting it as that image boots (no cloud-init; the image's own scripts
 * run inside the server's namespace), and real nix-build through the daemon:
 *
 *   fetch-keys.sh reads the user data from the fake metadata service and writes the host key and
 *   root's authorized key into the server's private /etc/ssh and /root/.ssh; zpool-expand.sh grows
 *   the pool partition of a loop disk laid out like the image (zpool and swapon are stand-ins);
 *   sshd starts with those files; ready-marker.sh writes the marker the daemon waits for.
 *
 * And when the metadata service fails (404, garbage), the server never becomes ready: the build
 * fails with the boot failure and the server is deleted.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Rig, waitUntil } from '../rig/rig.js';
import type { FakeServerInfo } from '../fake-hcloud/fake-cloud.js';

const LABEL = 'nix-hcloud-builder/image';
const SELECTOR = `${LABEL}=nixos-worker`;
/** The fake's defaults: a 64 MiB image on a 256 MiB disk (sectors of 512 bytes). */
const IMAGE_POOL_END = 64 * 2048 - 2048 - 1;
const DISK_LAST_USABLE = 256 * 2048 - 34;

/** Names, modes, owners and contents of everything under a path ("absent" when it is not there). */
function tree(path: string): string {
  if (!existsSync(path)) return `${path}: absent`;
  const out: string[] = [];
  const walk = (p: string): void => {
    const st = lstatSync(p);
    const head = `${p} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.mtimeMs}`;
    if (st.isDirectory()) {
      out.push(head);
      for (const e of readdirSync(p).sort()) walk(join(p, e));
    } else if (st.isSymbolicLink()) {
      out.push(`${head} -> ${readlinkSync(p)}`);
    } else {
      out.push(`${head} ${createHash('sha256').update(readFileSync(p)).digest('hex')}`);
    }
  };
  walk(path);
  return out.join('\n');
}

const hostState = (): string => `${tree('/etc/ssh')}\n${tree('/root/.ssh')}`;

function partInfo(disk: string, n: number): Record<string, string> {
  const r = spawnSync('sgdisk', [`--info=${n}`, disk], { encoding: 'utf8' });
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const m = /^([^:]+): (.*)$/.exec(line);
    if (m) out[m[1] as string] = m[2] as string;
  }
  return out;
}

const sector = (s: string | undefined): number => Number((s ?? '').split(' ')[0]);

/** Loop devices still backed by the file (empty once released). */
const loopsOf = (file: string): string => spawnSync('losetup', ['--associated', file], { encoding: 'utf8' }).stdout.trim();

/** "2026-…Z UNIT: starting|finished|failed …" lines of a unit log, by event. */
function unitTimes(log: string): Record<string, number> {
  const times: Record<string, number> = {};
  for (const m of log.matchAll(/^(\S+Z) \S+: (starting|finished|failed)/gm)) times[m[2] as string] = Date.parse(m[1] as string);
  return times;
}

function userDataOf(server: FakeServerInfo): {
  ssh_keys: { ed25519_private: string; ed25519_public: string };
  users: { name: string; ssh_authorized_keys: string[] }[];
} {
  const text = server.userData ?? '';
  return JSON.parse(text.slice(text.indexOf('\n') + 1)) as ReturnType<typeof userDataOf>;
}

t.test("a pool on the NixOS worker image: the image's own boot scripts make the worker, and a build runs on it", async (t) => {
  const before = hostState();
  const hostMarker = existsSync('/run/nix-hcloud-builder/ready');
  const fakeLog: string[] = [];
  const rig = await Rig.start({
    pool: { image: { labelSelector: SELECTOR }, idleTimeout: '4s', bootTimeout: '30s' },
    fake: { nixosWorker: { fetchAttempts: 3, swapMib: 16 }, log: (l) => fakeLog.push(l) },
  });
  t.teardown(() => rig.stop());
  // An older cloud-init snapshot with another value of the label: the selector must not pick it.
  rig.fake.addImage({ description: 'other snapshot', labels: { [LABEL]: 'other' } });
  const image = rig.fake.addImage({
    description: 'nix-hcloud-builder worker (nixos/worker.nix)',
    labels: { [LABEL]: 'nixos-worker' },
    worker: 'nixos',
  });
  const daemon = await rig.startDaemon();

  const result = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`nixos-image-${Date.now()}`] });
  t.equal(result.code, 0, 'nix-build succeeded', { stderr: result.stderr, fake: fakeLog });
  const outPath = result.outPaths[0] as string;
  t.ok(outPath && existsSync(outPath), 'the output was copied back');

  const server = rig.fake.servers()[0] as FakeServerInfo;
  t.equal(rig.fake.servers().length, 1, 'one server');
  t.equal(server.image, String(image.id), 'created from the snapshot the label selector picked');
  t.equal(server.bootMode, 'nixos', 'booted as the NixOS worker image');
  t.ok(existsSync(join(server.storeDir, 'store', basename(outPath))), "built in the worker's own store");
  t.same(server.units, { keys: 'done', expand: 'done', store: 'done', sshd: 'done', ready: 'done' }, 'every unit ran');
  t.match(
    readFileSync(join(server.dir, 'store-volume.log'), 'utf8'),
    "store-volume: no store volume in the user data; the store is the image's\n",
    'no store: the store unit did nothing',
  );
  t.notOk(existsSync(join(server.dir, 'cloud-init-output.log')), "no cloud-init: the user data's runcmd never ran");

  // The keys came from fetch-keys.sh, through the metadata service, into the server's own /etc/ssh
  // and /root/.ssh; sshd used them (the daemon pins the host key and logs in with the key).
  const ud = userDataOf(server);
  const fetchLog = readFileSync(join(server.dir, 'fetch-keys.log'), 'utf8');
  const pub = ud.ssh_keys.ed25519_public.split(' ').slice(0, 2).join(' ');
  t.match(fetchLog, `fetch-keys: host key ${pub}, 1 authorized key(s) for root\n`, 'fetch-keys.sh logged the key it took');
  t.same(
    rig.fake.metadataRequests.filter((r) => r.server === server.id),
    [{ server: server.id, path: '/userdata', status: 200 }],
    'it asked the metadata service once',
  );
  t.equal(
    (await rig.fake.readServerFile(server.id, '/etc/ssh/ssh_host_ed25519_key'))?.trim(),
    ud.ssh_keys.ed25519_private.trim(),
    "the host key inside the server is the user data's",
  );
  t.equal((await rig.fake.readServerFile(server.id, '/etc/ssh/ssh_host_ed25519_key.pub'))?.trim(), ud.ssh_keys.ed25519_public.trim());
  const root = ud.users.find((u) => u.name === 'root');
  t.equal(
    (await rig.fake.readServerFile(server.id, '/root/.ssh/authorized_keys'))?.trim(),
    root?.ssh_authorized_keys.join('\n').trim(),
    "root's authorized key too",
  );
  const sshdConfig = readFileSync(join(server.dir, 'sshd_config'), 'utf8');
  t.match(sshdConfig, /^HostKey \/etc\/ssh\/ssh_host_ed25519_key$/m, 'sshd reads the key where fetch-keys.sh wrote it');
  t.match(sshdConfig, /^AuthorizedKeysFile \/root\/\.ssh\/authorized_keys$/m);
  t.notOk(existsSync(join(server.dir, 'ssh_host_ed25519_key')), 'the fake wrote no key of its own');

  // zpool-expand.sh grew the pool partition of the disk and put swap at its end.
  const calls = readFileSync(join(server.dir, 'stub-calls.log'), 'utf8');
  const loop = server.loopDevice ?? '';
  t.match(loop, /^\/dev\/loop\d+$/, 'the disk is on a loop device while the server runs');
  t.match(calls, `zpool online -e rpool ${loop}p3\n`, 'the pool was told to take the space');
  t.match(calls, `swapon --discard ${loop}p4\n`, 'swap turned on (stand-in)');
  const grew = /zpool-expand: rpool grew from (\d+) to (\d+) bytes/.exec(readFileSync(join(server.dir, 'zpool-expand.log'), 'utf8'));
  t.ok(grew && Number(grew[2]) > Number(grew[1]), `zpool-expand.sh logged the growth (${grew?.[1]} -> ${grew?.[2]})`);
  const disk = server.workerDisk ?? '';
  const pool = partInfo(disk, 3);
  const swap = partInfo(disk, 4);
  t.equal(sector(pool['First sector']), 16 * 2048, 'the pool partition keeps its start');
  t.ok(sector(pool['Last sector']) > IMAGE_POOL_END, `and grew past the image's end (${sector(pool['Last sector'])} > ${IMAGE_POOL_END})`);
  t.equal(sector(pool['Last sector']) + 1, sector(swap['First sector']), 'up to the swap partition');
  t.equal(sector(swap['Last sector']), DISK_LAST_USABLE, 'which ends at the end of the disk');
  t.equal(swap['Partition name'], "'swap'");

  // ready-marker.sh wrote the marker, after both units the ready unit requires.
  t.match(readFileSync(join(server.dir, 'ready-marker.log'), 'utf8'), 'ready-marker: wrote /run/nix-hcloud-builder/ready\n');
  t.equal(await rig.fake.readServerFile(server.id, '/run/nix-hcloud-builder/ready'), '', "the marker is in the server's /run");
  t.equal(existsSync('/run/nix-hcloud-builder/ready'), hostMarker, "the host's /run is untouched");
  const keysAt = unitTimes(fetchLog);
  const expandAt = unitTimes(readFileSync(join(server.dir, 'zpool-expand.log'), 'utf8'));
  const readyAt = unitTimes(readFileSync(join(server.dir, 'ready-marker.log'), 'utf8'));
  t.ok(
    (readyAt['starting'] ?? 0) >= Math.max(keysAt['finished'] ?? Infinity, expandAt['finished'] ?? Infinity),
    'the ready unit started after the keys and the disk',
  );
  await daemon.waitForMsg(/is ready after/);

  // The idle timer deletes the server; its loop device goes with it.
  await daemon.waitForMsg(/deleted server/, 30_000);
  t.same(rig.fake.liveServers(), []);
  t.equal(loopsOf(disk), '', 'the loop device was detached');
  t.equal(hostState(), before, "the host's /etc/ssh and /root/.ssh are unchanged");
  t.same(rig.fake.schemaErrors, []);
});

t.test(
  'the metadata service fails (404, then garbage): the worker never becomes ready, the build fails, the server is deleted',
  async (t) => {
    const before = hostState();
    const fakeLog: string[] = [];
    const rig = await Rig.start({
      pool: { image: { labelSelector: SELECTOR }, idleTimeout: '2s', bootTimeout: '4s' },
      config: { deleteRetry: { firstWait: '1s', maxWait: '1s' } },
      fake: { nixosWorker: { fetchAttempts: 2, swapMib: 16 }, log: (l) => fakeLog.push(l) },
    });
    t.teardown(() => rig.stop());
    rig.fake.addImage({
      description: 'nix-hcloud-builder worker (nixos/worker.nix)',
      labels: { [LABEL]: 'nixos-worker' },
      worker: 'nixos',
    });
    const daemon = await rig.startDaemon();

    const cases = [
      {
        name: '404',
        fault: { path: '/userdata', status: 404, times: 2 },
        statuses: [404, 404],
        log: /fetch-keys: no user data from http:\/\/127\.0\.0\.1:\d+\/metadata\/\d+\/hetzner\/v1\/userdata after 2 attempts/,
      },
      {
        name: 'garbage',
        fault: { path: '/userdata', body: 'this is not a cloud-config\n', times: 1 },
        statuses: [200],
        log: /fetch-keys: the user data from \S+ is not "#cloud-config" followed by a JSON object/,
      },
    ];
    for (const c of cases) {
      rig.fake.injectMetadata(c.fault);
      // The daemon deletes the server at bootTimeout, which under load can come before fetch-keys.sh
      // has given up (its unit would then be `stopped`); its DELETEs are refused (and retried) until
      // the units are seen to end.
      const deleteHeld = rig.fake.inject({ method: 'DELETE', path: /^\/servers\/\d+$/, status: 423, code: 'locked', times: 1_000 });
      const started = Date.now();
      const result = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`nixos-meta-${c.name}-${Date.now()}`] });
      t.not(result.code, 0, `${c.name}: the build fails (no local builds allowed)`);
      t.match(
        result.stderr,
        /boot of \S+ failed: boot did not finish within bootTimeout/,
        `${c.name}: the boot failure reaches nix-build's stderr`,
      );
      t.ok(Date.now() - started < 4000 + 10_000, `${c.name}: within bootTimeout plus slack, no hang`);

      const last = rig.fake.servers().at(-1) as FakeServerInfo;
      const unitsEnded = (): FakeServerInfo | undefined => {
        const now = rig.fake.servers().find((s) => s.id === last.id);
        return Object.values(now?.units ?? {}).some((u) => u === 'running' || u === 'waiting') ? undefined : now;
      };
      await waitUntil(() => unitsEnded() !== undefined, 30_000);
      deleteHeld();
      const server = unitsEnded() ?? last;
      t.equal(server.bootMode, 'nixos');
      t.same(
        rig.fake.metadataRequests.filter((r) => r.server === server.id).map((r) => r.status),
        c.statuses,
        `${c.name}: fetch-keys.sh got the fault`,
      );
      t.match(readFileSync(join(server.dir, 'fetch-keys.log'), 'utf8'), c.log, `${c.name}: fetch-keys.sh said why`);
      t.ok(
        fakeLog.some((l) => l.includes(`server ${server.id}: nix-hcloud-builder-keys.service failed`)),
        `${c.name}: the failure is logged`,
      );
      t.match(
        server.units,
        { keys: 'failed', sshd: 'skipped', ready: 'skipped' },
        `${c.name}: no sshd and no ready marker without the keys unit`,
      );
      t.notOk(existsSync(join(server.dir, 'boot-finished')));

      await waitUntil(() => rig.fake.liveServers().length === 0, 20_000);
      t.same(rig.fake.liveServers(), [], `${c.name}: the server was deleted`);
      t.equal(loopsOf(server.workerDisk ?? ''), '', `${c.name}: its loop device was detached`);
    }
    t.equal(daemon.proc.exitCode, null, 'the daemon keeps serving');
    t.equal(hostState(), before, "the host's /etc/ssh and /root/.ssh are unchanged");
    t.same(rig.fake.schemaErrors, []);
  },
);

t.test(
  'a NixOS worker image built before the store unit, in a pool with a store volume: the build runs, and the unused, billed volume is named on stderr and in the log',
  async (t) => {
    const rig = await Rig.start({
      pool: { image: { labelSelector: SELECTOR }, idleTimeout: '4s', bootTimeout: '30s', store: { volumeGb: 10 } },
      fake: { nixosWorker: { fetchAttempts: 3, swapMib: 16 } },
    });
    t.teardown(() => rig.stop());
    rig.fake.addImage({
      description: 'nix-hcloud-builder worker (an older nixos/worker.nix)',
      labels: { [LABEL]: 'nixos-worker' },
      worker: 'nixos',
      storeUnit: false,
    });
    const daemon = await rig.startDaemon();
    const result = await rig.nixBuild(daemon, { scheme: 'ssh-ng', nonces: [`nixos-image-store-${Date.now()}`] });
    t.equal(result.code, 0, 'nix-build succeeded', { stderr: result.stderr });
    t.match(result.stderr, /store volume \d+ is attached but this worker's store is not on it/, 'the waiting session was told');
    const warning = await daemon.waitFor((l) => l.level === 40 && /is attached but this worker's store is not on it/.test(l.msg), 10_000);
    t.ok(typeof warning.volumeId === 'number', 'a warning names the volume');
    t.equal(rig.fake.servers()[0]?.units?.store, 'absent', 'the image had no store unit');
  },
);
