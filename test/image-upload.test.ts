// `image upload` / `image cleanup` against the fake cloud, whose rescue system is a real sshd (in
// its own mount namespace) with a regular file at /dev/sda: the bytes written there are compared
// with the image, and snapshots remember them. Also: a failure at each step leaves no temporary
// server or ssh key, SIGINT does not either, and a pool picks the newest matching snapshot.

import t, { type Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import ssh2 from 'ssh2';
import { FakeCloud } from './fake-hcloud/index.js';
import { HcloudClient } from '../src/hcloud/client.js';
import { HcloudError } from '../src/hcloud/errors.js';
import { generateKeyPair } from '../src/keys.js';
import { LABEL_MANAGED_BY, MANAGED_BY } from '../src/labels.js';
import { loadConfig } from '../src/config.js';
import { Worker } from '../src/worker.js';
import type { WorkerDeps } from '../src/worker.js';
import {
  cleanupUploads,
  LABEL_ROLE,
  parseLabels,
  ROLE_IMAGE_UPLOAD,
  uploadImage,
  uploadLeftoverSelector,
  writeCommand,
  type UploadOptions,
} from '../src/image-upload.js';

const TOKEN = 'image-upload-test-token';
/** Not 22: the machine may run its own sshd there. */
const SSH_PORT = 2031;
const CLI = join(import.meta.dirname, '..', 'src', 'cli.ts');
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
  t.same(cloud.liveServers().map((s) => s.name), [], `${what}: no server left`);
  t.same(cloud.listSshKeys().map((k) => k.name), [], `${what}: no ssh key left`);
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

  const listed = await client().listImages({ type: 'snapshot', labelSelector: 'nix-hcloud-builder/image=worker,version=1' });
  t.same(listed.map((i) => i.id), [image.id], 'listed by label selector');
  t.same(cloud.snapshotDisk(image.id), { sha256: sha256(raw), bytes: raw.length }, 'the disk holds exactly the image');
  const temp = cloud.servers().find((s) => s.id === result.serverId);
  t.ok(temp?.deleted, 'temporary server deleted');
  t.equal(temp?.labels[LABEL_ROLE], ROLE_IMAGE_UPLOAD, 'temporary server was labelled');
  assertNoLeftovers(t, 'after a raw upload');

  // A server created from the snapshot has that disk.
  const hc = client();
  const created = await hc.createServer({ name: 'from-snapshot', server_type: 'cx23', location: 'fsn1', image: String(image.id), start_after_create: false });
  t.same(cloud.liveServers().find((s) => s.id === created.server.id)?.disk, { sha256: sha256(raw), bytes: raw.length }, 'a server from the snapshot has its disk');
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
  const cases: { step: string; setup: () => void; opts?: Partial<UploadOptions>; error: RegExp | { code: string } | { message: RegExp } }[] = [
    { step: '1 ssh key', setup: () => cloud.inject({ method: 'POST', path: '/ssh_keys', status: 422, code: 'invalid_input' }), error: { code: 'invalid_input' } },
    { step: '2 server', setup: () => cloud.inject({ method: 'POST', path: '/servers', status: 412, code: 'resource_unavailable' }), error: { code: 'resource_unavailable' } },
    {
      step: '2 server (create action fails)',
      setup: () => cloud.behaveNext('action-error'),
      error: { code: 'action_failed' },
    },
    { step: '3 rescue', setup: () => cloud.inject({ method: 'POST', path: /\/actions\/enable_rescue$/, status: 500 }), error: { code: 'server_error' } },
    { step: '3 poweron', setup: () => cloud.inject({ method: 'POST', path: /\/actions\/poweron$/, status: 500 }), error: { code: 'server_error' } },
    { step: '4 ssh', setup: () => cloud.behaveNext('no-sshd'), opts: { sshTimeoutMs: 600 }, error: /did not accept the ssh login/ },
    { step: '5 write', setup: () => {}, opts: { file: brokenZst }, error: /writing the image on the server failed/ },
    { step: '6 shutdown', setup: () => cloud.inject({ method: 'POST', path: /\/actions\/shutdown$/, status: 500 }), error: { code: 'server_error' } },
    { step: '7 create_image', setup: () => cloud.inject({ method: 'POST', path: /\/actions\/create_image$/, status: 500 }), error: { code: 'server_error' } },
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
  t.same(r.servers.map((s) => s.id), [result.serverId]);
  await settle();
  assertNoLeftovers(t, 'after image cleanup');
  t.ok(cloud.snapshotDisk(result.image.id), 'the snapshot stays');
  await client().deleteImage(result.image.id);
});

