import t from 'tap';
import { parseNixCommand, renderNixCommand } from '../../src/ssh/nix-command.js';
import { PROGRAM_PATHS_REFUSED } from './nix-command-cases.js';

t.test('the commands Nix sends are allowed and rebuilt', async (t) => {
  const cases: [string, string][] = [
    ['nix-daemon --stdio', 'nix-daemon --stdio'],
    ['nix-store --serve', 'nix-store --serve'],
    ['nix-store --serve --write', 'nix-store --serve --write'],
    // `?` is a glob character for the worker's shell: quoted on the way out.
    ["nix-store --serve --write --store 'local?root=/mnt'", "nix-store --serve --write --store 'local?root=/mnt'"],
    ['nix-daemon --stdio --store daemon', 'nix-daemon --stdio --store daemon'],
    [
      '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix-2.24.10/bin/nix-daemon --stdio',
      '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix-2.24.10/bin/nix-daemon --stdio',
    ],
    [
      '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-lix-2.93.0/libexec/nix/nix-store --serve',
      '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-lix-2.93.0/libexec/nix/nix-store --serve',
    ],
    ['  nix-store   --serve  --write ', 'nix-store --serve --write'],
  ];
  for (const [input, rendered] of cases) t.equal(renderNixCommand(parseNixCommand(input)), rendered, input);
});

t.test('everything else is refused', async (t) => {
  const refused = [
    '',
    'bash',
    'sh -c id',
    'nix-daemon',
    'nix-daemon --stdio; rm -rf /',
    'nix-daemon --stdio && id',
    'nix-daemon --stdio\nid',
    'nix-store --serve --write | tee x',
    'nix-store --serve --store $(id)',
    'nix-store --serve --store `id`',
    "nix-store --serve --store '$(id)'",
    'nix-store --serve --store "$(id)"',
    'nix-store --serve --store',
    'nix-store --stdio',
    'nix-daemon --serve',
    'nix-daemon --stdio --stdio',
    'nix-store --serve --write --write',
    'nix-store --serve --option x y',
    'nix-build --serve',
    'relative/nix-daemon --stdio',
    '/bin/../evil/nix-daemonx --stdio',
    "nix-daemon --stdio 'unterminated",
    `nix-daemon --stdio --store ${'a'.repeat(5000)}`,
    'nix-store --serve --write --store a;b',
  ];
  for (const path of PROGRAM_PATHS_REFUSED) refused.push(`${path} --stdio`);
  for (const command of refused) t.throws(() => parseNixCommand(command), { name: 'CommandRefused' }, JSON.stringify(command.slice(0, 60)));
});

t.test('a store value is re-quoted so the worker shell cannot expand it', async (t) => {
  const cmd = parseNixCommand("nix-store --serve --store 'ssh://a?x=1&y=2'");
  t.equal(cmd.store, 'ssh://a?x=1&y=2');
  t.equal(renderNixCommand(cmd), "nix-store --serve --store 'ssh://a?x=1&y=2'");
});
