/**
 * The text toolkit of `setup`: a file's text, lines, marked blocks (what setup owns inside a file it shares with
 * the user) and a unified diff (what a dry run shows).
 */
import { readFileSync } from 'node:fs';
import { SetupError } from './setup-error.js';

export const BEGIN_MARK = '# BEGIN nix-hcloud-builder';
export const END_MARK = '# END nix-hcloud-builder';
const MANAGED_NOTE = '# Managed by "nix-hcloud-builder setup": it replaces this block on every run.';

export function splitLines(text: string): string[] {
  if (text === '') return [];
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  return lines;
}

export function joinLines(lines: string[]): string {
  return lines.length === 0 ? '' : `${lines.join('\n')}\n`;
}

/**
 * Puts `block` between the markers: in place of an earlier block, else before the first
 * `Host`/`Match` line (`beforeFirstSection`, for ssh_config: OpenSSH takes the first value it
 * finds, so an alias after `Host *` could lose to it), else at the end.
 */
export function upsertMarkedBlock(text: string | null, block: string[], beforeFirstSection = false): string {
  const lines = splitLines(text ?? '');
  const marked = [BEGIN_MARK, MANAGED_NOTE, ...block, END_MARK];
  const begin = lines.findIndex((l) => l.trim() === BEGIN_MARK);
  if (begin >= 0) {
    const end = lines.findIndex((l, i) => i > begin && l.trim() === END_MARK);
    if (end < 0) throw new SetupError(`found "${BEGIN_MARK}" but no "${END_MARK}" after it: fix the file by hand, then run setup again`);
    if (lines.some((l, i) => i > end && l.trim() === BEGIN_MARK))
      throw new SetupError(`found "${BEGIN_MARK}" twice: remove one block by hand, then run setup again`);
    return joinLines([...lines.slice(0, begin), ...marked, ...lines.slice(end + 1)]);
  }
  if (beforeFirstSection) {
    const first = lines.findIndex((l) => /^\s*(Host|Match)(\s|=)/i.test(l));
    if (first >= 0) return joinLines([...lines.slice(0, first), ...marked, '', ...lines.slice(first)]);
  }
  const sep = lines.length > 0 && lines[lines.length - 1]?.trim() !== '' ? [''] : [];
  return joinLines([...lines, ...sep, ...marked]);
}

type Op = { op: ' ' | '-' | '+'; line: string };

/** Line diff (longest common subsequence; the files here are small). */
function diffOps(a: string[], b: string[]): Op[] {
  const n = a.length;
  const m = b.length;
  const lcs: number[][] = Array.from({ length: n + 1 }, () => new Array<number>(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i]![j] = a[i] === b[j] ? lcs[i + 1]![j + 1]! + 1 : Math.max(lcs[i + 1]![j]!, lcs[i]![j + 1]!);
    }
  }
  const ops: Op[] = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) {
      ops.push({ op: ' ', line: a[i++]! });
      j++;
    } else if (j < m && (i >= n || lcs[i]![j + 1]! > lcs[i + 1]![j]!)) {
      ops.push({ op: '+', line: b[j++]! });
    } else {
      ops.push({ op: '-', line: a[i++]! });
    }
  }
  return ops;
}

/** A unified diff (`---`/`+++`/`@@` hunks with 2 lines of context). */
export function unifiedDiff(path: string, before: string | null, after: string, context = 2): string[] {
  const ops = diffOps(splitLines(before ?? ''), splitLines(after));
  const out = [`--- ${before === null ? '/dev/null' : path}`, `+++ ${path}`];
  let k = 0;
  while (k < ops.length) {
    if (ops[k]!.op === ' ') {
      k++;
      continue;
    }
    const start = Math.max(0, k - context);
    let end = k;
    // Extend the hunk while the next change is within 2 × context lines.
    for (;;) {
      while (end < ops.length && ops[end]!.op !== ' ') end++;
      let next = end;
      while (next < ops.length && ops[next]!.op === ' ') next++;
      if (next < ops.length && next - end <= 2 * context) end = next;
      else break;
    }
    end = Math.min(ops.length, end + context);
    let oldStart = 1;
    let newStart = 1;
    for (let x = 0; x < start; x++) {
      if (ops[x]!.op !== '+') oldStart++;
      if (ops[x]!.op !== '-') newStart++;
    }
    const hunk = ops.slice(start, end);
    const oldCount = hunk.filter((o) => o.op !== '+').length;
    const newCount = hunk.filter((o) => o.op !== '-').length;
    out.push(`@@ -${oldCount === 0 ? oldStart - 1 : oldStart},${oldCount} +${newCount === 0 ? newStart - 1 : newStart},${newCount} @@`);
    for (const o of hunk) out.push(`${o.op}${o.line}`);
    k = end;
  }
  return out;
}

/** A file's text; null when there is no such file. */
export function readText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new SetupError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}
