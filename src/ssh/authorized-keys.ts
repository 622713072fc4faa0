/**
 * authorized_keys lines, as sshd reads them: an optional options prefix, the key type, the key.
 * Options are honoured or refused at load with a line naming them, never silently dropped:
 * - `from="pattern,…"`: the client's address must match (IP wildcards `*`/`?`, CIDR, `!` negates;
 *   no DNS lookups, as sshd with its default `UseDNS no`);
 * - `expiry-time="YYYYMMDD[HHMM[SS]][Z]"`: the key is refused from then on (local time unless Z);
 * - `command="…"`: a forced command, which must itself pass the endpoint's allow-list;
 * - `restrict`, `no-pty`, `no-port-forwarding`, `no-agent-forwarding`, `no-X11-forwarding`,
 *   `no-user-rc`: the endpoint refuses all of these things for every key anyway.
 * Anything else (`permitopen`, `environment`, `cert-authority`, `pty`, …) is refused.
 */
import { isIP, BlockList } from 'node:net';
import ssh2 from 'ssh2';
import { CommandRefused, parseNixCommand, type NixCommand } from './nix-command.js';

type ParsedKey = ssh2.ParsedKey;

export interface AuthorizedKey {
  key: ParsedKey;
  /** `from=`: the patterns the client's address must match. */
  from?: string[];
  /** `expiry-time=`: ms since the epoch from which the key is refused. */
  expiresAt?: number;
  /** `command=`: runs instead of what the client asks for. */
  command?: NixCommand;
}

/** Options that restrict what the endpoint never allows for any key: honoured by doing nothing. */
const ALREADY_RESTRICTED = new Set(['restrict', 'no-pty', 'no-port-forwarding', 'no-agent-forwarding', 'no-x11-forwarding', 'no-user-rc']);
const KEY_TYPE = /^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-\S+@openssh\.com)$/;

export class AuthorizedKeyError extends Error {
  override name = 'AuthorizedKeyError';
}

/** Splits `opt,opt="v,with comma",…` off the line; returns the options and the rest (the key). */
function splitOptions(line: string): { options: string[]; rest: string } {
  const options: string[] = [];
  let current = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i] as string;
    if (quoted) {
      if (c === '\\' && line[i + 1] === '"') {
        current += '"';
        i++;
      } else if (c === '"') quoted = false;
      else current += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      options.push(current);
      current = '';
    } else if (c === ' ' || c === '\t') {
      options.push(current);
      return { options, rest: line.slice(i).trim() };
    } else current += c;
  }
  throw new AuthorizedKeyError(quoted ? 'unbalanced quote in the options' : 'options but no key');
}

/** `YYYYMMDD[HHMM[SS]][Z]` as sshd reads it: local time unless it ends in Z. */
function parseExpiry(value: string): number {
  const m = /^(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})(\d{2})?)?(Z?)$/.exec(value);
  if (!m) throw new AuthorizedKeyError(`expiry-time="${value}" is not YYYYMMDD[HHMM[SS]][Z]`);
  const [, y, mo, d, h = '0', mi = '0', s = '0', z] = m;
  const parts = [Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s)] as const;
  const at = z ? Date.UTC(...parts) : new Date(...parts).getTime();
  if (Number.isNaN(at)) throw new AuthorizedKeyError(`expiry-time="${value}" is not a valid time`);
  return at;
}

function checkFromPatterns(value: string): string[] {
  const patterns = value.split(',').map((p) => p.trim());
  for (const p of patterns) {
    const bare = p.replace(/^!/, '');
    const [address, bits] = bare.split('/');
    if (bits !== undefined ? isIP(address ?? '') === 0 || !/^\d{1,3}$/.test(bits) : !/^[0-9A-Fa-f.:*?]+$/.test(bare)) {
      throw new AuthorizedKeyError(`from="${value}": "${p}" is not an IP address, wildcard or CIDR pattern (host names are not looked up)`);
    }
  }
  return patterns;
}

