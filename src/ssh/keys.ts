/**
 * ed25519 key pairs in OpenSSH format: the endpoint's host key and each worker's throwaway keys.
 *
 * Made here from node:crypto rather than with ssh2's `utils.generateKeyPairSync`: ssh2 1.17 strips
 * leading zero bytes from the 32-byte ed25519 public key, so about one key in 256 comes out
 * malformed ("Malformed OpenSSH public key") and breaks a boot at random.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import ssh2, { type ParsedKey } from 'ssh2';

export interface KeyPair {
  /** OpenSSH private key ("BEGIN OPENSSH PRIVATE KEY"). Secret: never logged. */
  privateKey: string;
  /** "ssh-ed25519 AAAA… comment" */
  publicKey: string;
}

function sshString(data: Buffer | string): Buffer {
  const body = typeof data === 'string' ? Buffer.from(data) : data;
  const length = Buffer.alloc(4);
  length.writeUInt32BE(body.length);
  return Buffer.concat([length, body]);
}

function uint32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

export function generateKeyPair(comment: string): KeyPair {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const pub = Buffer.from(publicKey.export({ format: 'jwk' }).x as string, 'base64url');
  const seed = Buffer.from(privateKey.export({ format: 'jwk' }).d as string, 'base64url');
  const publicBlob = Buffer.concat([sshString('ssh-ed25519'), sshString(pub)]);

  // PROTOCOL.key: an unencrypted "openssh-key-v1" container with one key.
  const check = randomBytes(4).readUInt32BE();
  let secret = Buffer.concat([
    uint32(check),
    uint32(check),
    sshString('ssh-ed25519'),
    sshString(pub),
    sshString(Buffer.concat([seed, pub])),
    sshString(comment),
  ]);
  const padding = Buffer.from(Array.from({ length: (8 - (secret.length % 8)) % 8 }, (_, i) => i + 1));
  secret = Buffer.concat([secret, padding]);
  const container = Buffer.concat([
    Buffer.from('openssh-key-v1\0'),
    sshString('none'),
    sshString('none'),
    sshString(''),
    uint32(1),
    sshString(publicBlob),
    sshString(secret),
  ]);
  const body = container.toString('base64').replace(/.{1,70}/g, '$&\n');
  return {
    privateKey: `-----BEGIN OPENSSH PRIVATE KEY-----\n${body}-----END OPENSSH PRIVATE KEY-----\n`,
    publicKey: `ssh-ed25519 ${publicBlob.toString('base64')} ${comment}`,
  };
}

/** The "type base64" part of a public key line, the part that identifies the key. */
function publicKeyBody(line: string): string {
  const [type, body] = line.trim().split(/\s+/);
  if (!type || !body) throw new Error('not an OpenSSH public key line');
  return `${type} ${body}`;
}

/** Parses a public key line and returns the raw SSH wire blob, to compare with what a peer presents. */
export function publicKeyBlob(line: string): Buffer {
  const parsed = ssh2.utils.parseKey(publicKeyBody(line));
  if (parsed instanceof Error) throw new Error(`not a valid public key: ${parsed.message}`);
  const key = Array.isArray(parsed) ? (parsed[0] as ParsedKey | undefined) : parsed;
  if (!key) throw new Error('not a valid public key');
  return key.getPublicSSH();
}

/** Where the endpoint's host key lives in stateDir (the daemon makes it, setup reads it). */
export function hostKeyPaths(stateDir: string): { privateKey: string; publicKey: string } {
  const privateKey = join(stateDir, 'ssh_host_ed25519_key');
  return { privateKey, publicKey: `${privateKey}.pub` };
}
