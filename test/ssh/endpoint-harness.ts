/** An Endpoint on 127.0.0.1 with a fresh host key and one authorized client key, for the endpoint's tests. */
import ssh2 from 'ssh2';
import { createLogger } from '../../src/core/log.js';
import { Endpoint, parseAuthorizedKeys, type EndpointOptions } from '../../src/ssh/endpoint.js';
import { generateKeyPair } from '../../src/ssh/keys.js';

export const LOGIN_GRACE_MS = 20_000;

export interface StartedEndpoint {
  endpoint: Endpoint;
  port: number;
  /** The authorized client's private key. */
  clientKey: string;
  /** Everything logged so far, one JSON object per line. */
  logged: () => string;
}

/** `authorizedLine` makes the client key's authorized_keys line (with options, say) from its public key. */
export async function startEndpoint(
  t: { teardown(fn: () => Promise<void>): void },
  overrides: Partial<EndpointOptions> = {},
  authorizedLine: (publicKey: string) => string = (publicKey) => publicKey,
): Promise<StartedEndpoint> {
  const clientKey = generateKeyPair('test-client');
  const lines: string[] = [];
  const endpoint = new Endpoint({
    hostKey: generateKeyPair('test-host').privateKey,
    authorizedKeys: parseAuthorizedKeys([authorizedLine(clientKey.publicKey)]),
    pools: new Map(),
    log: createLogger({ level: 'debug', pretty: false, destination: { write: (line: string) => void lines.push(line) } }),
    loginGraceMs: LOGIN_GRACE_MS,
    maxConnectionsPerSource: 20,
    maxStartups: 20,
    maxAuthTries: 6,
    ...overrides,
  });
  const port = await endpoint.listen(0, '127.0.0.1');
  t.teardown(async () => {
    endpoint.closeAll();
    await endpoint.stopListening();
  });
  return { endpoint, port, clientKey: clientKey.privateKey, logged: () => lines.join('') };
}

/** An ssh2 client logged in to the endpoint as `user`; ended at teardown. */
export async function login(
  t: { teardown(fn: () => void): void },
  port: number,
  privateKey: string,
  user = 'x86_64',
): Promise<ssh2.Client> {
  const client = new ssh2.Client();
  t.teardown(() => client.end());
  await new Promise<void>((resolve, reject) => {
    client.once('ready', resolve).once('error', reject);
    client.connect({ host: '127.0.0.1', port, username: user, privateKey });
  });
  return client;
}
