/** authorized_keys lines with options: each honoured or refused at load with a clear line, none dropped. */
import t from 'tap';
import { addressAllowed, keyRefusal, parseAuthorizedKeys } from '../../src/ssh/authorized-keys.js';
import { generateKeyPair } from '../../src/ssh/keys.js';

const KEY = generateKeyPair('alice').publicKey;

t.test('a plain line, comments and blank lines', async (t) => {
  const keys = parseAuthorizedKeys(['# the builders', '', KEY, `  ${KEY}  `]);
  t.equal(keys.length, 2);
  t.same(Object.keys(keys[0] ?? {}), ['key'], 'no options');
});

t.test('options sshd honours are honoured', async (t) => {
  const [entry] = parseAuthorizedKeys([
    `from="10.0.0.0/8,!10.9.*,192.168.1.?",expiry-time="20300102Z",restrict,no-pty,command="nix-store --serve --write" ${KEY}`,
  ]);
  t.same(entry?.from, ['10.0.0.0/8', '!10.9.*', '192.168.1.?']);
  t.equal(entry?.expiresAt, Date.UTC(2030, 0, 2));
  t.same(entry?.command, { program: 'nix-store', mode: 'serve', write: true });
  t.equal(entry?.key.type, 'ssh-ed25519');
  const [local] = parseAuthorizedKeys([`expiry-time="203001021530" ${KEY}`]);
  t.equal(local?.expiresAt, new Date(2030, 0, 2, 15, 30).getTime(), 'without Z: local time');
});

t.test('from=: CIDR, wildcards, negation, IPv4 as seen on a dual-stack socket', async (t) => {
  const patterns = ['10.0.0.0/8', '!10.9.*', '192.168.1.?', 'fd00::/8'];
  t.ok(addressAllowed('10.1.2.3', patterns));
  t.ok(addressAllowed('::ffff:10.1.2.3', patterns));
  t.notOk(addressAllowed('10.9.0.1', patterns), 'a matching negation refuses');
  t.ok(addressAllowed('192.168.1.7', patterns));
  t.notOk(addressAllowed('192.168.1.70', patterns), '? is one character');
  t.ok(addressAllowed('fd00::1', patterns));
  t.notOk(addressAllowed('127.0.0.1', patterns));
  t.notOk(addressAllowed('10.1.2.3', ['!127.0.0.1']), 'only negations: nothing is allowed');
});

t.test('keyRefusal: expiry and address', async (t) => {
  const [entry] = parseAuthorizedKeys([`from="127.0.0.1",expiry-time="20300101Z" ${KEY}`]);
  if (!entry) throw new Error('no entry');
  t.equal(keyRefusal(entry, '127.0.0.1', Date.UTC(2029, 11, 31)), undefined);
  t.match(keyRefusal(entry, '127.0.0.1', Date.UTC(2030, 0, 1)), /expired/);
  t.match(keyRefusal(entry, '127.0.0.2', Date.UTC(2029, 0, 1)), /address not allowed/);
});

t.test('anything else is refused at load, naming the option and the line', async (t) => {
  const cases: [string, RegExp][] = [
    [`permitopen="host:22" ${KEY}`, /option "permitopen" is not supported/],
    [`environment="A=b" ${KEY}`, /option "environment" is not supported/],
    [`cert-authority ${KEY}`, /option "cert-authority" is not supported/],
    [`pty ${KEY}`, /option "pty" is not supported/],
    [`command="bash" ${KEY}`, /command="bash" is refused .*a forced command must be/],
    [`command="/usr/bin/nix-daemon --stdio" ${KEY}`, /is refused/],
    [`from="host.example.com" ${KEY}`, /not an IP address, wildcard or CIDR pattern/],
    [`from="10.0.0.0/xx" ${KEY}`, /not an IP address/],
    [`expiry-time="tomorrow" ${KEY}`, /expiry-time="tomorrow" is not YYYYMMDD/],
    [`from="10.0.0.1 ${KEY}`, /unbalanced quote/],
    ['restrict', /options but no key|not a valid public key/],
    ['ssh-ed25519 AAAAnotbase64key', /not a valid public key/],
  ];
  for (const [line, message] of cases) {
    t.throws(() => parseAuthorizedKeys([line]), { name: 'AuthorizedKeyError', message }, line.slice(0, 50));
    t.throws(() => parseAuthorizedKeys([line]), { message: /^authorized key "/ }, 'the line is named');
  }
});
