import t from 'tap';
import { parseConfig } from '../../src/core/config.js';
import {
  DEFAULT_ALIAS,
  DEFAULT_CLIENT_KEY,
  endpointAddress,
  hostKeyBase64,
  machinesLines,
  sshHostBlock,
} from '../../src/setup/machines.js';

const HOST_KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAK0pHqEJEUQmk12NZhW7j4HDdUT08f8i5qTCsjk/ik0 nix-hcloud-builder';
const client = { alias: DEFAULT_ALIAS, clientKey: DEFAULT_CLIENT_KEY };

t.test('one machines line per pool, with every field', async (t) => {
  const config = parseConfig(
    {
      listen: { port: 2222 },
      pools: {
        x86_64: { serverTypes: ['ccx33'], maxWorkers: 3, jobsPerWorker: 4 },
        arm: {
          serverTypes: ['cax41'],
          systems: ['aarch64-linux', 'armv7l-linux'],
          supportedFeatures: [],
          mandatoryFeatures: ['big-parallel'],
          speedFactor: 2.5,
        },
      },
    },
    '/etc/nhb',
  );
  const b64 = Buffer.from(HOST_KEY).toString('base64');
  t.same(machinesLines(config, `${HOST_KEY}\n`, client), [
    `ssh-ng://x86_64@hcloud-builder x86_64-linux /root/.ssh/nix-hcloud-builder 12 1 big-parallel,nixos-test,benchmark - ${b64}`,
    `ssh-ng://arm@hcloud-builder aarch64-linux,armv7l-linux /root/.ssh/nix-hcloud-builder 8 3 - big-parallel ${b64}`,
  ]);
  t.equal(
    Buffer.from(hostKeyBase64(HOST_KEY), 'base64').toString(),
    HOST_KEY,
    'field 8 decodes to the host key line, as `base64 -w0` of the .pub file',
  );
  t.throws(() => hostKeyBase64('garbage'), { name: 'MachinesError' });
});

t.test('the ssh alias block', async (t) => {
  const config = parseConfig({ listen: { host: '0.0.0.0', port: 2299 }, pools: { x86_64: { serverTypes: ['cx23'] } } }, '/');
  t.same(sshHostBlock(config, { alias: 'builders.example', clientKey: '/var/lib/key' }), [
    'Host builders.example',
    '  HostName 127.0.0.1',
    '  Port 2299',
    '  HostKeyAlias builders.example',
    '  IdentityFile /var/lib/key',
    '  IdentitiesOnly yes',
  ]);
  t.same(endpointAddress(parseConfig({ listen: { host: '::', port: 22 }, pools: { a: { serverTypes: ['cx23'] } } }, '/')), {
    host: '::1',
    port: 22,
  });
  t.same(endpointAddress(parseConfig({ listen: { host: '10.1.2.3' }, pools: { a: { serverTypes: ['cx23'] } } }, '/')), {
    host: '10.1.2.3',
    port: 2222,
  });
});

t.test('refusals', async (t) => {
  const config = parseConfig({ pools: { x86_64: { serverTypes: ['cx23'] } } }, '/');
  t.throws(() => sshHostBlock(parseConfig({ listen: { port: 0 }, pools: { a: { serverTypes: ['cx23'] } } }, '/'), client), {
    message: /listen\.port.*fixed port/,
  });
  t.throws(() => machinesLines(config, HOST_KEY, { alias: 'localhost', clientKey: DEFAULT_CLIENT_KEY }), { message: /localhost/ });
  t.throws(() => machinesLines(config, HOST_KEY, { alias: 'a b', clientKey: DEFAULT_CLIENT_KEY }), { message: /alias/ });
  t.throws(() => machinesLines(config, HOST_KEY, { alias: 'x', clientKey: 'relative/key' }), { message: /absolute path/ });
  t.throws(() => machinesLines(config, HOST_KEY, { alias: 'x', clientKey: '/with space/key' }), { message: /without spaces/ });
});
