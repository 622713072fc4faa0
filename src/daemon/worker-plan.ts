/**
 * A worker before its server exists: a unique name, fresh keys (the host key we will pin, the
 * login key for this server only), the state record, and the cloud-config user data.
 */
import { randomBytes } from 'node:crypto';
import type { PoolConfig } from '../core/config.js';
import { serverName } from '../core/labels.js';
import { generateKeyPair } from '../ssh/keys.js';
import type { WorkerRecord } from './state.js';
import { workerUserData, type StoreVolumeInput } from './user-data.js';

/** The user data of a planned worker, with or without its store volume (known only at create). */
export type UserDataFor = (store?: StoreVolumeInput) => string;

/**
 * A fresh record for a server not created yet, and the user data to create it with. The host
 * private key lives only in that user data: the state keeps the public half, to pin it.
 */
export function planWorker(pool: PoolConfig, instance: string): { record: WorkerRecord; userData: UserDataFor } {
  const suffix = `${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;
  const name = serverName(instance, pool.name, suffix);
  const host = generateKeyPair(`${name}-host`);
  const login = generateKeyPair(`nix-hcloud-builder@${name}`);
  const record: WorkerRecord = {
    id: 0,
    name,
    pool: pool.name,
    serverType: '',
    location: '',
    phase: 'creating',
    sshPort: pool.sshPort,
    hostPublicKey: host.publicKey,
    loginPrivateKey: login.privateKey,
    createdAt: new Date().toISOString(),
    activeSessions: 0,
  };
  return {
    record,
    userData: (store) =>
      workerUserData({
        hostKey: host,
        loginPublicKey: login.publicKey,
        zstdRelay: pool.compression === 'zstd',
        nix: pool.nix,
        ...(store ? { store } : {}),
      }),
  };
}
