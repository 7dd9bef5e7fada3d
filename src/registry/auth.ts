/**
 * Registry authorization as the distribution spec's token flow does it: the registry answers 401 with
 * `WWW-Authenticate: Bearer realm=..,service=..,scope=..` (or `Basic realm=..`); a Bearer token is
 * fetched from the realm (with Basic credentials when there are some), cached per scope and fetched
 * again when the registry refuses it.
 */
import { NydusError, EIO } from '../../erofs/errors.ts';
import { EACCES } from './errors.ts';
import { describeValue } from './validate.ts';
import type { Credentials } from './credentials.ts';

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses one `WWW-Authenticate` value (`Bearer realm="x",service="y",scope="a b"`). */
export function parseChallenge(header: string): Challenge | undefined {
  const m = /^\s*([A-Za-z][A-Za-z0-9_-]*)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?\s*/g;
  let p: RegExpExecArray | null;
  while ((p = re.exec(m[2])) !== null) {
    if (p[0] === '') break;
    params[p[1].toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3];
  }
  return { scheme: m[1].toLowerCase(), params };
}

export type Action = 'pull' | 'push';

/** `repository:<name>:pull` or `repository:<name>:pull,push`. */
export function repositoryScope(repository: string, action: Action): string {
  return `repository:${repository}:${action === 'push' ? 'pull,push' : 'pull'}`;
}

export interface TokenResponse {
  status: number;
  body: string;
}

/** GETs the token realm; given so this module stays free of transport details. */
export type TokenFetcher = (url: URL, headers: Record<string, string>) => Promise<TokenResponse>;

interface CachedToken {
  value: string;
  /** ms since epoch after which the token is not used any more. */
  expiresAt: number;
}

export function basicHeader(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
}

/**
 * Authorization for one registry host. `header(scopes)` gives what to send up front (a cached token or
 * Basic once the registry asked for Basic); `challenge(...)` answers a 401 and returns the new header.
 */
export class Authorizer {
  private scheme: 'none' | 'basic' | 'bearer' = 'none';
  private bearer?: Challenge;
  private readonly tokens = new Map<string, CachedToken>();
  /** Concurrent requests of the same scope share one token fetch. */
  private readonly pending = new Map<string, Promise<string>>();
  /** Number of token requests made (for metrics and tests). */
  tokenRequests = 0;

  constructor(
    private readonly host: string,
    private readonly credentials: Credentials | undefined,
    private readonly fetchToken: TokenFetcher,
  ) {}

  private key(scopes: readonly string[]): string {
    return [...scopes].sort().join(' ');
  }

  header(scopes: readonly string[]): string | undefined {
    if (this.scheme === 'basic' && this.credentials) return basicHeader(this.credentials);
    if (this.scheme === 'bearer') {
      const t = this.tokens.get(this.key(scopes));
      if (t && t.expiresAt > Date.now()) return `Bearer ${t.value}`;
    }
    return undefined;
  }

  /** Answers a 401 (its `WWW-Authenticate` value, or undefined when there was none). */
  async challenge(wwwAuthenticate: string | undefined, scopes: readonly string[]): Promise<string> {
    const c = wwwAuthenticate ? parseChallenge(wwwAuthenticate) : undefined;
    if (!c) throw new NydusError(`registry ${this.host}: 401 without a usable WWW-Authenticate challenge`, EACCES);
    if (c.scheme === 'basic') {
      if (!this.credentials) throw new NydusError(`registry ${this.host}: needs credentials (Basic auth) and none were given or found in docker's config.json`, EACCES);
      this.scheme = 'basic';
      return basicHeader(this.credentials);
    }
    if (c.scheme !== 'bearer') throw new NydusError(`registry ${this.host}: unsupported auth scheme "${c.scheme}"`, EACCES);
    if (!c.params.realm) throw new NydusError(`registry ${this.host}: Bearer challenge without a realm`, EACCES);
    this.scheme = 'bearer';
    this.bearer = c;
    const key = this.key(scopes);
    this.tokens.delete(key);
    let p = this.pending.get(key);
    if (!p) {
      p = this.requestToken(scopes).finally(() => this.pending.delete(key));
      this.pending.set(key, p);
    }
    return `Bearer ${await p}`;
  }

  private async requestToken(scopes: readonly string[]): Promise<string> {
    const c = this.bearer!;
    let url: URL;
    try {
      url = new URL(c.params.realm);
    } catch {
      throw new NydusError(`registry ${this.host}: Bearer realm "${c.params.realm.slice(0, 200)}" is not a URL`, EACCES);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new NydusError(`registry ${this.host}: Bearer realm "${c.params.realm.slice(0, 200)}" is not an http(s) URL`, EACCES);
    }
    if (c.params.service) url.searchParams.set('service', c.params.service);
    for (const s of scopes) url.searchParams.append('scope', s);
    const headers: Record<string, string> = {};
    if (this.credentials) headers.authorization = basicHeader(this.credentials);
    this.tokenRequests++;
    const res = await this.fetchToken(url, headers);
    const where = `registry ${this.host}: token from ${url.origin}${url.pathname}`;
    if (res.status === 401 || res.status === 403) throw new NydusError(`${where}: HTTP ${res.status}, credentials refused`, EACCES);
    if (res.status !== 200) throw new NydusError(`${where}: HTTP ${res.status}`, EIO);
    let body: { token?: unknown; access_token?: unknown; expires_in?: unknown; issued_at?: unknown };
    try {
      body = JSON.parse(res.body);
    } catch {
      throw new NydusError(`${where}: answer is not JSON`, EIO);
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new NydusError(`${where}: answer is ${describeValue(body)}, not a JSON object`, EIO);
    const value = body.token || body.access_token;
    if (!value) throw new NydusError(`${where}: answer has neither "token" nor "access_token"`, EIO);
    if (typeof value !== 'string') throw new NydusError(`${where}: answer's ${body.token ? '"token"' : '"access_token"'} is ${describeValue(value)}, not a string`, EIO);
    // The spec's default lifetime is 60 s; keep a margin so a token does not expire in flight.
    const lifetime = (typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 60) * 1000;
    const issued = typeof body.issued_at === 'string' ? Date.parse(body.issued_at) : NaN;
    const start = Number.isFinite(issued) && issued <= Date.now() ? issued : Date.now();
    this.tokens.set(this.key(scopes), { value, expiresAt: start + lifetime - Math.min(10_000, lifetime / 2) });
    return value;
  }
}
