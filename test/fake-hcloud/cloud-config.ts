// Reads the part of a cloud-init "#cloud-config" user data that the fake
// servers honour: the ssh host key, root's authorized keys, write_files and
// runcmd. cloud-init parses YAML 1.1 (PyYAML), so does this (`0644` is octal).

import { gunzipSync } from 'node:zlib';
import { parse } from 'yaml';

export interface WriteFile {
  path: string;
  content: Buffer;
  permissions: number;
  append: boolean;
}

export interface CloudConfig {
  /** True when the user data is a cloud-config at all. */
  isCloudConfig: boolean;
  hostKey: { private: string; public: string | null } | null;
  /** `ssh_genkeytypes`; null when not given (cloud-init's default list). */
  genKeyTypes: string[] | null;
  authorizedKeys: string[];
  writeFiles: WriteFile[];
  /** Each runcmd entry as one shell command line. */
  runcmd: string[];
  /** Things the fake ignored or could not read. */
  problems: string[];
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function strings(v: unknown): string[] {
  if (typeof v === 'string') return [v];
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

/** Quotes one word for sh, as cloud-init does with list-form runcmd entries. */
export function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

function decode(content: string, encoding: string): Buffer {
  switch (encoding.toLowerCase()) {
    case 'b64':
    case 'base64':
      return Buffer.from(content, 'base64');
    case 'gz':
    case 'gzip':
      return gunzipSync(Buffer.from(content, 'latin1'));
    case 'gz+b64':
    case 'gz+base64':
    case 'gzip+b64':
    case 'gzip+base64':
      return gunzipSync(Buffer.from(content, 'base64'));
    default:
      return Buffer.from(content, 'utf8');
  }
}

export function parseUserData(userData: string | null | undefined): CloudConfig {
  const cfg: CloudConfig = {
    isCloudConfig: false,
    hostKey: null,
    genKeyTypes: null,
    authorizedKeys: [],
    writeFiles: [],
    runcmd: [],
    problems: [],
  };
  if (userData === null || userData === undefined || userData === '') {
    cfg.problems.push('no user data');
    return cfg;
  }
  const firstLine = userData.split('\n', 1)[0]?.trim() ?? '';
  if (firstLine !== '#cloud-config') {
    cfg.problems.push(`user data is not a cloud-config (first line ${JSON.stringify(firstLine.slice(0, 40))}): ignored`);
    return cfg;
  }
  let doc: unknown;
  try {
    doc = parse(userData, { version: '1.1' });
  } catch (e) {
    cfg.problems.push(`cloud-config is not valid YAML: ${(e as Error).message.split('\n')[0]}`);
    return cfg;
  }
  if (doc === null || doc === undefined) doc = {};
  if (!isRecord(doc)) {
    cfg.problems.push('cloud-config is not a mapping');
    return cfg;
  }
  cfg.isCloudConfig = true;

  const known = new Set(['ssh_keys', 'ssh_genkeytypes', 'users', 'ssh_authorized_keys', 'write_files', 'runcmd']);
  // Keys whose effect the fake has anyway (root login by key only, no other host keys).
  const implied = new Set(['disable_root', 'ssh_pwauth', 'ssh_deletekeys', 'ssh_quiet_keygen', 'package_update', 'package_upgrade']);
  for (const key of Object.keys(doc)) {
    if (!known.has(key) && !implied.has(key)) cfg.problems.push(`cloud-config key '${key}' ignored by the fake`);
  }

  const sshKeys = doc['ssh_keys'];
  if (isRecord(sshKeys)) {
    const priv = sshKeys['ed25519_private'];
    const pub = sshKeys['ed25519_public'];
    if (typeof priv === 'string') cfg.hostKey = { private: priv, public: typeof pub === 'string' ? pub : null };
    for (const k of Object.keys(sshKeys)) {
      if (k !== 'ed25519_private' && k !== 'ed25519_public') cfg.problems.push(`ssh_keys.${k} ignored (only ed25519 is used)`);
    }
  }
  if (Array.isArray(doc['ssh_genkeytypes'])) cfg.genKeyTypes = strings(doc['ssh_genkeytypes']);

  cfg.authorizedKeys.push(...strings(doc['ssh_authorized_keys']));
  const users = doc['users'];
  if (Array.isArray(users)) {
    for (const u of users) {
      if (u === 'default') continue; // the default user is root on these servers
      if (isRecord(u) && u['name'] === 'root') cfg.authorizedKeys.push(...strings(u['ssh_authorized_keys']));
      else cfg.problems.push(`user ${JSON.stringify(isRecord(u) ? u['name'] : u)} ignored: only root exists`);
    }
  }

  const writeFiles = doc['write_files'];
  if (Array.isArray(writeFiles)) {
    for (const wf of writeFiles) {
      if (!isRecord(wf) || typeof wf['path'] !== 'string') {
        cfg.problems.push('write_files entry without a path ignored');
        continue;
      }
      const perm = wf['permissions'];
      let permissions = 0o644;
      if (typeof perm === 'number') permissions = perm;
      else if (typeof perm === 'string' && /^0?o?[0-7]{3,4}$/.test(perm)) permissions = parseInt(perm.replace(/^0?o/, ''), 8);
      const content = typeof wf['content'] === 'string' ? wf['content'] : '';
      const encoding = typeof wf['encoding'] === 'string' ? wf['encoding'] : 'text';
      try {
        cfg.writeFiles.push({ path: wf['path'], content: decode(content, encoding), permissions, append: wf['append'] === true });
      } catch (e) {
        cfg.problems.push(`write_files ${wf['path']}: cannot decode (${(e as Error).message})`);
      }
    }
  }

  const runcmd = doc['runcmd'];
  if (Array.isArray(runcmd)) {
    for (const entry of runcmd) {
      if (typeof entry === 'string') cfg.runcmd.push(entry);
      else if (Array.isArray(entry)) cfg.runcmd.push(entry.map((w) => shellQuote(String(w))).join(' '));
      else cfg.problems.push(`runcmd entry ${JSON.stringify(entry)} ignored`);
    }
  }
  return cfg;
}
