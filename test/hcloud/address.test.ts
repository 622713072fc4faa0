// serverAddress: the one place that picks the host to connect to from a server's public_net.
import t from 'tap';
import { serverAddress } from '../../src/hcloud/address.js';
import type { Server } from '../../src/hcloud/types.js';

type PublicNet = Server['public_net'];
const v4 = { id: 1, ip: '203.0.113.7', blocked: false, dns_ptr: 'x' } as NonNullable<PublicNet['ipv4']>;
const v6 = { id: 2, ip: '2a01:4f8:c0c:1234::/64', blocked: false, dns_ptr: [] } as NonNullable<PublicNet['ipv6']>;
const net = (n: Partial<Pick<PublicNet, 'ipv4' | 'ipv6'>>): Pick<Server, 'public_net'> => ({
  public_net: { ipv4: null, ipv6: null, floating_ips: [], firewalls: [], ...n },
});

t.equal(serverAddress(net({ ipv4: v4, ipv6: v6 })), '203.0.113.7', 'IPv4 when there is one');
t.equal(serverAddress(net({ ipv6: v6 })), '2a01:4f8:c0c:1234::1', "else ::1 of the IPv6 /64: the server's own address");
t.equal(
  serverAddress(net({ ipv6: { ...v6, ip: '2001:db8::1/64' } })),
  '2001:db8::1',
  'an address that is not a bare network is taken as it is',
);
t.equal(serverAddress(net({})), undefined, 'none yet');
