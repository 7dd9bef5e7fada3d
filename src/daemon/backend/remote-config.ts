/**
 * Config of the network backends under nydus's field names (api/src/config.rs RegistryConfig,
 * HttpProxyConfig, ProxyConfig) and defaults. Fields nydus does not know are ignored, as nydus's
 * serde does (the snapshotter adds some, e.g. `readahead`); known fields with bad values are refused.
 */
import fs from 'node:fs';
import { ConfigError, type Json, count, flag, obj, str } from '../config.ts';
import { credentialsFromAuth, repositoryAt, type Credentials } from '../../registry/index.ts';

/** The `proxy` section: a Dragonfly-style HTTP proxy in front of the origin. */
export interface ProxyConfig {
  /** Empty: no proxy. */
  url: string;
  /** Polled every checkInterval seconds; while it fails, requests go to the origin (or fail without fallback). */
  pingUrl: string;
  fallback: boolean;
  checkIntervalSec: number;
  /** Ask the proxy for http:// URLs of an https origin (so a plain HTTP proxy sees the request). */
  useHttp: boolean;
  /** No pings after this many seconds without a request. */
  checkPauseElapsedSec: number;
}

/** What both network backends share (nydus's ConnectionConfig). */
export interface ConnectionConfig {
  skipVerify: boolean;
  caCertFiles: string[];
  /** Longest wait for an answer or between body bytes, seconds. */
  timeoutSec: number;
  connectTimeoutSec: number;
  /** Attempts after the first. */
  retryLimit: number;
  proxy: ProxyConfig;
}

export interface RegistryBackendConfig extends ConnectionConfig {
  type: 'registry';
  scheme: 'http' | 'https';
  host: string;
  repo: string;
  /** Scheme that replaces a blob redirect's (for P2P systems that need one); empty: unchanged. */
  blobUrlScheme: string;
  /** Host that replaces a blob redirect's; empty: unchanged. */
  blobRedirectedHost: string;
  /** From `auth` (not enumerable: kept out of GET /api/v2/blobs answers and logs). */
  readonly credentials?: Credentials;
  /** `registry_token`, sent as a Bearer token until the registry refuses it (not enumerable either). */
  readonly registryToken?: string;
}

export interface HttpProxyBackendConfig extends ConnectionConfig {
  type: 'http-proxy';
  /** `http(s)://host[:port]` of the server. */
  addr: string;
  /** Prefix of blob paths: a blob is at `<addr><path>/<blob id>`. */
  path: string;
}

/**
 * The longest wait a timer can take: Node's timers hold a signed 32-bit count of ms, and a longer one
 * fires at once (every read would time out on the spot). nydus documents no maximum for these
 * (u32/u64 seconds); every wait of the backends is kept within this.
 */
const TIMER_MAX_MS = 2 ** 31 - 1;
export const TIMER_MAX_SEC = Math.floor(TIMER_MAX_MS / 1000);

function seconds(o: Json, key: string, where: string, fallback: number, zeroIsNoLimit = false): number {
  const v = count(o, key, where, fallback);
  if (v === 0) {
    throw new ConfigError(`${where}.${key} must be at least 1 (seconds)${zeroIsNoLimit ? ': nydus takes 0 for no limit, which nydus-ts refuses (a read must end; give a number of seconds)' : ''}`);
  }
  if (v > TIMER_MAX_SEC) throw new ConfigError(`${where}.${key} ${v} is too long: at most ${TIMER_MAX_SEC} seconds (about 24 days)`);
  return v;
}

function flagOr(o: Json, key: string, where: string, fallback: boolean): boolean {
  return o[key] === undefined || o[key] === null ? fallback : flag(o, key, where);
}

