/**
 * The docs hold together: every relative link in the project's Markdown points at a file that
 * exists and, with a `#fragment`, at a heading that exists there; every page of docs/ is linked
 * from the README; the README stays short enough to read.
 */
import t from 'tap';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { ROOT } from '../rig/rig.js';

const DOCS = join(ROOT, 'docs');
const PAGES = [
  join(ROOT, 'README.md'),
  join(ROOT, 'bench', 'README.md'),
  join(ROOT, '.ci', 'README.md'),
  join(ROOT, 'test', 'fake-hcloud', 'README.md'),
  ...readdirSync(DOCS)
    .filter((f) => f.endsWith('.md'))
    .map((f) => join(DOCS, f)),
];

/** Markdown text outside fenced code blocks. */
function prose(markdown: string): string {
  return markdown
    .split(/^```.*$/m)
    .filter((_, i) => i % 2 === 0)
    .join('\n');
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
export function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N} _-]/gu, '')
    .replace(/ /g, '-');
}

function anchors(file: string): Set<string> {
  const found = new Set<string>();
  for (const m of prose(readFileSync(file, 'utf8')).matchAll(/^#{1,6} (.+)$/gm)) found.add(slug(m[1] as string));
  return found;
}

function links(file: string): string[] {
  const out: string[] = [];
  for (const m of prose(readFileSync(file, 'utf8')).matchAll(/\]\(([^)\s]+)\)/g)) {
    const target = m[1] as string;
    if (!/^[a-z]+:/i.test(target)) out.push(target);
  }
  return out;
}

t.test("the slug of a heading is GitHub's", async (t) => {
  t.equal(slug('What the rig owns, and CI on a pristine root'), 'what-the-rig-owns-and-ci-on-a-pristine-root');
  t.equal(slug('Tell Nix about it: `setup`'), 'tell-nix-about-it-setup');
});

t.test('every relative link resolves, fragments included', async (t) => {
  let checked = 0;
  for (const page of PAGES) {
    for (const link of links(page)) {
      const [path, fragment] = link.split('#') as [string, string | undefined];
      const target = path === '' ? page : resolve(dirname(page), path);
      const where = `${relative(ROOT, page)} → ${link}`;
      t.ok(existsSync(target), `${where}: the file exists`);
      if (fragment !== undefined && existsSync(target) && target.endsWith('.md'))
        t.ok(anchors(target).has(fragment), `${where}: the heading exists`);
      checked++;
    }
  }
  t.ok(checked > 20, `${checked} links checked`);
});

t.test('every page of docs/ is linked from the README, which stays short', async (t) => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const linked = new Set(links(join(ROOT, 'README.md')).map((l) => l.split('#')[0]));
  for (const page of readdirSync(DOCS).filter((f) => f.endsWith('.md'))) t.ok(linked.has(`docs/${page}`), `README links docs/${page}`);
  const lines = readme.split('\n').length;
  t.ok(lines <= 200, `README.md has ${lines} lines (at most 200: the rest belongs in docs/)`);
});