t.test('image cleanup: deletes leftovers by label, --dry-run only lists, never snapshots or other servers', async (t) => {
  const hc = client();
  const labels = { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_ROLE]: ROLE_IMAGE_UPLOAD };
  const key = await hc.createSshKey({ name: 'left-key', public_key: generateKeyPair('left').publicKey, labels });
  const other = await hc.createSshKey({ name: 'user-key', public_key: generateKeyPair('user').publicKey, labels: { [LABEL_MANAGED_BY]: MANAGED_BY } });
  const server = await hc.createServer({ name: 'left-server', server_type: 'cx23', location: 'fsn1', image: 'ubuntu-24.04', start_after_create: false, labels });
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
  t.same(listed.servers.map((s) => s.id), [server.server.id]);
  t.same(listed.sshKeys.map((k) => k.id), [key.id]);
  t.match(dry.join('\n'), /would delete server left-server/);
  t.match(dry.join('\n'), /would delete ssh key left-key/);
  t.equal(cloud.liveServers().length, 2, '--dry-run deleted nothing');
  t.equal(cloud.listSshKeys().length, 2);

  const done: string[] = [];
  await cleanupUploads(hc, false, (l) => done.push(l), silent);
  await settle();
  t.same(cloud.liveServers().map((s) => s.name), ['a-worker'], 'only the temporary server went');
  t.same(cloud.listSshKeys().map((k) => k.id), [other.id], 'only the temporary key went');
  t.ok((await hc.listImages({ type: 'snapshot' })).some((i) => i.id === snap.image.id), 'the snapshot stays');
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
  writeFileSync(configFile, JSON.stringify({ stateDir: join(dir, 'state'), hcloud: { endpoint: cloud.url }, pools: { x86_64: { serverTypes: ['cx23'] } } }));
  const env = { ...process.env, HCLOUD_TOKEN: TOKEN, NIX_HCLOUD_BUILDER_CONFIG: configFile };
  // Hold the shutdown request for a while, so the signal arrives mid-upload.
  cloud.inject({ method: 'POST', path: /\/actions\/shutdown$/, delayMs: 4000 });
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'image', 'upload', rawFile, '--arch', 'x86', '--label', 'cli=yes', '--ssh-port', String(SSH_PORT)], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
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
  const key = await hc.createSshKey({ name: 'cli-left', public_key: generateKeyPair('x').publicKey, labels: { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_ROLE]: ROLE_IMAGE_UPLOAD } });
  const dry = await cli(['image', 'cleanup', '--dry-run'], env);
  t.equal(dry.status, 0, dry.stderr);
  t.match(dry.stdout, /would delete ssh key cli-left/);
  t.match(dry.stdout, /would delete 0 server\(s\) and 1 ssh key\(s\)/);
  t.equal(cloud.listSshKeys().length, 1);
  await hc.deleteSshKey(key.id);

  const bad = await cli(['image', 'upload', rawFile, '--arch', 'mips', '--label', 'a=b'], env);
  t.equal(bad.status, 1);
  t.match(bad.stderr, /--arch: expected x86 or arm/);
});

t.test('a pool with image.labelSelector picks the newest matching snapshot (API only)', async (t) => {
  const api = await FakeCloud.start({ token: TOKEN, dataDir: join(root, 'api-only'), realServers: false, bootDelayMs: 20, deleteDelayMs: 10 });
  t.teardown(() => api.stop());
  const hc = new HcloudClient({ endpoint: api.url, token: TOKEN, actionPollIntervalMs: 10, logger: silent });
  const base = await hc.createServer({ name: 'base', server_type: 'cx23', location: 'fsn1', image: 'ubuntu-24.04', start_after_create: false });
  await hc.waitForActions([base.action]);
  const snapshot = async (labels: Record<string, string>): Promise<number> => {
    const r = await hc.createImage(base.server.id, { type: 'snapshot', labels });
    await hc.waitForActions([r.action]);
    return r.image.id;
  };
  const older = await snapshot({ 'nix-hcloud-builder/image': 'worker' });
  const newer = await snapshot({ 'nix-hcloud-builder/image': 'worker' });
  await snapshot({ 'nix-hcloud-builder/image': 'other' });
  t.ok(newer > older);

  const configFile = join(root, 'pool-config.json');
  writeFileSync(
    configFile,
    JSON.stringify({ stateDir: join(root, 'pool-state'), hcloud: { endpoint: api.url }, pools: { x86_64: { serverTypes: ['cx23'], image: { labelSelector: 'nix-hcloud-builder/image=worker' } } } }),
  );
  const pool = loadConfig(configFile).pools['x86_64'];
  if (!pool) throw new Error('no pool');
  const { record } = Worker.plan(pool, 'test');
  const deps = { hcloud: hc, log: silent } as unknown as WorkerDeps;
  const worker = new Worker(pool, record, deps);
  const resolve = (): Promise<string> => (worker as unknown as { resolveImage(s: AbortSignal): Promise<string> }).resolveImage(new AbortController().signal);
  t.equal(await resolve(), String(newer), 'the newest matching snapshot, even within the same second');
  await hc.deleteImage(newer);
  t.equal(await resolve(), String(older), 'after deleting it, the next newest');
  await hc.deleteImage(older);
  await t.rejects(resolve(), /no available snapshot matches the label selector/);
  t.same(api.schemaErrors, []);
});

t.test('the client: 204 answers, ssh key uniqueness', async (t) => {
  const hc = client();
  const pair = generateKeyPair('uniq');
  const k = await hc.createSshKey({ name: 'uniq', public_key: pair.publicKey, labels: { a: 'b' } });
  t.match(k.fingerprint, /^([0-9a-f]{2}:){15}[0-9a-f]{2}$/);
  await t.rejects(hc.createSshKey({ name: 'uniq', public_key: generateKeyPair('other').publicKey }), { code: 'uniqueness_error', status: 409 });
  t.same((await hc.listSshKeys({ labelSelector: 'a=b' })).map((x) => x.id), [k.id]);
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

t.test('the fake rescue system: only the project key logs in, /dev/sda is a regular file there only', async (t) => {
  const hc = client();
  const login = generateKeyPair('rescue-test');
  const key = await hc.createSshKey({ name: 'rescue-test', public_key: login.publicKey });
  const created = await hc.createServer({ name: 'rescue-test', server_type: 'cx23', location: 'fsn1', image: 'ubuntu-24.04', start_after_create: false });
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
      const c = new (ssh2.Client)();
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