function matchesPattern(address: string, pattern: string): boolean {
  const [base, bits] = pattern.split('/');
  if (bits !== undefined) {
    const family = isIP(base ?? '') === 6 ? 'ipv6' : 'ipv4';
    const list = new BlockList();
    list.addSubnet(base as string, Number(bits), family);
    return isIP(address) !== 0 && list.check(address, isIP(address) === 6 ? 'ipv6' : 'ipv4');
  }
  const wildcard = new RegExp(`^${pattern.replace(/[.]/g, '\\.').replace(/\*/g, '.*').replace(/\?/g, '.')}$`, 'i');
  return wildcard.test(address);
}

/** sshd's rule: any negated pattern that matches refuses; otherwise one plain pattern must match. */
export function addressAllowed(address: string, patterns: string[]): boolean {
  // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
  const plain = address.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '');
  let allowed = false;
  for (const p of patterns) {
    const negated = p.startsWith('!');
    if (!matchesPattern(plain, negated ? p.slice(1) : p)) continue;
    if (negated) return false;
    allowed = true;
  }
  return allowed;
}

function applyOption(entry: AuthorizedKey, option: string): void {
  const eq = option.indexOf('=');
  const name = (eq < 0 ? option : option.slice(0, eq)).toLowerCase();
  const value = eq < 0 ? undefined : option.slice(eq + 1);
  if (ALREADY_RESTRICTED.has(name) && value === undefined) return;
  if (name === 'from' && value !== undefined) entry.from = checkFromPatterns(value);
  else if (name === 'expiry-time' && value !== undefined) entry.expiresAt = parseExpiry(value);
  else if (name === 'command' && value !== undefined) {
    try {
      entry.command = parseNixCommand(value);
    } catch (err) {
      if (!(err instanceof CommandRefused)) throw err;
      throw new AuthorizedKeyError(
        `command="${value.slice(0, 80)}" is refused (${err.message}): a forced command must be nix-daemon --stdio or nix-store --serve [--write]`,
      );
    }
  } else {
    throw new AuthorizedKeyError(
      `option "${name}" is not supported (supported: from=, expiry-time=, command=, restrict, no-pty, no-port-forwarding, no-agent-forwarding, no-X11-forwarding, no-user-rc)`,
    );
  }
}

/** One authorized_keys line (not empty, not a comment). */
function parseLine(line: string): AuthorizedKey {
  const first = line.split(/\s+/, 1)[0] ?? '';
  const { options, rest } = KEY_TYPE.test(first) ? { options: [], rest: line } : splitOptions(line);
  const parsed = ssh2.utils.parseKey(rest);
  if (parsed instanceof Error) throw new AuthorizedKeyError(`not a valid public key: ${parsed.message}`);
  const entry: AuthorizedKey = { key: Array.isArray(parsed) ? (parsed[0] as ParsedKey) : parsed };
  for (const option of options) applyOption(entry, option);
  return entry;
}

export function parseAuthorizedKeys(lines: string[]): AuthorizedKey[] {
  const keys: AuthorizedKey[] = [];
  for (const line of lines) {
    const trimmed = line.trim();
    if (!trimmed || trimmed.startsWith('#')) continue;
    try {
      keys.push(parseLine(trimmed));
    } catch (err) {
      if (!(err instanceof AuthorizedKeyError)) throw err;
      throw new AuthorizedKeyError(`authorized key "${trimmed.slice(0, 40)}…": ${err.message}`);
    }
  }
  return keys;
}

/** Why a key that matches may not log in from `address` at `now`, or undefined if it may. */
export function keyRefusal(entry: AuthorizedKey, address: string, now: number): string | undefined {
  if (entry.expiresAt !== undefined && now >= entry.expiresAt) return 'key expired (expiry-time)';
  if (entry.from && !addressAllowed(address, entry.from)) return 'address not allowed for this key (from=)';
  return undefined;
}
