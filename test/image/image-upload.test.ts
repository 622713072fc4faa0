// `image upload` / `image cleanup` against the fake cloud, whose rescue system is a real sshd (in
// its own mount namespace) with a regular file at /dev/sda: the bytes written there are compared
// with the image, and snapshots remember them. Also: a failure at each step leaves no temporary
// server or ssh key, SIGINT does not either, and a pool picks the newest matching snapshot. An OS
// that ignores the shutdown request gets its power cut; a lost create_image answer is neither
// resent nor left behind: its snapshot is found by the run label (adopted, or deleted when the
// upload fails), and `image cleanup` finds the unfinished snapshot of a run that died.

import t, { type Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import ssh2 from 'ssh2';
import { FakeCloud } from '../fake-hcloud/fake-cloud.js';
import { HcloudClient } from '../../src/hcloud/client.js';
import { HcloudError } from '../../src/hcloud/errors.js';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { LABEL_MANAGED_BY, MANAGED_BY } from '../../src/core/labels.js';
import { cleanupUploads } from '../../src/image/cleanup.js';
import { writeCommand } from '../../src/image/rescue.js';
import { LABEL_ROLE, LABEL_UPLOAD_RUN, ROLE_IMAGE_UPLOAD, uploadLeftoverSelector } from '../../src/image/temporary.js';
import { parseLabels, uploadImage, type UploadOptions } from '../../src/image/upload.js';

const TOKEN = 'image-upload-test-token';
/** Not 22: the machine may run its own sshd there. */
const SSH_PORT = 2031;
const CLI = join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');
const silent = pino({ level: 'silent' });
const root = mkdtempSync(join(tmpdir(), 'image-upload-test-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

// A few MiB of random bytes (not a multiple of dd's 4 MiB block), raw and zstd-compressed.
const raw = randomBytes(5 * 1024 * 1024 + 12_345);
const rawFile = join(root, 'worker.raw');
writeFileSync(rawFile, raw);
const zstFile = join(root, 'worker.raw.zst');
const z = spawnSync('zstd', ['-q', '-f', '-3', rawFile, '-o', zstFile]);
if (z.status !== 0) throw new Error(`zstd failed: ${z.stderr.toString()}`);
// A .zst that zstd cannot decompress: the write fails on the server.
const brokenZst = join(root, 'broken.raw.zst');
writeFileSync(brokenZst, Buffer.concat([readFileSync(zstFile).subarray(0, 4), randomBytes(4096)]));

const cloud = await FakeCloud.start({
  token: TOKEN,
  dataDir: join(root, 'cloud'),
  realServers: true,
  sshPort: SSH_PORT,
  bootDelayMs: 100,
  readyDelayMs: 20,
  deleteDelayMs: 20,
  log: (line) => {
    if (process.env['FAKE_HCLOUD_VERBOSE']) process.stderr.write(`[fake-hcloud] ${line}\n`);
  },
});
t.teardown(() => cloud.stop());

function client(): HcloudClient {
  return new HcloudClient({
    endpoint: cloud.url,
    token: TOKEN,
    actionPollIntervalMs: 25,
    retry: { maxRetries: 2, baseDelayMs: 5, maxDelayMs: 20 },
    logger: silent,
  });
}

function options(extra: Partial<UploadOptions> = {}): UploadOptions & { lines: string[] } {
  const lines: string[] = [];
  return {
    hcloud: client(),
    file: rawFile,
    arch: 'x86',
    labels: { 'nix-hcloud-builder/image': 'worker', version: '1' },
    sshPort: SSH_PORT,
    sshTimeoutMs: 5000,
    sshRetryMs: 50,
    actionTimeoutMs: 20_000,
    log: silent,
    print: (line) => lines.push(line),
    lines,
    ...extra,
  };
}

/** Runs the CLI without blocking this process's event loop (the fake cloud answers from it). */
function cli(args: string[], env: NodeJS.ProcessEnv): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.once('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** Nothing temporary is left: no live server, no ssh key. */
function assertNoLeftovers(t: Test, what: string): void {
  t.same(
    cloud.liveServers().map((s) => s.name),
    [],
    `${what}: no server left`,
  );
  t.same(
    cloud.listSshKeys().map((k) => k.name),
    [],
    `${what}: no ssh key left`,
  );
}

/** Every snapshot in the fake cloud, whatever its labels. */
function snapshots(): ReturnType<FakeCloud['allImages']> {
  return cloud.allImages().filter((i) => i.type === 'snapshot');
}

/** How many create_image requests reached the fake so far (answered or not). */
function createImageRequests(): number {
  return cloud.requests.filter((r) => r.method === 'POST' && r.path.endsWith('/actions/create_image')).length;
}

/** A logger that keeps its records (msg and fields), to assert on what is logged. */
function capturingLog(): { log: UploadOptions['log']; records: Record<string, unknown>[] } {
  const records: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => void records.push(JSON.parse(line) as Record<string, unknown>) });
  return { log, records };
}

/** Waits for deletes in flight (the fake marks a server deleted after deleteDelayMs). */
async function settle(): Promise<void> {
  for (let i = 0; i < 100 && cloud.liveServers().some((s) => s.status === 'deleting'); i++) await new Promise((r) => setTimeout(r, 20));
}

t.test('helpers: labels, write command', async (t) => {
  t.same(parseLabels(['a=b', 'nix-hcloud-builder/image=worker', 'empty=']), { a: 'b', 'nix-hcloud-builder/image': 'worker', empty: '' });
  t.throws(() => parseLabels(['novalue']), /KEY=VALUE/);
  t.throws(() => parseLabels(['k=bad value']), /not a valid label value/);
  t.throws(() => parseLabels([`${LABEL_ROLE}=x`]), /reserved/);
  t.equal(writeCommand('a.raw'), "bash -o pipefail -c 'dd of=/dev/sda bs=4M && sync'");
  t.equal(writeCommand('a.raw.zst'), "bash -o pipefail -c 'zstd -d -c | dd of=/dev/sda bs=4M && sync'");
});

t.test('upload a raw image: snapshot with our labels, the bytes on the disk, nothing left', async (t) => {
  const o = options();
  const result = await uploadImage(o);
  await settle();
  const image = result.image;
  t.equal(image.type, 'snapshot');
  t.equal(image.status, 'available');
  t.same(image.labels, { 'nix-hcloud-builder/image': 'worker', version: '1', [LABEL_MANAGED_BY]: MANAGED_BY });
  t.equal(image.architecture, 'x86');
  t.same(
    o.lines.filter((l) => /^\[\d\/8\]/.test(l)).map((l) => l.slice(0, 5)),
    ['[1/8]', '[2/8]', '[3/8]', '[4/8]', '[5/8]', '[6/8]', '[7/8]', '[8/8]'],
    'eight numbered steps',
  );
  t.match(o.lines.join('\n'), /not pinned/, 'says the rescue host key is not pinned');
  t.notMatch(o.lines.join('\n'), /poweroff/, 'the shutdown request was honoured: no poweroff');

  const listed = await client().listImages({ type: 'snapshot', labelSelector: 'nix-hcloud-builder/image=worker,version=1' });
  t.same(
    listed.map((i) => i.id),
    [image.id],
    'listed by label selector',
  );
  t.same(cloud.snapshotDisk(image.id), { sha256: sha256(raw), bytes: raw.length }, 'the disk holds exactly the image');
  const temp = cloud.servers().find((s) => s.id === result.serverId);
  t.ok(temp?.deleted, 'temporary server deleted');
  t.equal(temp?.labels[LABEL_ROLE], ROLE_IMAGE_UPLOAD, 'temporary server was labelled');
  assertNoLeftovers(t, 'after a raw upload');

  // A server created from the snapshot has that disk.
  const hc = client();
  const created = await hc.createServer({
    name: 'from-snapshot',
    server_type: 'cx23',
    location: 'fsn1',
    image: String(image.id),
    start_after_create: false,
  });
  t.same(
    cloud.liveServers().find((s) => s.id === created.server.id)?.disk,
    { sha256: sha256(raw), bytes: raw.length },
    'a server from the snapshot has its disk',
  );
  await hc.deleteServer(created.server.id);
  await hc.deleteImage(image.id);
  t.same(await hc.listImages({ type: 'snapshot' }), [], 'snapshot deleted');
  await t.rejects(hc.deleteImage(image.id), { code: 'not_found' });
  await settle();
  t.same(cloud.schemaErrors, [], 'every answer matched openapi.json');
});

t.test('upload a .zst image: decompressed on the server', async (t) => {
  const o = options({ file: zstFile, arch: 'x86', labels: { kind: 'zst' } });
  const result = await uploadImage(o);
  await settle();
  t.same(cloud.snapshotDisk(result.image.id), { sha256: sha256(raw), bytes: raw.length }, 'the disk holds the decompressed image');
  t.match(o.lines.join('\n'), /decompressed on the server/);
  assertNoLeftovers(t, 'after a zst upload');
  await client().deleteImage(result.image.id);
  t.same(cloud.schemaErrors, []);
});

t.test('a failure at each step leaves no server and no ssh key', async (t) => {
  const cases: {
    step: string;
    setup: () => void;
    opts?: Partial<UploadOptions>;
    error: RegExp | { code: string } | { message: RegExp };
  }[] = [
    {
      step: '1 ssh key',
      setup: () => cloud.inject({ method: 'POST', path: '/ssh_keys', status: 422, code: 'invalid_input' }),
      error: { code: 'invalid_input' },
    },
    {
      step: '2 server',
      setup: () => cloud.inject({ method: 'POST', path: '/servers', status: 412, code: 'resource_unavailable' }),
      error: { code: 'resource_unavailable' },
    },
    {
      step: '2 server (create action fails)',
      setup: () => cloud.behaveNext('action-error'),
      error: { code: 'action_failed' },
    },
    {
      step: '3 rescue',
      setup: () => cloud.inject({ method: 'POST', path: /\/actions\/enable_rescue$/, status: 500 }),
      error: { code: 'server_error' },
    },
    {
      step: '3 poweron',
      setup: () => cloud.inject({ method: 'POST', path: /\/actions\/poweron$/, status: 500 }),
      error: { code: 'server_error' },
    },
    { step: '4 ssh', setup: () => cloud.behaveNext('no-sshd'), opts: { sshTimeoutMs: 600 }, error: /did not accept the ssh login/ },
    { step: '5 write', setup: () => {}, opts: { file: brokenZst }, error: /writing the image on the server failed/ },
    {
      step: '6 shutdown',
      setup: () => cloud.inject({ method: 'POST', path: /\/actions\/shutdown$/, status: 500 }),
      error: { code: 'server_error' },
    },
    {
      step: '7 create_image',
      setup: () => cloud.inject({ method: 'POST', path: /\/actions\/create_image$/, status: 500 }),
      error: { code: 'server_error' },
    },
  ];
  for (const c of cases) {
    c.setup();
    const o = options({ labels: { failing: 'yes' }, ...(c.opts ?? {}) });
    await t.rejects(uploadImage(o), c.error, `step ${c.step} fails`);
    await settle();
    assertNoLeftovers(t, `failure at step ${c.step}`);
    t.same(await client().listImages({ type: 'snapshot', labelSelector: 'failing=yes' }), [], `failure at step ${c.step}: no snapshot`);
    t.match(o.lines.at(-1), /^\[8\/8\] deleted the temporary server and ssh key/, `failure at step ${c.step}: cleanup reported`);
  }
  t.same(cloud.schemaErrors, []);
});

t.test('a create_image 500 is not resent (a second snapshot would be billed)', async (t) => {
  const before = cloud.requests.filter((r) => r.path.endsWith('/actions/create_image')).length;
  cloud.inject({ method: 'POST', path: /\/actions\/create_image$/, status: 500 });
  await t.rejects(uploadImage(options({ labels: { once: 'yes' } })), { code: 'server_error' });
  t.equal(cloud.requests.filter((r) => r.path.endsWith('/actions/create_image')).length - before, 1, 'sent once');
  await settle();
  assertNoLeftovers(t, 'after the create_image 500');
});

t.test('an OS that ignores the shutdown request: the power is cut after shutdownTimeoutMs, the snapshot is made', async (t) => {
  const before = snapshots().map((i) => i.id);
  const from = cloud.requests.length;
  const { log, records } = capturingLog();
  cloud.behaveNext('ignores-shutdown');
  const o = options({ labels: { shutdown: 'ignored' }, shutdownTimeoutMs: 400, log });
  const result = await uploadImage(o);
  await settle();

  const calls = cloud.requests
    .slice(from)
    .filter((r) => r.method === 'POST' && /\/actions\/(shutdown|poweroff|create_image)$/.test(r.path))
    .map((r) => `${r.path.split('/').pop() ?? ''} ${r.status}`);
  t.same(calls, ['shutdown 201', 'poweroff 201', 'create_image 201'], 'shutdown (ignored), then poweroff, then the snapshot');
  const six = o.lines.filter((l) => l.startsWith('[6/8]'));
  t.equal(six.length, 2, 'step 6 has a line of its own for the fallback');
  t.match(
    six[0],
    /^\[6\/8\] server not off 0\.4 s after the shutdown request \(ignored by the OS\?\): cutting the power \(poweroff; the image is synced already\)$/,
  );
  t.equal(six[1], '[6/8] server is off (powered off)');
  const fallback = records.filter((r) => r['fallback'] === 'poweroff');
  t.equal(fallback.length, 1, 'the fallback is logged once');
  t.match(fallback[0]?.['msg'], /^image upload step 6\/8: server not off/);
  t.same(
    records.filter((r) => r['how'] !== undefined).map((r) => r['how']),
    ['poweroff'],
    'the log says how the server went off',
  );

  const made = snapshots().filter((i) => !before.includes(i.id));
  t.same(
    made.map((i) => i.id),
    [result.image.id],
    'one snapshot',
  );
  t.same(made[0]?.labels, { shutdown: 'ignored', [LABEL_MANAGED_BY]: MANAGED_BY }, 'with the wanted labels');
  t.equal(result.image.status, 'available');
  t.same(cloud.snapshotDisk(result.image.id), { sha256: sha256(raw), bytes: raw.length }, 'the disk holds the image');
  t.match(o.lines.at(-1), /^\[8\/8\] deleted the temporary server and ssh key$/);
  t.ok(cloud.servers().find((s) => s.id === result.serverId)?.deleted, 'temporary server deleted');
  assertNoLeftovers(t, 'after the poweroff fallback');
  await client().deleteImage(result.image.id);
  t.same(cloud.schemaErrors, []);
});

t.test('a lost create_image answer is not resent: the snapshot is found by the run label and adopted', async (t) => {
  const faults = [
    { what: '502 after handling', fault: { status: 502 } },
    { what: '504 after handling', fault: { status: 504 } },
    { what: 'connection lost after handling', fault: { networkError: true } },
  ];
  for (const [n, c] of faults.entries()) {
    const before = snapshots().map((i) => i.id);
    const sent = createImageRequests();
    const { log, records } = capturingLog();
    cloud.inject({ method: 'POST', path: /\/actions\/create_image$/, afterHandling: true, ...c.fault });
    const o = options({ labels: { lost: `answer-${n}` }, log });
    const result = await uploadImage(o);
    await settle();

    t.equal(createImageRequests() - sent, 1, `${c.what}: create_image sent once`);
    const made = snapshots().filter((i) => !before.includes(i.id));
    t.same(
      made.map((i) => i.id),
      [result.image.id],
      `${c.what}: exactly one new snapshot, the result`,
    );
    t.same(made[0]?.labels, { lost: `answer-${n}`, [LABEL_MANAGED_BY]: MANAGED_BY }, `${c.what}: the wanted labels, no temporary ones`);
    t.equal(made[0]?.status, 'available');
    t.same(cloud.snapshotDisk(result.image.id), { sha256: sha256(raw), bytes: raw.length }, `${c.what}: the disk holds the image`);
    const seven = o.lines.filter((l) => l.startsWith('[7/8]'));
    t.match(
      seven[0],
      new RegExp(
        `^\\[7/8\\] the create_image answer was lost \\(.+\\); found snapshot ${result.image.id} by the run label: adopted, not requested again$`,
      ),
    );
    t.match(seven[1], new RegExp(`^\\[7/8\\] snapshot ${result.image.id} created`));
    t.ok(
      records.some((r) => r['adopted'] === true && r['imageId'] === result.image.id),
      `${c.what}: the adoption is logged`,
    );
    t.same(
      (await client().listImages({ type: 'snapshot', labelSelector: `lost=answer-${n}` })).map((i) => i.id),
      [result.image.id],
      `${c.what}: a pool's label selector finds it`,
    );
    t.match(o.lines.at(-1), /^\[8\/8\] deleted the temporary server and ssh key$/, `${c.what}: nothing else to delete`);
    assertNoLeftovers(t, c.what);
    await client().deleteImage(result.image.id);
  }
  t.same(cloud.schemaErrors, []);
});

t.test('a lost create_image answer on a failing upload: the snapshot it made is deleted at step 8', async (t) => {
  const before = snapshots().map((i) => i.id);
  const sent = createImageRequests();
  cloud.inject({ method: 'POST', path: /\/actions\/create_image$/, status: 502, afterHandling: true });
  // The lookup by label fails too (all 3 attempts), so the upload gives up with the lost answer.
  cloud.inject({ method: 'GET', path: '/images', status: 500, times: 3 });
  const o = options({ labels: { lost: 'and-failed' } });
  await t.rejects(uploadImage(o), { status: 502, code: 'server_error' }, 'the upload fails with the lost answer');
  await settle();

  t.equal(createImageRequests() - sent, 1, 'create_image sent once');
  const last = o.lines.at(-1) ?? '';
  const m = /^\[8\/8\] deleted the temporary server and ssh key, and the unfinished snapshot\(s\) (\d+) of this run$/.exec(last);
  t.ok(m, `step 8 names the snapshot it deleted: ${last}`);
  const id = Number(m?.[1]);
  t.notOk(before.includes(id), 'it was made by this upload');
  t.ok(
    cloud.requests.some((r) => r.method === 'DELETE' && r.path === `/images/${id}` && r.status === 204),
    'and deleted',
  );
  t.same(
    snapshots().map((i) => i.id),
    before,
    'no snapshot is left',
  );
  assertNoLeftovers(t, 'after a lost answer and a failed lookup');
  t.same(cloud.schemaErrors, []);
});

t.test('aborted while create_image is in flight: the snapshot it makes after the abort is found and deleted', async (t) => {
  const before = snapshots().map((i) => i.id);
  const sent = createImageRequests();
  // create_image is carried out 1.2 s after it arrives, long after the abort; the server delete
  // of step 8 is held longer still, so the snapshot appears while step 8 runs.
  cloud.inject({ method: 'POST', path: /\/actions\/create_image$/, delayMs: 1200 });
  cloud.inject({ method: 'DELETE', path: /^\/servers\/\d+$/, delayMs: 2000 });
  const controller = new AbortController();
  const lines: string[] = [];
  const o = options({
    labels: { aborted: 'in-flight' },
    signal: controller.signal,
    print: (line) => {
      lines.push(line);
      if (line === '[6/8] server is off') setTimeout(() => controller.abort(new Error('interrupted by the test')), 250);
    },
  });
  await t.rejects(uploadImage(o), /interrupted by the test/);
  await settle();

  t.equal(createImageRequests() - sent, 1, 'create_image sent once');
  const m = /^\[8\/8\] deleted the temporary server and ssh key, and the unfinished snapshot\(s\) (\d+) of this run$/.exec(
    lines.at(-1) ?? '',
  );
  t.ok(m, `step 8 found the late snapshot and deleted it: ${lines.at(-1) ?? ''}`);
  t.notOk(before.includes(Number(m?.[1])), 'a snapshot of this upload');
  t.same(
    snapshots().map((i) => i.id),
    before,
    'no snapshot is left',
  );
  assertNoLeftovers(t, 'after an abort during create_image');
  t.same(cloud.schemaErrors, []);
});

t.test('a refused create_image that was carried out anyway: resent once, the extra snapshot is deleted', async (t) => {
  // 503 proves a refusal (retry.ts), so the client resends; this fake 503 lies: the first request made a snapshot.
  const before = snapshots().map((i) => i.id);
  const sent = createImageRequests();
  cloud.inject({ method: 'POST', path: /\/actions\/create_image$/, status: 503, afterHandling: true });
  const o = options({ labels: { refused: 'but-made' } });
  const result = await uploadImage(o);
  await settle();

  t.equal(createImageRequests() - sent, 2, 'the client resent the refused request once');
  t.same(
    snapshots()
      .filter((i) => !before.includes(i.id))
      .map((i) => i.id),
    [result.image.id],
    'one snapshot is left: the result',
  );
  t.same(result.image.labels, { refused: 'but-made', [LABEL_MANAGED_BY]: MANAGED_BY });
  const m = /, and the unfinished snapshot\(s\) (\d+) of this run$/.exec(o.lines.at(-1) ?? '');
  t.ok(m, 'step 8 deleted the extra snapshot');
  t.ok(Number(m?.[1]) < result.image.id, 'the one of the first request');
  assertNoLeftovers(t, 'after a lying 503');
  await client().deleteImage(result.image.id);
  t.same(cloud.schemaErrors, []);
});

t.test('a failed delete at step 8 is reported, and image cleanup removes what is left', async (t) => {
  // Every attempt (first + 2 retries) of the server delete fails.
  cloud.inject({ method: 'DELETE', path: /^\/servers\/\d+$/, status: 503, times: 3 });
  const o = options({ labels: { leftover: 'yes' } });
  const result = await uploadImage(o);
  t.match(o.lines.join('\n'), /cleanup: deleting server \d+ failed/);
  t.match(o.lines.join('\n'), /run "nix-hcloud-builder image cleanup"/);
  t.equal(cloud.liveServers().length, 1, 'the server is left');
  t.equal(cloud.listSshKeys().length, 0, 'the key was deleted');
  const out: string[] = [];
  const r = await cleanupUploads(client(), false, (l) => out.push(l), silent);
  t.same(
    r.servers.map((s) => s.id),
    [result.serverId],
  );
  await settle();
  assertNoLeftovers(t, 'after image cleanup');
  t.ok(cloud.snapshotDisk(result.image.id), 'the snapshot stays');
  await client().deleteImage(result.image.id);
});

t.test('image cleanup: deletes leftovers by label, --dry-run only lists, never snapshots or other servers', async (t) => {
  const hc = client();
  const labels = { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_ROLE]: ROLE_IMAGE_UPLOAD };
  const key = await hc.createSshKey({ name: 'left-key', public_key: generateKeyPair('left').publicKey, labels });
  const other = await hc.createSshKey({
    name: 'user-key',
    public_key: generateKeyPair('user').publicKey,
    labels: { [LABEL_MANAGED_BY]: MANAGED_BY },
  });
  const server = await hc.createServer({
    name: 'left-server',
    server_type: 'cx23',
    location: 'fsn1',
    image: 'ubuntu-24.04',
    start_after_create: false,
    labels,
  });
  const worker = await hc.createServer({
    name: 'a-worker',
    server_type: 'cx23',
    location: 'fsn1',
    image: 'ubuntu-24.04',
    start_after_create: false,
    labels: { [LABEL_MANAGED_BY]: MANAGED_BY, 'nix-hcloud-builder/instance': 'x', 'nix-hcloud-builder/pool': 'p' },
  });
  const snap = await hc.createImage(worker.server.id, { type: 'snapshot', labels: { [LABEL_MANAGED_BY]: MANAGED_BY } });
  await hc.waitForActions([snap.action]);

  const dry: string[] = [];
  const listed = await cleanupUploads(hc, true, (l) => dry.push(l), silent);
  t.same(
    listed.servers.map((s) => s.id),
    [server.server.id],
  );
  t.same(
    listed.sshKeys.map((k) => k.id),
    [key.id],
  );
  t.match(dry.join('\n'), /would delete server left-server/);
  t.match(dry.join('\n'), /would delete ssh key left-key/);
  t.equal(cloud.liveServers().length, 2, '--dry-run deleted nothing');
  t.equal(cloud.listSshKeys().length, 2);

  const done: string[] = [];
  await cleanupUploads(hc, false, (l) => done.push(l), silent);
  await settle();
  t.same(
    cloud.liveServers().map((s) => s.name),
    ['a-worker'],
    'only the temporary server went',
  );
  t.same(
    cloud.listSshKeys().map((k) => k.id),
    [other.id],
    'only the temporary key went',
  );
  t.ok(
    (await hc.listImages({ type: 'snapshot' })).some((i) => i.id === snap.image.id),
    'the snapshot stays',
  );
  t.same((await hc.listServers({ labelSelector: uploadLeftoverSelector() })).length, 0);

  await hc.deleteServer(worker.server.id);
  await hc.deleteSshKey(other.id);
  await hc.deleteImage(snap.image.id);
  await settle();
  t.same(cloud.schemaErrors, []);
});

t.test('the CLI: SIGINT during an upload still deletes the temporary server and key; cleanup --dry-run', async (t) => {
  const dir = mkdtempSync(join(root, 'cli-'));
  const configFile = join(dir, 'config.json');
  writeFileSync(
    configFile,
    JSON.stringify({ stateDir: join(dir, 'state'), hcloud: { endpoint: cloud.url }, pools: { x86_64: { serverTypes: ['cx23'] } } }),
  );
  const env = { ...process.env, HCLOUD_TOKEN: TOKEN, NIX_HCLOUD_BUILDER_CONFIG: configFile };
  // Hold the shutdown request for a while, so the signal arrives mid-upload.
  cloud.inject({ method: 'POST', path: /\/actions\/shutdown$/, delayMs: 4000 });
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', CLI, 'image', 'upload', rawFile, '--arch', 'x86', '--label', 'cli=yes', '--ssh-port', String(SSH_PORT)],
    {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stderr = '';
  let stdout = '';
  let signalled = false;
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => {
    stderr += b.toString();
    if (!signalled && stderr.includes('[5/8]')) {
      signalled = true;
      setTimeout(() => child.kill('SIGINT'), 200);
    }
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  t.ok(signalled, 'reached step 5');
  t.equal(code, 1, `exit status 1 (stderr: ${stderr.slice(-500)})`);
  t.match(stderr, /SIGINT: stopping the upload/);
  t.match(stderr, /interrupted by SIGINT/);
  t.match(stderr, /\[8\/8\] deleted the temporary server and ssh key/);
  t.equal(stdout, '', 'no snapshot id printed');
  await settle();
  assertNoLeftovers(t, 'after SIGINT');
  t.same(await client().listImages({ type: 'snapshot', labelSelector: 'cli=yes' }), []);

  // cleanup --dry-run through the CLI lists a leftover and deletes nothing.
  const hc = client();
  const key = await hc.createSshKey({
    name: 'cli-left',
    public_key: generateKeyPair('x').publicKey,
    labels: { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_ROLE]: ROLE_IMAGE_UPLOAD },
  });
  const dry = await cli(['image', 'cleanup', '--dry-run'], env);
  t.equal(dry.status, 0, dry.stderr);
  t.match(dry.stdout, /would delete ssh key cli-left/);
  t.match(dry.stdout, /would delete 0 server\(s\), 1 ssh key\(s\) and 0 unfinished snapshot\(s\)/);
  t.equal(cloud.listSshKeys().length, 1);
  await hc.deleteSshKey(key.id);

  const bad = await cli(['image', 'upload', rawFile, '--arch', 'mips', '--label', 'a=b'], env);
  t.equal(bad.status, 1);
  t.match(bad.stderr, /--arch: expected x86 or arm/);
});

t.test('a run killed during step 7 leaves an unfinished snapshot: no pool sees it, image cleanup deletes it', async (t) => {
  const dir = mkdtempSync(join(root, 'died-'));
  const configFile = join(dir, 'config.json');
  writeFileSync(
    configFile,
    JSON.stringify({ stateDir: join(dir, 'state'), hcloud: { endpoint: cloud.url }, pools: { x86_64: { serverTypes: ['cx23'] } } }),
  );
  const env = { ...process.env, HCLOUD_TOKEN: TOKEN, NIX_HCLOUD_BUILDER_CONFIG: configFile };
  const before = snapshots().map((i) => i.id);
  const from = cloud.requests.length;
  // Hold the relabelling of step 7 (PUT /images/{id}) and then refuse it: the run is killed meanwhile.
  cloud.inject({ method: 'PUT', path: /^\/images\/\d+$/, delayMs: 5000, status: 503 });
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', CLI, 'image', 'upload', rawFile, '--arch', 'x86', '--label', 'died=yes', '--ssh-port', String(SSH_PORT)],
    {
      env,
      stdio: ['ignore', 'ignore', 'ignore'],
    },
  );
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, sig) => resolve(sig)));
  // The GET of the finished snapshot comes right before the PUT.
  const made = (): number | undefined => snapshots().find((i) => !before.includes(i.id))?.id;
  const fetched = (): boolean =>
    cloud.requests.slice(from).some((r) => r.method === 'GET' && r.path === `/images/${made() ?? 0}` && r.status === 200);
  for (let i = 0; i < 1500 && !fetched(); i++) await new Promise((r) => setTimeout(r, 20));
  t.ok(fetched(), 'the run got as far as the relabelling');
  await new Promise((r) => setTimeout(r, 300));
  child.kill('SIGKILL');
  t.equal(await exited, 'SIGKILL');

  const id = made() ?? 0;
  const snapshot = snapshots().find((i) => i.id === id);
  const run = snapshot?.labels[LABEL_UPLOAD_RUN] ?? '';
  t.match(run, /^[0-9a-f]{8}$/, 'the snapshot carries the run label');
  t.same(
    snapshot?.labels,
    { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_ROLE]: ROLE_IMAGE_UPLOAD, [LABEL_UPLOAD_RUN]: run },
    'only the temporary labels',
  );
  t.equal(cloud.liveServers()[0]?.labels[LABEL_UPLOAD_RUN], run, 'the same run as the server left behind');
  t.same(await client().listImages({ type: 'snapshot', labelSelector: 'died=yes' }), [], "a pool's label selector does not see it");

  const dry: string[] = [];
  const listed = await cleanupUploads(client(), true, (l) => dry.push(l), silent);
  t.same(
    listed.snapshots.map((i) => i.id),
    [id],
    'image cleanup --dry-run finds the unfinished snapshot',
  );
  t.equal(listed.servers.length, 1);
  t.equal(listed.sshKeys.length, 1);
  t.match(dry.join('\n'), new RegExp(`would delete unfinished snapshot ${id} \\(`));
  t.ok(
    snapshots().some((i) => i.id === id),
    '--dry-run deleted nothing',
  );

  const r = await cli(['image', 'cleanup'], env);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, new RegExp(`deleting unfinished snapshot ${id} `));
  t.match(r.stdout, /deleted 1 server\(s\), 1 ssh key\(s\) and 1 unfinished snapshot\(s\)/);
  await settle();
  t.same(
    snapshots().map((i) => i.id),
    before,
    'the unfinished snapshot is gone',
  );
  assertNoLeftovers(t, 'after image cleanup of a killed run');
});

