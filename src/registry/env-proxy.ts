/**
 * HTTP(S)_PROXY and NO_PROXY as nydusify (Go's net/http, golang.org/x/net/http/httpproxy) reads them.
 * undici's EnvHttpProxyAgent matches NO_PROXY entries by name and port only, and proxies everything
 * when NO_PROXY is empty. Go never proxies `localhost` nor a loopback address (a registry on this
 * machine, as a CI job pushes to, is not reachable from a proxy), and takes CIDR entries
 * (`10.0.0.0/8`) for IP-literal hosts. Requests for those go straight out; the rest is the agent's.
 */
import net from 'node:net';
import type { Dispatcher } from 'undici';
import { undici } from './undici.ts';

/** The CIDR entries of a NO_PROXY list, as a BlockList (entries that are no CIDR are the agent's to match). */
export function cidrsOf(noProxy: string): net.BlockList {
  const list = new net.BlockList();
  for (const entry of noProxy.split(/[\s,]+/)) {
    const m = /^([0-9a-fA-F:.]+)\/(\d{1,3})$/.exec(entry);
    if (!m) continue;
    const type = net.isIPv4(m[1]) ? 'ipv4' : net.isIPv6(m[1]) ? 'ipv6' : null;
    const prefix = Number(m[2]);
    if (type && prefix <= (type === 'ipv4' ? 32 : 128)) list.addSubnet(m[1], prefix, type);
  }
  return list;
}

/** Whether a request to `host` goes straight out whatever the proxy variables say. */
export function bypassesProxy(host: string, cidrs: net.BlockList): boolean {
  if (host.toLowerCase() === 'localhost') return true;
  const type = net.isIPv4(host) ? 'ipv4' : net.isIPv6(host) ? 'ipv6' : null;
  if (!type) return false;
  if (type === 'ipv4' ? host.startsWith('127.') : host === '::1' || /^::ffff:127\./i.test(host)) return true;
  return cidrs.check(host, type);
}

export interface EnvProxyOptions {
  httpProxy?: string;
  httpsProxy?: string;
  noProxy: string;
}

/** Which dispatcher a request takes, and every dispatcher made (to close). */
export interface DispatcherRoutes {
  pick(url: URL): Dispatcher;
  all: Dispatcher[];
}

/**
 * Requests through `proxied` (undici's EnvHttpProxyAgent over the same variables, with
 * `proxiedOptions`) or, for the hosts Go sends straight out, through a plain Agent.
 */
export function envProxyRoutes(agentOptions: object, proxy: EnvProxyOptions, proxiedOptions: object): DispatcherRoutes {
  const { Agent, EnvHttpProxyAgent } = undici();
  const cidrs = cidrsOf(proxy.noProxy);
  const direct = new Agent(agentOptions);
  const proxied = new EnvHttpProxyAgent({ ...agentOptions, ...proxiedOptions, httpProxy: proxy.httpProxy, httpsProxy: proxy.httpsProxy, noProxy: proxy.noProxy });
  return { pick: (url) => (bypassesProxy(url.hostname.replace(/^\[(.*)\]$/, '$1'), cidrs) ? direct : proxied), all: [direct, proxied] };
}
