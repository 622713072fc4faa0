/**
 * The import rule of src/ (docs/architecture.md): folders are layers, and a module imports only
 * from its own folder or from a folder of lower rank.
 *
 *   3  cli
 *   2  daemon, image, setup
 *   1  ssh, hcloud
 *   0  core
 *
 * Every relative import counts: `import … from`, `import type … from`, `export … from`, and
 * `import('…')` (TypeScript's own scanner finds them, so comments and strings do not).
 */
import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';
import ts from 'typescript';

const ROOT = join(import.meta.dirname, '..');

const RANK: Record<string, number> = { cli: 3, daemon: 2, image: 2, setup: 2, ssh: 1, hcloud: 1, core: 0 };

/** The folder of a path under src/ ('' for a file directly in src/), or undefined outside src/. */
function folderOf(path: string): string | undefined {
  const parts = posix.normalize(path).split('/');
  if (parts[0] !== 'src') return undefined;
  return parts.length > 2 ? parts[1] : '';
}

function describe(folder: string | undefined): string {
  if (folder === undefined) return 'outside src/';
  if (!(folder in RANK)) return folder === '' ? 'src/ itself, no folder' : `unknown folder ${folder}`;
  return `${folder}, rank ${RANK[folder]}`;
}

interface ImportSite {
  file: string;
  line: number;
  specifier: string;
}

/** The relative imports of one file, static and dynamic, type-only ones included. */
function relativeImports(file: string, text: string): ImportSite[] {
  const { importedFiles } = ts.preProcessFile(text, true, true);
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest);
  return importedFiles
    .filter((i) => i.fileName.startsWith('./') || i.fileName.startsWith('../'))
    .map((i) => ({ file, line: source.getLineAndCharacterOfPosition(i.pos).line + 1, specifier: i.fileName }));
}

/**
 * The imports that break the rule, one line each naming file, line and import. `files` maps a
 * path relative to the repository (src/…) to its text.
 */
function layerViolations(files: Map<string, string>): string[] {
  const problems: string[] = [];
  for (const [file, text] of files) {
    const from = folderOf(file);
    if (from === undefined || !(from in RANK)) {
      problems.push(`${file}: not in a known folder of src/ (${describe(from)}); folders: ${Object.keys(RANK).join(', ')}`);
      continue;
    }
    for (const site of relativeImports(file, text)) {
      const to = folderOf(posix.join(posix.dirname(file), site.specifier));
      if (to === from) continue;
      if (to !== undefined && to in RANK && RANK[to]! < RANK[from]!) continue;
      problems.push(
        `${file}:${site.line} imports '${site.specifier}' (${describe(to)}) from ${describe(from)}: only the own folder or a lower rank`,
      );
    }
  }
  return problems;
}

function sourceFiles(): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (dir: string): void => {
    for (const name of readdirSync(join(ROOT, dir)).sort()) {
      const path = posix.join(dir, name);
      if (statSync(join(ROOT, path)).isDirectory()) walk(path);
      else if (name.endsWith('.ts')) files.set(path, readFileSync(join(ROOT, path), 'utf8'));
    }
  };
  walk('src');
  return files;
}

t.test('every import in src/ points to its own folder or a lower layer', async (t) => {
  const files = sourceFiles();
  const checked = [...files].reduce((n, [file, text]) => n + relativeImports(file, text).length, 0);
  // Not vacuous: the tree has 33 files and 88 relative imports as this is written.
  t.ok(files.size >= 25, `${files.size} files under src/`);
  t.ok(checked >= 80, `${checked} relative imports checked`);
  t.same(layerViolations(files), [], 'no import against the layers');
});

t.test('the layer table and the folders of src/ agree', async (t) => {
  const entries = readdirSync(join(ROOT, 'src'), { withFileTypes: true });
  t.same(
    entries
      .filter((e) => e.isDirectory())
      .map((e) => e.name)
      .sort(),
    Object.keys(RANK).sort(),
    'one rank per folder, no folder without one',
  );
  t.same(
    entries.filter((e) => e.isFile()).map((e) => e.name),
    [],
    'no loose files in src/',
  );
  for (const folder of Object.keys(RANK)) {
    t.ok(
      readdirSync(join(ROOT, 'src', folder)).some((n) => n.endsWith('.ts')),
      `src/${folder} holds modules`,
    );
  }
});

t.test('every relative import in src/ names a module that exists', async (t) => {
  const missing: string[] = [];
  for (const [file, text] of sourceFiles()) {
    for (const site of relativeImports(file, text)) {
      const target = join(ROOT, dirname(file), site.specifier).replace(/\.js$/, '.ts');
      try {
        statSync(target);
      } catch {
        missing.push(`${file}:${site.line} '${site.specifier}'`);
      }
    }
  }
  t.same(missing, []);
});