t.test('the client: 204 answers, ssh key uniqueness', async (t) => {
  const hc = client();
  const pair = generateKeyPair('uniq');
  const k = await hc.createSshKey({ name: 'uniq', public_key: pair.publicKey, labels: { a: 'b' } });
  t.match(k.fingerprint, /^([0-9a-f]{2}:){15}[0-9a-f]{2}$/);
  await t.rejects(hc.createSshKey({ name: 'uniq', public_key: generateKeyPair('other').publicKey }), {
    code: 'uniqueness_error',
    status: 409,
  });
  t.same(
    (await hc.listSshKeys({ labelSelector: 'a=b' })).map((x) => x.id),
    [k.id],
  );
  // The answer of the first create is lost: the resend is answered uniqueness_error, and the key is adopted.
  cloud.inject({ method: 'POST', path: '/ssh_keys', status: 502, afterHandling: true });
  const pair2 = generateKeyPair('lost');
  const adopted = await hc.createSshKey({ name: 'lost', public_key: pair2.publicKey });
  t.equal(adopted.name, 'lost');
  t.equal(cloud.listSshKeys().filter((x) => x.name === 'lost').length, 1);
  await hc.deleteSshKey(k.id);
  await hc.deleteSshKey(adopted.id);
  const err = await hc.deleteSshKey(k.id).catch((e: unknown) => e);
  t.ok(err instanceof HcloudError && err.status === 404);
  t.same(cloud.schemaErrors, []);
});

