// The command line: each command takes exactly the options it declares (anything else is a
// one-line error naming the option and the command, exit 2), the usage texts are made from the
// declarations, and an error that is the user's to fix ends in one line and exit 1.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { COMMANDS } from '../../src/cli/commands.js';
import { COMMON_OPTIONS, UsageError } from '../../src/cli/common.js';
import { parseCommandLine, type ParsedCommandLine } from '../../src/cli/parse.js';
import { invocation } from '../../src/cli/usage.js';
import type { Command, OptionSpec } from '../../src/cli/command.js';
import { UserError } from '../../src/core/errors.js';
import { ConfigError } from '../../src/core/config.js';
import { TokenError } from '../../src/core/token.js';
import { SetupError } from '../../src/setup/setup-error.js';
import { MachinesError } from '../../src/setup/machines.js';
import { ImageUploadError } from '../../src/image/temporary.js';
import { StateError } from '../../src/daemon/state.js';
import { PoolTypeError } from '../../src/daemon/server-types.js';
import { ControlError } from '../../src/daemon/control.js';
import { HcloudError } from '../../src/hcloud/errors.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'src', 'cli', 'main.ts');
const dir = mkdtempSync(join(tmpdir(), 'cli-test-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const ENV = { NIX_HCLOUD_BUILDER_CONFIG: join(dir, 'default-config.json') };

function parse(argv: string[]): ParsedCommandLine {
  return parseCommandLine(argv, COMMANDS, ENV);
}

function run(argv: string[]): Extract<ParsedCommandLine, { kind: 'run' }> {
  const parsed = parse(argv);
  if (parsed.kind !== 'run') throw new Error(`expected a command to run for ${argv.join(' ')}, got help`);
  return parsed;
}

function help(argv: string[]): Extract<ParsedCommandLine, { kind: 'help' }> {
  const parsed = parse(argv);
  if (parsed.kind !== 'help') throw new Error(`expected help for ${argv.join(' ')}`);
  return parsed;
}

/** The UsageError `argv` is refused with. */
function refusal(argv: string[]): UsageError {
  try {
    parse(argv);
  } catch (err) {
    if (err instanceof UsageError) return err;
    throw err;
  }
  throw new Error(`${argv.join(' ')} was accepted`);
}

/** Runs the CLI from source, as a user would run it. */
function cli(argv: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI, ...argv], {
    encoding: 'utf8',
    env: { ...process.env, ...ENV, NIX_HCLOUD_BUILDER_DEBUG: '' },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** An argument list that gives `--name` (with a value when it takes one). */
function give(name: string, type: 'string' | 'boolean'): string[] {
  return type === 'string' ? [`--${name}`, 'x'] : [`--${name}`];
}

/** Operands a command accepts, so that only its options are under test. */
function operandsFor(command: Command): string[] {
  return Array.from({ length: command.operands.min }, (_, i) => `operand${i}`);
}

const words = (c: Command): string[] => c.name.split(' ');

t.test('serve --dry-run is refused, naming the option and the command', async (t) => {
  const err = refusal(['serve', '--dry-run']);
  t.equal(err.exitCode, 2);
  t.match(err.message, /^serve does not take the option --dry-run \(its options: --keep-workers, -c\/--config, -h\/--help\)$/);
  t.ok(err instanceof UserError, 'a UserError: main prints it as one line');
});

t.test('every command refuses every option it does not declare, and accepts each it does', async (t) => {
  const all = new Map<string, 'string' | 'boolean'>();
  for (const c of COMMANDS) for (const [name, spec] of Object.entries(c.options)) all.set(name, spec.type);
  all.set('no-such-option', 'boolean');
  let refused = 0;
  for (const command of COMMANDS) {
    for (const [name, type] of all) {
      const argv = [...words(command), ...operandsFor(command), ...give(name, type)];
      if (name in command.options) {
        const parsed = run(argv);
        t.equal(parsed.command, command, `${argv.join(' ')}: runs ${command.name}`);
        const key = name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
        const spec = command.options[name];
        const expected = spec?.type === 'boolean' ? true : spec?.multiple ? ['x'] : 'x';
        t.same(parsed.values[key], expected, `${argv.join(' ')}: the value is ${JSON.stringify(expected)} under ${key}`);
      } else {
        const err = refusal(argv);
        t.equal(err.message.split('\n').length, 1, 'one line');
        t.ok(
          err.message.startsWith(`${command.name} does not take the option --${name} `),
          `${command.name} refuses --${name}: ${err.message}`,
        );
        refused++;
      }
    }
  }
  t.ok(refused > 40, `${refused} refusals checked`);
});

t.test('unknown and incomplete commands are refused in one line', async (t) => {
  t.match(refusal(['frob']).message, /^unknown command "frob"; the commands are serve, status, down, setup, up, gc, image /);
  t.match(refusal(['image']).message, /^image: expected upload or cleanup, got nothing$/);
  t.match(refusal(['image', 'push']).message, /^image: expected upload or cleanup, got "push"$/);
  t.match(refusal(['serve', 'now']).message, /^serve takes no arguments, got "now"$/);
  t.match(
    refusal(['image', 'upload']).message,
    /^image upload takes 1 argument\(s\), got 0 \(usage: nix-hcloud-builder image upload IMAGE\.raw/,
  );
  t.match(refusal(['image', 'upload', 'a', 'b', '--arch', 'x86']).message, /takes 1 argument\(s\), got 2/);
  t.match(refusal(['status', '--json=yes']).message, /^status: --json takes no value$/);
  t.match(refusal(['up', '--workers']).message, /^up: --workers needs a value \(--workers N\)$/);
  t.match(refusal(['serve', '-x']).message, /^serve does not take the option -x /);
  t.match(refusal(['status', '--config', '--json']).message, /^status: --config needs a value \(--config FILE\), not the option --json$/);
  t.same(run(['status', '--config=-odd.json']).context.configFile, '-odd.json', 'such a value goes as --config=VALUE');
});

t.test('options, operands and the config file as the commands get them', async (t) => {
  const up = run(['up', 'x86_64', 'arm', '-n', '3', '-c', '/etc/x.json']);
  t.equal(up.command.name, 'up');
  t.same(up.values, { workers: '3' }, 'only its own options, camel-cased; --config and --help are not among them');
  t.same(up.context, { configFile: '/etc/x.json', operands: ['x86_64', 'arm'] });
  t.equal(run(['--config', '/a.json', 'status']).context.configFile, '/a.json', 'options may come before the command');
  t.equal(run(['status']).context.configFile, ENV.NIX_HCLOUD_BUILDER_CONFIG, 'else $NIX_HCLOUD_BUILDER_CONFIG');
  const setup = run([
    'setup',
    '--write',
    '--ssh-config',
    '/s',
    '--machines',
    '/m',
    '--nix-conf',
    '/n',
    '--client-key',
    '/k',
    '--alias',
    'b',
  ]);
  t.same(setup.values, { write: true, sshConfig: '/s', machines: '/m', nixConf: '/n', clientKey: '/k', alias: 'b' });
  const upload = run(['image', 'upload', 'disk.raw', '--arch', 'arm', '--label', 'a=1', '--label', 'b=2', '--ssh-port', '2022']);
  t.equal(upload.command.name, 'image upload');
  t.same(upload.values, { arch: 'arm', label: ['a=1', 'b=2'], sshPort: '2022' });
  t.same(upload.context.operands, ['disk.raw']);
  t.same(run(['image', 'cleanup', '--dry-run']).values, { dryRun: true });
  t.same(run(['serve', '--keep-workers']).values, { keepWorkers: true });
  t.same(run(['gc', '--dry-run']).values, { dryRun: true });
  t.same(run(['status', '--json']).values, { json: true });
});

t.test('COMMAND --help is made from the declarations and lists each declared option', async (t) => {
  for (const command of COMMANDS) {
    const h = help([...words(command), '--help']);
    t.equal(h.exitCode, 0);
    t.ok(h.text.startsWith(`usage: nix-hcloud-builder ${invocation(command)}\n`), `${command.name}: its usage line first`);
    t.match(h.text.replace(/\s+/g, ' '), command.summary, `${command.name}: its summary`);
    for (const [name, spec] of Object.entries<OptionSpec>({ ...command.options, ...COMMON_OPTIONS })) {
      const line = h.text.split('\n').find((l) => new RegExp(`^  (-${spec.short ?? '.'}, |    )--${name}\\b`).test(l));
      t.ok(line, `${command.name} --help lists --${name}`);
      t.match(h.text.replace(/\s+/g, ' '), spec.description, `and what it does: ${spec.description}`);
      if (spec.default !== undefined) t.match(h.text.replace(/\s+/g, ' '), `default: ${spec.default}`, `and its default: ${spec.default}`);
    }
    t.same(help(['-h', ...words(command)]), h, `-h before ${command.name} too`);
  }
  const image = help(['image', '--help']);
  for (const command of COMMANDS.filter((c) => c.name.startsWith('image '))) {
    t.match(image.text, `nix-hcloud-builder ${invocation(command)}\n`, `image --help shows ${command.name}`);
    for (const name of Object.keys(command.options)) t.match(image.text, `--${name}`, `and its --${name}`);
  }
});

t.test('--help lists every command with its usage line; no command is exit 2', async (t) => {
  const h = help(['--help']);
  t.equal(h.exitCode, 0);
  for (const command of COMMANDS) t.match(h.text, `\n  ${invocation(command)}`, `lists ${command.name}`);
  t.match(h.text, /-c, --config FILE/);
  const none = help([]);
  t.equal(none.exitCode, 2);
  t.equal(none.text, h.text);
});

t.test('the README lists every command with the usage line it declares', async (t) => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  for (const command of COMMANDS)
    t.ok(readme.includes(`| \`${invocation(command).replace(/\|/g, '\\|')}\` |`), `README: ${invocation(command)}`);
});

t.test('the errors that end in one line and exit 1 are UserErrors', async (t) => {
  const errors = [
    new ConfigError('x'),
    new TokenError('x'),
    new SetupError('x'),
    new MachinesError('x'),
    new ImageUploadError('x'),
    new StateError('x'),
    new PoolTypeError('x'),
    new ControlError('x'),
    new HcloudError({ message: 'x', status: 401, code: 'unauthorized' }),
  ];
  for (const err of errors) {
    t.ok(err instanceof UserError, `${err.name} is a UserError`);
    t.equal(err.exitCode, 1, `${err.name}: exit 1`);
  }
  t.equal(new UsageError('x').exitCode, 2);
});

t.test('the CLI: a refused command line is one line on stderr and exit 2, before any config is read', async (t) => {
  const r = cli(['serve', '--dry-run', '--config', join(dir, 'missing.json')]);
  t.equal(r.status, 2);
  t.equal(r.stdout, '');
  t.equal(r.stderr, 'nix-hcloud-builder: serve does not take the option --dry-run (its options: --keep-workers, -c/--config, -h/--help)\n');
  const unknown = cli(['frob']);
  t.equal(unknown.status, 2);
  t.match(unknown.stderr, /^nix-hcloud-builder: unknown command "frob"; [^\n]*\n$/);
  const bare = cli([]);
  t.equal(bare.status, 2);
  t.match(bare.stderr, /^usage: nix-hcloud-builder COMMAND/, 'no command: the usage text, on stderr');
});

t.test('the CLI: a UserError (a missing or bad config) is one line and exit 1', async (t) => {
  const missing = join(dir, 'missing.json');
  const r = cli(['status', '--config', missing]);
  t.equal(r.status, 1);
  t.equal(r.stdout, '');
  t.match(r.stderr, new RegExp(`^nix-hcloud-builder: cannot read config file ${missing}[^\\n]*\\n$`));
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, JSON.stringify({ pools: { x86_64: { serverTypes: ['cx23'], maxWorkers: 'two' } } }));
  const b = cli(['gc', '--dry-run', '-c', bad]);
  t.equal(b.status, 1);
  t.match(b.stderr, /^nix-hcloud-builder: config key "pools\.x86_64\.maxWorkers": expected [^\n]*\n$/);
  const h = cli(['up', '--help']);
  t.equal(h.status, 0);
  t.match(h.stdout, /^usage: nix-hcloud-builder up \[POOL…\] \[--workers N\]\n/);
  t.match(h.stdout, /-n, --workers N +workers per pool/);
});
