/**
 * The transport's list-query helper, and the client's assembly from its resource modules: every
 * call of every module is on `HcloudClient`, and no two modules define the same name (a copy
 * would silently replace the other).
 */
import t from 'tap';
import { inspect } from 'node:util';
import { listQuery } from '../../src/hcloud/transport.js';
import { HcloudClient } from '../../src/hcloud/client.js';
import { ActionCalls } from '../../src/hcloud/actions.js';
import { CatalogCalls } from '../../src/hcloud/resources/catalog.js';
import { ImageCalls } from '../../src/hcloud/resources/images.js';
import { ServerCalls } from '../../src/hcloud/resources/servers.js';
import { SshKeyCalls } from '../../src/hcloud/resources/ssh-keys.js';
import { VolumeCalls } from '../../src/hcloud/resources/volumes.js';

t.test('listQuery: snake_case keys, absent filters left out, arrays kept', async (t) => {
  t.same(listQuery<'list_images'>({ labelSelector: 'a=b', includeDeprecated: false, type: ['snapshot', 'backup'], name: undefined }), {
    label_selector: 'a=b',
    include_deprecated: false,
    type: ['snapshot', 'backup'],
  });
  t.same(listQuery<'list_servers'>({}), {});
});

t.test('HcloudClient has every call of every resource module, each defined once', async (t) => {
  const client = new HcloudClient({ endpoint: 'http://127.0.0.1:9/v1', token: 'secret-token' });
  const seen = new Map<string, string>();
  for (const calls of [ActionCalls, ServerCalls, ImageCalls, SshKeyCalls, VolumeCalls, CatalogCalls]) {
    for (const name of Object.getOwnPropertyNames(calls.prototype).filter((n) => n !== 'constructor')) {
      t.notOk(seen.has(name), `${name} of ${calls.name} is not also in ${seen.get(name) ?? 'another module'}`);
      seen.set(name, calls.name);
      t.equal(typeof (client as unknown as Record<string, unknown>)[name], 'function', `client.${name}`);
    }
  }
  t.ok(seen.size >= 29, `${seen.size} calls`);
  t.notMatch(JSON.stringify(client), /secret-token/, 'the token is not in a JSON dump');
  t.notMatch(inspect(client, { depth: 10, showHidden: true }), /secret-token/, 'nor in util.inspect');
});