function httpUrl(v: string, where: string): string {
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    throw new ConfigError(`${where} ${JSON.stringify(v)} is not a URL`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new ConfigError(`${where} ${JSON.stringify(v)} must be an http:// or https:// URL`);
  return v;
}

function proxyFrom(v: unknown, where: string): ProxyConfig {
  const p = v === undefined || v === null ? {} : obj(v, where);
  if (str(p, 'dragonfly_scheduler_endpoint', where, false)) {
    throw new ConfigError(`${where}.dragonfly_scheduler_endpoint is not supported (Dragonfly's SDK); give the proxy as ${where}.url`);
  }
  // A proxy without a scheme is an http:// one, as nydus's HTTP client (reqwest) takes it: nydus's own
  // sample config gives "localhost:6789", and "localhost:6789/ping" for the ping (which nydus's URL
  // parser takes for a URL of scheme "localhost", whose ping always fails: the proxy never counts as
  // healthy there; here it is pinged at http://localhost:6789/ping, as meant).
  const schemeless = (v: string) => (v && !/^[a-z][a-z0-9+.-]*:\/\//i.test(v) ? `http://${v}` : v);
  const url = schemeless(str(p, 'url', where, false));
  const pingUrl = schemeless(str(p, 'ping_url', where, false));
  return {
    url: url && httpUrl(url, `${where}.url`),
    pingUrl: pingUrl && httpUrl(pingUrl, `${where}.ping_url`),
    fallback: flagOr(p, 'fallback', where, true),
    checkIntervalSec: seconds(p, 'check_interval', where, 5),
    useHttp: flag(p, 'use_http', where),
    checkPauseElapsedSec: count(p, 'check_pause_elapsed', where, 300),
  };
}

function connectionFrom(cfg: Json, where: string): ConnectionConfig {
  const ca = cfg.ca_cert_files ?? [];
  if (!Array.isArray(ca) || ca.some((f) => typeof f !== 'string' || !f)) throw new ConfigError(`${where}.ca_cert_files must be a list of file paths`);
  // Read now, as nydus reads them making the backend: a file that cannot be used fails the
  // registration, not every read of the image mounted after it.
  for (const f of ca as string[]) {
    let pem: string;
    try {
      pem = fs.readFileSync(f, 'utf8');
    } catch (e) {
      throw new ConfigError(`${where}.ca_cert_files: ${f}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError(`${where}.ca_cert_files: ${f}: no PEM certificate in it`);
  }
  const retryLimit = count(cfg, 'retry_limit', where, 0);
  if (retryLimit > 255) throw new ConfigError(`${where}.retry_limit must be at most 255`);
  const timeoutSec = seconds(cfg, 'timeout', where, 5, true);
  const connectTimeoutSec = seconds(cfg, 'connect_timeout', where, 5, true);
  // One read's deadline (remote.ts, readDeadlineMs): every attempt may wait out its connect timeout
  // and twice its answer timeout, with up to 5 s of backoff between attempts. It is a timer too.
  const deadlineMs = (retryLimit + 1) * (connectTimeoutSec + 2 * timeoutSec) * 1000 + retryLimit * 5_000;
  if (deadlineMs > TIMER_MAX_MS) {
    throw new ConfigError(`${where}: timeout ${timeoutSec} s, connect_timeout ${connectTimeoutSec} s and retry_limit ${retryLimit} let one read take `
      + `${Math.ceil(deadlineMs / 1000)} s, more than the ${TIMER_MAX_SEC} s a deadline can be: lower them`);
  }
  return {
    skipVerify: flag(cfg, 'skip_verify', where),
    caCertFiles: ca as string[],
    timeoutSec,
    connectTimeoutSec,
    retryLimit,
    proxy: proxyFrom(cfg.proxy, `${where}.proxy`),
  };
}

function scheme(v: string, where: string, fallback: 'http' | 'https' | ''): 'http' | 'https' | '' {
  if (!v) return fallback;
  if (v !== 'http' && v !== 'https') throw new ConfigError(`${where} ${JSON.stringify(v)} must be http or https`);
  return v;
}

export function registryConfigFrom(cfg: Json, where: string): RegistryBackendConfig {
  const host = str(cfg, 'host', where);
  const repo = str(cfg, 'repo', where);
  try {
    repositoryAt(host, repo);
  } catch (e) {
    throw new ConfigError(`${where}: host ${JSON.stringify(host)} and repo ${JSON.stringify(repo)} do not name a repository: ${(e as Error).message}`);
  }
  const blobRedirectedHost = str(cfg, 'blob_redirected_host', where, false);
  if (blobRedirectedHost && !/^[A-Za-z0-9.-]+(:\d+)?$|^\[[0-9A-Fa-f:.]+\](:\d+)?$/.test(blobRedirectedHost)) {
    throw new ConfigError(`${where}.blob_redirected_host ${JSON.stringify(blobRedirectedHost)} must be host[:port]`);
  }
  const out: RegistryBackendConfig = {
    type: 'registry',
    scheme: scheme(str(cfg, 'scheme', where, false), `${where}.scheme`, 'https') as 'http' | 'https',
    host, repo,
    blobUrlScheme: scheme(str(cfg, 'blob_url_scheme', where, false), `${where}.blob_url_scheme`, ''),
    blobRedirectedHost,
    ...connectionFrom(cfg, where),
  };
  const auth = str(cfg, 'auth', where, false);
  if (auth) {
    let credentials: Credentials;
    try {
      credentials = credentialsFromAuth(auth, `${where}.auth`);
    } catch (e) {
      throw new ConfigError((e as Error).message);
    }
    Object.defineProperty(out, 'credentials', { value: credentials, enumerable: false });
  }
  const token = str(cfg, 'registry_token', where, false).trim();
  if (token) Object.defineProperty(out, 'registryToken', { value: token, enumerable: false });
  return out;
}

export function httpProxyConfigFrom(cfg: Json, where: string): HttpProxyBackendConfig {
  const addr = str(cfg, 'addr', where);
  if (!/^https?:\/\//.test(addr)) {
    throw new ConfigError(`${where}.addr ${JSON.stringify(addr)}: only http:// and https:// servers are supported (not unix sockets)`);
  }
  httpUrl(addr, `${where}.addr`);
  return { type: 'http-proxy', addr: addr.replace(/\/+$/, ''), path: str(cfg, 'path', where, false).replace(/\/+$/, ''), ...connectionFrom(cfg, where) };
}
