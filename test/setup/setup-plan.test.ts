/** A setup plan's listing and its making, for a plan made by hand. */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { applyPlan, formatPlan, type SetupPlan } from '../../src/setup/setup-plan.js';

function plan(dir: string): SetupPlan {
  return {
    dirs: [{ path: join(dir, 'keys', 'deep'), mode: 0o700 }],
    files: [
      { path: join(dir, 'keys', 'deep', 'key'), before: null, after: 'PRIVATE\n', mode: 0o600, secret: true, what: 'a key' },
      { path: join(dir, 'machines'), before: 'old\n', after: 'new\n', mode: 0o644, what: 'machines' },
    ],
    unchanged: [join(dir, 'ssh_config')],
    hints: ['restart it'],
    manual: ['chmod it'],
    machinesLines: [],
    sshBlock: [],
    portChoice: { style: 'alias', reason: 'Nix 2.8: the alias' },
  };
}

t.test('the listing: every change with its diff, never a secret, and what a dry run did not write', async (t) => {
  const p = plan('/x');
  t.equal(
    formatPlan(p, false),
    [
      'Nix 2.8: the alias',
      'create directory /x/keys/deep (mode 0700)',
      'create /x/keys/deep/key: a key (mode 0600)',
      '  (private key: not shown)',
      'update /x/machines: machines',
      '  --- /x/machines',
      '  +++ /x/machines',
      '  @@ -1,1 +1,1 @@',
      '  -old',
      '  +new',
      'unchanged /x/ssh_config',
      'to do by hand: chmod it',
      'hint: restart it',
      '3 change(s) to make: nothing written (dry run); run again with --write to make them',
      '',
    ].join('\n'),
  );
  t.match(formatPlan(p, true), /\nmade 3 change\(s\)\n$/);
  t.match(formatPlan({ ...p, dirs: [], files: [] }, true), /\nnothing to change\n$/);
});

t.test('making it: folders with their mode, new files with theirs, changed files keep the mode they had', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'setup-plan-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'machines'), 'old\n', { mode: 0o640 });
  applyPlan(plan(dir));
  t.equal(statSync(join(dir, 'keys', 'deep')).mode & 0o777, 0o700);
  t.equal(statSync(join(dir, 'keys', 'deep', 'key')).mode & 0o777, 0o600);
  t.equal(readFileSync(join(dir, 'keys', 'deep', 'key'), 'utf8'), 'PRIVATE\n');
  t.equal(readFileSync(join(dir, 'machines'), 'utf8'), 'new\n');
  t.equal(statSync(join(dir, 'machines')).mode & 0o777, 0o640);
});