t.test('the client: updateImage replaces the labels, and is resent after a lost answer (same body, same result)', async (t) => {
  const hc = client();
  const base = await hc.createServer({
    name: 'relabel-base',
    server_type: 'cx23',
    location: 'fsn1',
    image: 'ubuntu-24.04',
    start_after_create: false,
  });
  await hc.waitForActions([base.action]);
  const snap = await hc.createImage(base.server.id, { type: 'snapshot', labels: { a: '1', b: '2' } });
  await hc.waitForActions([snap.action]);
  const puts = (): number => cloud.requests.filter((r) => r.method === 'PUT' && r.path === `/images/${snap.image.id}`).length;
  cloud.inject({ method: 'PUT', path: `/images/${snap.image.id}`, status: 502, afterHandling: true });
  const updated = await hc.updateImage(snap.image.id, { labels: { c: '3' } });
  t.same(updated.labels, { c: '3' }, 'the labels given replace all of them');
  t.equal(puts(), 2, 'the PUT was sent again after the lost answer');
  t.same((await hc.getImage(snap.image.id)).labels, { c: '3' });
  await t.rejects(hc.updateImage(snap.image.id, { labels: { 'bad key!': 'x' } }), { status: 422, code: 'invalid_input' });
  await hc.deleteImage(snap.image.id);
  await hc.deleteServer(base.server.id);
  await settle();
  t.same(cloud.schemaErrors, []);
});

