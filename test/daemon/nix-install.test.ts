/**
 * The cloud-config's Nix install step, run for real with sh against a local HTTP server: the
 * download is retried, the tarball is checked before anything in it runs, and the release's own
 * `install` gets the multi-user flags. (The real installer runs in test/e2e/stock-image.test.ts.)
 */
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { installNixLines, NIX_INSTALL_LOG } from '../../src/daemon/nix-install.js';
import { RUNCMD_ENVIRONMENT } from '../../src/daemon/user-data.js';
import type { NixRelease } from '../../src/core/nix-release.js';

const dir = mkdtempSync(join(tmpdir(), 'nhb-nix-install-'));
const system = process.arch === 'arm64' ? 'aarch64-linux' : 'x86_64-linux';
const version = '9.9.9';

/** A release-layout tarball whose `install` records its arguments and environment. */
function tarball(): Buffer {
  const root = join(dir, 'tree');
  const top = join(root, `nix-${version}-${system}`);
  mkdirSync(top, { recursive: true });
  writeFileSync(join(top, 'install'), `#!/bin/sh\necho "args $* HOME=$HOME USER=$USER" > ${join(dir, 'ran')}\necho installing\n`);
  chmodSync(join(top, 'install'), 0o755);
  const r = spawnSync('tar', ['-cJf', '-', '-C', root, `nix-${version}-${system}`]);
  if (r.status !== 0) throw new Error(r.stderr.toString());
  return r.stdout;
}

const body = tarball();
const sha256 = createHash('sha256').update(body).digest('hex');
let refuse = 0;
const requests: number[] = [];
const server = createServer((req, res) => {
  requests.push(refuse > 0 ? 503 : 200);
  if (refuse > 0) {
    refuse--;
    res.writeHead(503).end();
  } else res.writeHead(200, { 'content-type': 'application/x-xz' }).end(body);
});
await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
t.teardown(() => server.close());
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/nix-{version}/nix-{version}-{system}.tar.xz`;

/** Runs the step as the runcmd script does (minus what would touch this machine's /run and /var/log). */
function runStep(release: NixRelease): Promise<{ code: number | null; out: string }> {
  const log = join(dir, 'install.log');
  const lines = installNixLines(release).map((l) => l.replaceAll(NIX_INSTALL_LOG, log));
  const script = [RUNCMD_ENVIRONMENT, 'fail() { echo "FAIL: $*"; exit 1; }', '(', ...lines, ') || exit 1', 'echo step-done'].join('\n');
  return new Promise((resolve) => {
    const child = spawn('sh', ['-c', script], { env: { PATH: process.env.PATH ?? '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    child.once('close', (code) => resolve({ code, out }));
  });
}

t.test('the step passes shellcheck as POSIX sh', async (t) => {
  const file = join(dir, 'install.sh');
  writeFileSync(file, `#!/bin/sh\nfail() { exit 1; }\n${installNixLines({ version, url, sha256: { [system]: sha256 } }).join('\n')}\n`);
  const r = spawnSync('shellcheck', ['--shell=sh', file], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stdout + r.stderr);
});

t.test("a flaky download is retried, the checked tarball's installer runs multi-user with the environment set", async (t) => {
  refuse = 1;
  requests.length = 0;
  const r = await runStep({ version, url, sha256: { [system]: sha256 } });
  t.equal(r.code, 0, r.out);
  t.same(requests, [503, 200], 'one refusal, then the tarball');
  t.match(r.out, `download of ${url.replaceAll('{version}', version).replaceAll('{system}', system)} failed (attempt 1 of 5)`);
  t.equal(
    readFileSync(join(dir, 'ran'), 'utf8'),
    'args --daemon --yes --no-channel-add HOME=/root USER=root\n',
    "the release's own installer, multi-user, without a channel",
  );
  t.match(r.out, `installed Nix ${version} (${system}, sha256 ${sha256})`);
});

t.test('a tarball that does not match its sha256 is never run', async (t) => {
  writeFileSync(join(dir, 'ran'), '');
  const wrong = 'ab'.repeat(32);
  const r = await runStep({ version, url, sha256: { [system]: wrong } });
  t.equal(r.code, 1);
  t.match(
    r.out,
    `FAIL: sha256 mismatch of ${url.replaceAll('{version}', version).replaceAll('{system}', system)}: expected ${wrong}, got ${sha256}; not running it`,
  );
  t.equal(readFileSync(join(dir, 'ran'), 'utf8'), '', 'the installer did not run');
  t.notMatch(r.out, 'step-done');
});

t.test("no hash for this machine's architecture: nothing is downloaded", async (t) => {
  requests.length = 0;
  const other = system === 'x86_64-linux' ? 'aarch64-linux' : 'x86_64-linux';
  const r = await runStep({ version, url, sha256: { [other]: sha256 } });
  t.equal(r.code, 1);
  t.match(r.out, /FAIL: no sha256 of a Nix 9\.9\.9 tarball for \S+ is configured/);
  t.same(requests, []);
  t.notOk(existsSync(join(dir, 'nix.tar.xz')));
});
