/**
 * Which API endpoints may be spoken to over plain http: only loopback addresses (a local fake or
 * proxy). Anywhere else the bearer token would cross the network in clear text.
 */
import { isIPv4 } from 'node:net';

/** Whether a URL's host (as `URL.hostname` gives it, IPv6 in brackets) is a loopback address. */
export function isLoopbackHost(hostname: string): boolean {
  const host = hostname.replace(/^\[(.*)\]$/, '$1');
  if (isIPv4(host)) return host.split('.')[0] === '127';
  return host === '::1';
}

/** Why `url` is no API endpoint to send a token to, or undefined if it is fine. */
export function insecureEndpointReason(url: URL): string | undefined {
  if (url.protocol === 'https:') return undefined;
  if (url.protocol !== 'http:') return 'not an http(s) URL';
  if (isLoopbackHost(url.hostname)) return undefined;
  return `plain http sends the API token in clear text; use https (plain http only to a loopback address such as http://127.0.0.1:…)`;
}