t.test('the check reports hand-made bad imports and passes good ones', async (t) => {
  const files = new Map<string, string>([
    // Against the direction: each must be reported.
    ['src/core/log.ts', "import { Daemon } from '../daemon/daemon.js';\n"],
    ['src/ssh/endpoint.ts', "import type { Pool } from '../daemon/pool.js';\nexport const x = 1;\n"],
    ['src/ssh/keys.ts', "import { HcloudClient } from '../hcloud/client.js';\n"],
    ['src/daemon/worker.ts', "export { main } from '../cli/main.js';\n"],
    ['src/image/upload.ts', "export async function f() {\n  return import('../setup/setup.js');\n}\n"],
    ['src/hcloud/client.ts', "type T = import('../ssh/keys.js').KeyPair;\n"],
    ['src/core/config.ts', "import { Rig } from '../../test/rig/rig.js';\n"],
    ['src/setup/machines.ts', "import { x } from '../misc/x.js';\n"],
    ['src/loose.ts', 'export const y = 2;\n'],
    // With the direction, or not imports at all: none may be reported.
    [
      'src/cli/main.ts',
      "import { Daemon } from '../daemon/daemon.js';\nimport { loadConfig } from '../core/config.js';\nimport { parseArgs } from 'node:util';\nimport { deleteAllServers } from './commands.js';\n",
    ],
    [
      'src/daemon/daemon.ts',
      "import { Endpoint } from '../ssh/endpoint.js';\nimport type { Server } from '../hcloud/types.js';\nimport { serveControl } from './control.js';\n",
    ],
    [
      'src/ssh/session-pipe.ts',
      "// import { Daemon } from '../daemon/daemon.js';\nconst s = \"import('../cli/main.js')\";\nimport type { Logger } from '../core/log.js';\n",
    ],
  ]);
  const problems = layerViolations(files);
  const expected: [string, string][] = [
    ['src/core/log.ts:1', "'../daemon/daemon.js'"],
    ['src/ssh/endpoint.ts:1', "'../daemon/pool.js'"],
    ['src/ssh/keys.ts:1', "'../hcloud/client.js'"],
    ['src/daemon/worker.ts:1', "'../cli/main.js'"],
    ['src/image/upload.ts:2', "'../setup/setup.js'"],
    ['src/hcloud/client.ts:1', "'../ssh/keys.js'"],
    ['src/core/config.ts:1', "'../../test/rig/rig.js' (outside src/)"],
    ['src/setup/machines.ts:1', "'../misc/x.js' (unknown folder misc)"],
    ['src/loose.ts', 'not in a known folder'],
  ];
  for (const [where, what] of expected) {
    t.ok(
      problems.some((p) => p.startsWith(where) && p.includes(what)),
      `reported: ${where} ${what}`,
    );
  }
  const unexpected = problems.filter((p) => !expected.some(([where, what]) => p.startsWith(where) && p.includes(what)));
  t.same(unexpected, [], 'nothing else reported');
  t.equal(problems.length, expected.length, 'one report per bad import');
  t.match(problems[0], /^src\/core\/log\.ts:1 imports '\.\.\/daemon\/daemon\.js' \(daemon, rank 2\) from core, rank 0/);
});

/**
 * The rig (test/rig, test/fake-hcloud) is shared by the tests, the demo and the benchmarks: it
 * and bench/ and scripts/ may import src/ and the rig, never a test.
 */
function rigViolations(files: Map<string, string>): string[] {
  const allowed = ['src/', 'test/rig/', 'test/fake-hcloud/', 'bench/', 'scripts/'];
  const problems: string[] = [];
  for (const [file, text] of files) {
    for (const site of relativeImports(file, text)) {
      const target = posix.normalize(posix.join(posix.dirname(file), site.specifier));
      const own = file.startsWith('bench/') || file.startsWith('scripts/') ? file.split('/')[0] : undefined;
      const ok =
        allowed.some((p) => target.startsWith(p)) &&
        !target.endsWith('.test.js') &&
        (own === undefined || !target.startsWith(own === 'bench' ? 'scripts/' : 'bench/'));
      if (!ok)
        problems.push(
          `${file}:${site.line} imports '${site.specifier}' (${target}): the rig, bench/ and scripts/ import only src/ and the rig`,
        );
    }
  }
  return problems;
}

function filesUnder(...dirs: string[]): Map<string, string> {
  const files = new Map<string, string>();
  for (const dir of dirs) {
    for (const name of readdirSync(join(ROOT, dir)).sort()) {
      if (name.endsWith('.ts')) files.set(posix.join(dir, name), readFileSync(join(ROOT, dir, name), 'utf8'));
    }
  }
  return files;
}

t.test('the rig, the benchmarks and the scripts import no test', async (t) => {
  const files = filesUnder('test/rig', 'test/fake-hcloud', 'bench', 'scripts');
  t.ok(files.size >= 20, `${files.size} files checked`);
  t.same(rigViolations(files), [], 'only src/ and the rig');
  const bad = rigViolations(
    new Map([
      ['bench/lib.ts', "import { run } from '../test/e2e/builder.test.js';\n"],
      ['test/rig/rig.ts', "import { x } from '../e2e/helpers.js';\n"],
      ['scripts/demo.ts', "import { Rig } from '../test/rig/rig.js';\nimport { say } from '../bench/lib.js';\n"],
    ]),
  );
  t.equal(bad.length, 3, 'a test, an e2e helper and bench from scripts are each reported');
});
