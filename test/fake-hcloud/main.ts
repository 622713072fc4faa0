// Runs the fake Hetzner Cloud API as its own process (for demos):
//
//   node --import tsx test/fake-hcloud/main.ts --token T --data-dir D \
//     [--ssh-port P] [--boot-delay-ms N] [--ready-delay-ms N] [--delete-delay-ms N] \
//     [--first-address N] [--host H] [--no-real-servers] [--api-date YYYY-MM-DD]
//
// Prints one JSON line {"url": "..."} on stdout once listening, one line per
// request on stderr, and stops cleanly (every server killed) on SIGTERM/SIGINT.

import { parseArgs } from 'node:util';
import { FakeCloud, type FakeCloudOptions } from './fake-cloud.js';

function usage(message: string): never {
  process.stderr.write(
    `${message}\nusage: main.ts --token T --data-dir D [--ssh-port P] [--boot-delay-ms N] [--ready-delay-ms N] ` +
      `[--delete-delay-ms N] [--first-address N] [--host H] [--no-real-servers] [--api-date YYYY-MM-DD]\n`,
  );
  process.exit(2);
}

function int(name: string, raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  if (!/^\d+$/.test(raw)) usage(`--${name} takes a non-negative integer, not ${JSON.stringify(raw)}`);
  return Number(raw);
}

async function main(): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        token: { type: 'string' },
        'data-dir': { type: 'string' },
        host: { type: 'string' },
        'ssh-port': { type: 'string' },
        'boot-delay-ms': { type: 'string' },
        'ready-delay-ms': { type: 'string' },
        'delete-delay-ms': { type: 'string' },
        'first-address': { type: 'string' },
        'no-real-servers': { type: 'boolean' },
        'api-date': { type: 'string' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    usage((e as Error).message);
  }
  if (!values.token) usage('--token is required');
  if (!values['data-dir']) usage('--data-dir is required');

  const opts: FakeCloudOptions = {
    token: values.token,
    dataDir: values['data-dir'],
    realServers: values['no-real-servers'] !== true,
    logRequests: true,
  };
  if (values.host !== undefined) opts.host = values.host;
  const sshPort = int('ssh-port', values['ssh-port']);
  if (sshPort !== undefined) opts.sshPort = sshPort;
  const boot = int('boot-delay-ms', values['boot-delay-ms']);
  if (boot !== undefined) opts.bootDelayMs = boot;
  const ready = int('ready-delay-ms', values['ready-delay-ms']);
  if (ready !== undefined) opts.readyDelayMs = ready;
  const del = int('delete-delay-ms', values['delete-delay-ms']);
  if (del !== undefined) opts.deleteDelayMs = del;
  const first = int('first-address', values['first-address']);
  if (first !== undefined) opts.firstAddress = first;
  const apiDate = values['api-date'];
  if (apiDate !== undefined) {
    // The API of that day (properties deprecated and removed by then are left out).
    if (!/^\d{4}-\d{2}-\d{2}$/.test(apiDate) || Number.isNaN(Date.parse(apiDate)))
      usage(`--api-date takes a day YYYY-MM-DD, not ${JSON.stringify(apiDate)}`);
    opts.apiDate = new Date(`${apiDate}T12:00:00Z`);
  }

  const cloud = await FakeCloud.start(opts);
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`fake-hcloud: ${signal}, stopping\n`);
    cloud.stop().then(
      () => process.exit(0),
      (e: unknown) => {
        process.stderr.write(`fake-hcloud: stop failed: ${String(e)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.stdout.write(`${JSON.stringify({ url: cloud.url })}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`fake-hcloud: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
