/**
 * A setup plan: the folders and files setup is to make or change, and what it only says (hints,
 * steps to do by hand); listed as a diff for a dry run, and made with --write.
 */
import { chownSync, mkdirSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { writeFileAtomic } from '../core/atomic-file.js';
import type { PortChoice } from './nix-version.js';
import { unifiedDiff } from './text.js';

export interface Owner {
  uid: number;
  gid: number;
}

export interface FileChange {
  path: string;
  /** Content before (null: the file does not exist) and after. */
  before: string | null;
  after: string;
  mode: number;
  /** Set for files the daemon's user must own (it may not be the user running setup). */
  owner?: Owner;
  /** Never shown (private keys). */
  secret?: boolean;
  what: string;
}

export interface DirChange {
  path: string;
  mode: number;
  owner?: Owner;
}

export interface SetupPlan {
  dirs: DirChange[];
  files: FileChange[];
  /** Files already as they should be. */
  unchanged: string[];
  hints: string[];
  /** What setup cannot do by itself; the user must. */
  manual: string[];
  machinesLines: string[];
  /** Empty when the machines lines need no alias. */
  sshBlock: string[];
  /** How the machines lines name the endpoint, and why. */
  portChoice: PortChoice;
}

export function ownerOf(path: string): Owner {
  const st = statSync(path);
  return { uid: st.uid, gid: st.gid };
}

export function planChanges(plan: SetupPlan): number {
  return plan.dirs.length + plan.files.length;
}

/** The diff-like listing of a plan. */
export function formatPlan(plan: SetupPlan, write: boolean): string {
  const out: string[] = [plan.portChoice.reason];
  for (const d of plan.dirs) out.push(`create directory ${d.path} (mode 0${d.mode.toString(8)})`);
  for (const f of plan.files) {
    const verb = f.before === null ? 'create' : 'update';
    out.push(`${verb} ${f.path}: ${f.what}${f.before === null ? ` (mode 0${f.mode.toString(8)})` : ''}`);
    if (f.secret) out.push('  (private key: not shown)');
    else out.push(...unifiedDiff(f.path, f.before, f.after).map((l) => `  ${l}`));
  }
  for (const path of plan.unchanged) out.push(`unchanged ${path}`);
  for (const m of plan.manual) out.push(`to do by hand: ${m}`);
  for (const h of plan.hints) out.push(`hint: ${h}`);
  const n = planChanges(plan);
  if (n === 0) out.push('nothing to change');
  else if (write) out.push(`made ${n} change(s)`);
  else out.push(`${n} change(s) to make: nothing written (dry run); run again with --write to make them`);
  return `${out.join('\n')}\n`;
}

/** Makes the planned changes: directories, then files (atomically, keeping modes and owners). */
export function applyPlan(plan: SetupPlan): void {
  for (const d of plan.dirs) {
    const firstMade = mkdirSync(d.path, { recursive: true, mode: d.mode });
    // Every folder made on the way belongs to the owner too (e.g. a missing ~/.local/state).
    for (let dir = d.path; d.owner && firstMade && dir.length >= firstMade.length; dir = dirname(dir)) {
      chownSync(dir, d.owner.uid, d.owner.gid);
    }
  }
  for (const f of plan.files) {
    let mode = f.mode;
    let owner = f.owner;
    if (f.before !== null) {
      const st = statSync(f.path);
      mode = st.mode & 0o7777;
      owner = { uid: st.uid, gid: st.gid };
    }
    mkdirSync(dirname(f.path), { recursive: true });
    writeFileAtomic(f.path, f.after, mode);
    if (owner) chownSync(f.path, owner.uid, owner.gid);
  }
}
