/** ed25519 key pairs in OpenSSH format: the endpoint's host key and each worker's throwaway keys. */
import ssh2 from 'ssh2';

export interface KeyPair {
  /** OpenSSH private key (PEM-like "BEGIN OPENSSH PRIVATE KEY"). Secret: never logged. */
  privateKey: string;
  /** "ssh-ed25519 AAAA… comment" */
  publicKey: string;
}

export function generateKeyPair(comment: string): KeyPair {
  const pair = ssh2.utils.generateKeyPairSync('ed25519', { comment });
  return { privateKey: pair.private, publicKey: `${pair.public.trim()}` };
}

/** The "type base64" part of a public key line, the part that identifies the key. */
export function publicKeyBody(line: string): string {
  const [type, body] = line.trim().split(/\s+/);
  if (!type || !body) throw new Error('not an OpenSSH public key line');
  return `${type} ${body}`;
}

/** Parses a public key line and returns the raw SSH wire blob, to compare with what a peer presents. */
export function publicKeyBlob(line: string): Buffer {
  const parsed = ssh2.utils.parseKey(publicKeyBody(line));
  if (parsed instanceof Error) throw new Error(`not a valid public key: ${parsed.message}`);
  const key = Array.isArray(parsed) ? parsed[0] : parsed;
  if (!key) throw new Error('not a valid public key');
  return key.getPublicSSH();
}
