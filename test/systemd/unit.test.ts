/**
 * systemd/nix-hcloud-builder.service passes `systemd-analyze verify` as a user unit.
 *
 * verify also checks that ExecStart's command exists. A bare command name is looked up in
 * systemd's fixed search path (/usr/local/sbin, /usr/local/bin, /usr/sbin, /usr/bin), where
 * `npm install -g` puts it; so the check runs in a private mount namespace in which the built CLI
 * is installed as /usr/local/sbin/nix-hcloud-builder, leaving the machine's own folders alone.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, ROOT } from '../rig/rig.js';

const UNIT = join(ROOT, 'systemd', 'nix-hcloud-builder.service');

/** Runs `systemd-analyze --user verify FILE` with the CLI installed as a command. */
function verify(unitFile: string): { status: number | null; output: string } {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-systemd-'));
  try {
    const script = [
      'set -e',
      'mount -t tmpfs -o mode=0755 tmpfs /usr/local/sbin',
      `printf '#!/bin/sh\\nexec %s %s "$@"\\n' "${process.execPath}" "${CLI}" > /usr/local/sbin/nix-hcloud-builder`,
      'chmod 755 /usr/local/sbin/nix-hcloud-builder && nix-hcloud-builder --help | head -1 >&2',
      `XDG_RUNTIME_DIR=${dir} systemd-analyze --user verify "$1" 2>&1`,
    ].join('\n');
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script, 'sh', unitFile], {
      encoding: 'utf8',
      env: { ...process.env, PATH: `/usr/local/sbin:${process.env.PATH ?? '/usr/bin:/bin'}` },
    });
    return { status: r.status, output: `${r.stdout}${r.stderr}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

t.test('the user unit passes systemd-analyze verify once the command is installed', async (t) => {
  const r = verify(UNIT);
  const usage = spawnSync(process.execPath, [CLI, '--help'], { encoding: 'utf8' }).stdout.split('\n', 1)[0] ?? '';
  t.match(usage, /^usage: nix-hcloud-builder /);
  t.equal(r.output, `${usage}\n`, 'the installed command is the CLI, and verify reports nothing');
  t.equal(r.status, 0);
});

t.test('verify does check: it reports a bad setting', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-systemd-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const broken = join(dir, 'nix-hcloud-builder.service');
  writeFileSync(broken, readFileSync(UNIT, 'utf8').replace('Restart=on-failure', 'Restart=sometimes'));
  const r = verify(broken);
  t.match(r.output, /Failed to parse service restart specifier, ignoring: sometimes/);
});

t.test('what the unit promises', async (t) => {
  const unit = readFileSync(UNIT, 'utf8');
  t.match(unit, /^ExecStart=nix-hcloud-builder serve --config %E\/nix-hcloud-builder\/config\.json$/m, 'runs serve with the config path');
  t.match(unit, /^Restart=on-failure$/m);
  const stop = /^TimeoutStopSec=(\d+)min$/m.exec(unit);
  t.ok(stop && Number(stop[1]) >= 2, 'a stop timeout long enough to delete the workers');
  t.match(unit, /^KillMode=mixed$/m, 'SIGTERM goes to the daemon only; it ends its ssh sessions itself');
  t.match(unit, /^WantedBy=default\.target$/m, 'a user unit');
  t.notMatch(unit, /^User=/m, 'no User= (a user unit runs as its user)');
});