t.test('the fake rescue system: only the project key logs in, /dev/sda is a regular file there only', async (t) => {
  const hc = client();
  const login = generateKeyPair('rescue-test');
  const key = await hc.createSshKey({ name: 'rescue-test', public_key: login.publicKey });
  const created = await hc.createServer({
    name: 'rescue-test',
    server_type: 'cx23',
    location: 'fsn1',
    image: 'ubuntu-24.04',
    start_after_create: false,
  });
  await hc.waitForActions([created.action]);
  const rescue = await hc.enableRescue(created.server.id, { type: 'linux64', ssh_keys: [key.id] });
  await hc.waitForActions([rescue.action]);
  t.equal((await hc.getServer(created.server.id)).rescue_enabled, true);
  await hc.waitForActions([await hc.poweron(created.server.id)]);
  const info = (): ReturnType<FakeCloud['servers']>[number] | undefined => cloud.servers().find((s) => s.id === created.server.id);
  for (let i = 0; i < 200 && !info()?.sshdRunning; i++) await new Promise((r) => setTimeout(r, 20));
  t.equal(info()?.inRescue, true);
  const address = info()?.address ?? '';
  const ssh = (privateKey: string, command: string): Promise<string> =>
    new Promise((resolve, reject) => {
      const c = new ssh2.Client();
      c.on('error', (e) => {
        c.end();
        reject(e);
      });
      c.once('ready', () =>
        c.exec(command, (err, ch) => {
          if (err) return reject(err);
          let out = '';
          ch.on('data', (b: Buffer) => (out += b.toString()));
          ch.stderr.on('data', (b: Buffer) => (out += b.toString()));
          ch.on('close', () => {
            c.end();
            resolve(out);
          });
        }),
      );
      c.connect({ host: address, port: SSH_PORT, username: 'root', privateKey, hostVerifier: () => true });
    });
  t.match(await ssh(login.privateKey, 'stat -c %F /dev/sda; echo x > /dev/null && echo null-ok'), /regular (empty )?file\nnull-ok/);
  await t.rejects(ssh(generateKeyPair('stranger').privateKey, 'true'), /authentication/i, 'another key is refused');
  t.throws(() => readFileSync('/dev/sda'), 'no /dev/sda appeared outside the server');
  await hc.waitForActions([await hc.shutdown(created.server.id)]);
  t.equal((await hc.getServer(created.server.id)).status, 'off');
  t.equal((await hc.getServer(created.server.id)).rescue_enabled, false, 'rescue mode lasted one boot');
  await hc.deleteServer(created.server.id);
  await hc.deleteSshKey(key.id);
  await settle();
  t.same(cloud.schemaErrors, []);
});
