/**
 * `image upload` and `image cleanup`: the command line of the image library (`image/upload.ts`,
 * `image/cleanup.ts`). Here are what the library leaves to its caller: the arguments, and the
 * signals: SIGINT/SIGTERM abort the upload (its temporary server and key are still deleted),
 * a second one exits at once.
 */
import { loadToken } from '../core/token.js';
import type { Logger } from '../core/log.js';
import { HcloudClient } from '../hcloud/client.js';
import { cleanupUploads } from '../image/cleanup.js';
import { ImageUploadError } from '../image/temporary.js';
import { DEFAULT_LOCATION, DEFAULT_SERVER_TYPE, parseArch, parseLabels, uploadImage } from '../image/upload.js';
import { defineCommand } from './command.js';
import { openConfig, PROGRAM, say } from './common.js';

function hcloudOf(configFile: string): { hcloud: HcloudClient; log: Logger } {
  const { config, log } = openConfig(configFile);
  const token = loadToken(config);
  return { hcloud: new HcloudClient({ endpoint: config.hcloud.endpoint, token: token.token, logger: log }), log };
}

/** Progress lines go to stderr; stdout has the result alone. */
function progress(line: string): void {
  process.stderr.write(`${line}\n`);
}

function parsePort(value: string): number {
  const port = Number(value);
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new ImageUploadError(`--ssh-port: expected a port number, got ${JSON.stringify(value)}`);
  return port;
}

/**
 * An AbortSignal for SIGINT/SIGTERM while `work` runs: the first aborts it, a second exits at once
 * (status 130), leaving what is left to `image cleanup`.
 */
async function withSignals<T>(work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) {
      progress(`${sig} again: exiting now; run "${PROGRAM} image cleanup" to delete what is left`);
      process.exit(130);
    }
    progress(`${sig}: stopping the upload, deleting the temporary server and ssh key (again to exit at once)`);
    controller.abort(new ImageUploadError(`image upload interrupted by ${sig}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    return await work(controller.signal);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

export const imageUpload = defineCommand({
  name: 'image upload',
  synopsis: 'IMAGE.raw[.zst] --arch x86|arm --label KEY=VALUE [--label …]',
  summary:
    "write a raw disk image to a temporary server's disk from the rescue system and snapshot it with the labels (a pool's image.labelSelector picks the newest); prints the snapshot id. The temporary server and ssh key are deleted on every path",
  options: {
    arch: { type: 'string', value: 'x86|arm', description: "the image's architecture (required)" },
    label: { type: 'string', multiple: true, value: 'KEY=VALUE', description: 'a label of the snapshot, at least one' },
    'server-type': {
      type: 'string',
      value: 'TYPE',
      description: "the temporary server's type",
      default: `${DEFAULT_SERVER_TYPE.x86} for x86, ${DEFAULT_SERVER_TYPE.arm} for arm`,
    },
    location: { type: 'string', value: 'LOC', description: "the temporary server's location", default: DEFAULT_LOCATION },
    description: { type: 'string', value: 'TEXT', description: "the snapshot's description", default: 'nix-hcloud-builder image FILE' },
    'ssh-port': { type: 'string', value: 'N', description: "the rescue system's sshd port", default: '22' },
  },
  operands: { min: 1, max: 1 },
  async run(o, { configFile, operands }) {
    const arch = parseArch(o.arch);
    if (o.label === undefined || o.label.length === 0)
      throw new ImageUploadError('image upload: give at least one --label KEY=VALUE (pools select the snapshot by label)');
    const labels = parseLabels(o.label);
    const sshPort = o.sshPort === undefined ? undefined : parsePort(o.sshPort);
    const { hcloud, log } = hcloudOf(configFile);
    const result = await withSignals((signal) =>
      uploadImage({
        hcloud,
        file: operands[0] as string,
        arch,
        labels,
        ...(o.serverType === undefined ? {} : { serverType: o.serverType }),
        ...(o.location === undefined ? {} : { location: o.location }),
        ...(o.description === undefined ? {} : { description: o.description }),
        ...(sshPort === undefined ? {} : { sshPort }),
        signal,
        log,
        print: progress,
      }),
    );
    say(String(result.image.id));
    return 0;
  },
});

export const imageCleanup = defineCommand({
  name: 'image cleanup',
  synopsis: '[--dry-run]',
  summary: 'delete (or list) what uploads left behind: temporary servers, ssh keys and unfinished snapshots (found by their labels)',
  options: {
    'dry-run': { type: 'boolean', description: 'only list them' },
  },
  async run(o, { configFile }) {
    const dryRun = o.dryRun === true;
    const { hcloud, log } = hcloudOf(configFile);
    const r = await cleanupUploads(hcloud, dryRun, say, log);
    say(
      `${dryRun ? 'would delete' : 'deleted'} ${r.servers.length} server(s), ${r.sshKeys.length} ssh key(s) and ${r.snapshots.length} unfinished snapshot(s)`,
    );
    return 0;
  },
});
