/**
 * Steps 4 and 5 of an upload: the root login to the rescue system, and the image streamed
 * through it onto the server's disk.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { abortableSleep } from '../hcloud/retry.js';
import { connectRoot, execChannel, type SshClient } from '../ssh/worker-connection.js';
import { abortError, ImageUploadError } from './temporary.js';

/** The host key's fingerprint as OpenSSH prints it. */
export function sha256Fingerprint(key: Buffer): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
}

/** The shell command run in the rescue system: decompress there (when .zst), write, flush. */
export function writeCommand(file: string): string {
  const source = file.endsWith('.zst') ? 'zstd -d -c | ' : '';
  return `bash -o pipefail -c '${source}dd of=/dev/sda bs=4M && sync'`;
}

/** Where and how to log in to the rescue system (step 4). */
export interface RescueLogin {
  host: string;
  port: number;
  privateKey: string;
  /** How long to keep trying until its sshd accepts the login. */
  timeoutMs: number;
  /** Pause between attempts. */
  retryMs: number;
  signal: AbortSignal;
  /** Told the host key the rescue system presented (it is not checked: see step 4). */
  onHostKey: (key: Buffer) => void;
}

/** Logs in to the rescue system as root, retrying until its sshd answers. Accepts any host key (see step 4). */
export async function connectRescue(r: RescueLogin): Promise<SshClient> {
  const { signal } = r;
  const deadline = Date.now() + r.timeoutMs;
  let last: Error | undefined;
  for (;;) {
    if (signal.aborted) throw abortError(signal);
    try {
      const client = await connectRoot(
        {
          host: r.host,
          port: r.port,
          privateKey: r.privateKey,
          signal,
          // Not pinned on purpose: the rescue system's host key cannot be known beforehand.
          hostVerifier: (key: Buffer) => {
            r.onHostKey(key);
            return true;
          },
        },
        Math.max(1000, Math.min(30_000, deadline - Date.now())),
      );
      // A connection lost later fails the image's channel (streamImage says so); unheard, the
      // error event would end the process.
      client.on('error', () => {});
      return client;
    } catch (err) {
      if (signal.aborted) throw abortError(signal);
      last = err as Error;
    }
    if (Date.now() + r.retryMs > deadline) {
      throw new ImageUploadError(
        `the rescue system at ${r.host}:${r.port} did not accept the ssh login within ${Math.round(r.timeoutMs / 1000)} s: ${last?.message ?? 'no answer'}`,
      );
    }
    await abortableSleep(r.retryMs, signal).catch(() => {
      throw abortError(signal);
    });
  }
}

/**
 * Runs `command` and feeds it the file as stdin. `pipe` gives backpressure: the file is read only
 * as fast as the ssh channel's window lets the data go. Rejects on a non-zero exit status (with
 * the end of its stderr), a read error, or an abort (the channel is closed, so the remote side
 * gets no complete image and exits).
 */
export async function streamImage(
  client: SshClient,
  file: string,
  command: string,
  size: number,
  signal: AbortSignal,
  progress: (sent: number) => void,
): Promise<void> {
  const channel = await execChannel(client, command);
  await new Promise<void>((resolve, reject) => {
    const input = createReadStream(file, { highWaterMark: 1024 * 1024 });
    let sent = 0;
    let lastReport = Date.now();
    let code: number | null = null;
    let exitSignal: string | undefined;
    let stderr = '';
    let failure: Error | undefined;
    const fail = (err: Error): void => {
      if (failure !== undefined) return;
      failure = err;
      input.unpipe(channel);
      input.destroy();
      channel.close();
    };
    const onAbort = (): void => fail(abortError(signal));
    if (signal.aborted) onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    input.on('data', (chunk: Buffer | string) => {
      sent += chunk.length;
      if (Date.now() - lastReport >= 5000 && sent < size) {
        lastReport = Date.now();
        progress(sent);
      }
    });
    input.on('error', (err) => fail(new ImageUploadError(`reading ${file}: ${err.message}`)));
    channel.on('data', () => {});
    channel.stderr.on('data', (b: Buffer) => {
      stderr = (stderr + b.toString('utf8')).slice(-2000);
    });
    channel.on('exit', (c: number | null, s?: string) => {
      code = c;
      exitSignal = s;
    });
    channel.on('close', () => {
      signal.removeEventListener('abort', onAbort);
      input.destroy();
      if (failure !== undefined) reject(failure);
      else if (code === 0) resolve();
      else {
        const how = exitSignal ? `signal ${exitSignal}` : `status ${code ?? 'unknown'}`;
        reject(new ImageUploadError(`writing the image on the server failed (${how}): ${stderr.trim().split('\n').slice(-3).join(' / ')}`));
      }
    });
    input.pipe(channel);
  });
}
