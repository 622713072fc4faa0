/** Where to reach a server: the one place that turns the API's `public_net` into a host to connect to. */
import type { Server } from './types.js';

/**
 * The server's public IPv4, else its IPv6 host address, else undefined (no address yet, or
 * none asked for). Hetzner gives a server an IPv6 /64 network ("2a01:4f8:c0c:1234::/64"), not
 * an address; the server itself answers on the network's first address, `::1`.
 */
export function serverAddress(server: Pick<Server, 'public_net'>): string | undefined {
  const v4 = server.public_net.ipv4?.ip;
  if (v4) return v4;
  const network = server.public_net.ipv6?.ip?.replace(/\/\d+$/, '');
  if (!network) return undefined;
  return network.endsWith('::') ? `${network}1` : network;
}
