/**
 * HTTP for the registry client: one keep-alive undici Agent, connect/headers/body timeouts, bounded
 * retries with exponential backoff on 5xx, 429 and broken connections (never on other 4xx; a timeout
 * is retried once by default), redirects to http(s) only, followed without carrying the Authorization
 * header to another origin, bounded reads of small bodies (readBounded: a size cap and an overall
 * deadline, the rest dropped with the connection), a caller's AbortSignal, and the scheme rules of
 * nydusify: `plainHttp` always speaks http; `insecure` skips TLS verification and falls back to http
 * for a host that answers a TLS handshake like a plain HTTP server (or refuses the connection).
 */
import type { Dispatcher } from 'undici';
import { undici } from './undici.ts';
import { envProxyRoutes } from './env-proxy.ts';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { setMaxListeners } from 'node:events';
import { RegistryError } from './errors.ts';

export interface TransportOptions {
  /** Skip TLS certificate verification; fall back to plain http when the host does not speak TLS. */
  insecure?: boolean;
  /** Speak plain http to the registry (nydusify's `--plain-http`). */
  plainHttp?: boolean;
  /** TCP + TLS connect timeout, ms (default 30 000). */
  connectTimeoutMs?: number;
  /** Time to wait for response headers, ms (default 60 000). */
  headersTimeoutMs?: number;
  /** Longest silence while reading a body, ms (default 60 000). */
  bodyTimeoutMs?: number;
  /** Retries after the first attempt (default 3). */
  retries?: number;
  /**
   * Retries after a connect or answer timeout (default 1): a host that stays silent twice is taken
   * at its word instead of being waited out `retries` times (4 x 60 s). Never more than `retries`.
   */
  timeoutRetries?: number;
  /**
   * Longest time a small document's body (manifest, config, token, error answer) may take to arrive
   * whole, ms (default 120 000): the body timeout only measures silence between bytes.
   */
  documentTimeoutMs?: number;
  /** First backoff delay, doubled on each retry (default 200 ms), capped by retryMaxDelayMs (default 5 000). */
  retryBaseDelayMs?: number;
  retryMaxDelayMs?: number;
  /** Connections per origin (default 16). */
  connections?: number;
  userAgent?: string;
  /**
   * Go through the proxy named by HTTP_PROXY / HTTPS_PROXY (and not for NO_PROXY hosts), as nydusify
   * does (default true; only when such a variable is set).
   */
  proxyFromEnvironment?: boolean;
  /** Environment read for proxies, `DOCKER_CONFIG` and `HOME` (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Use this dispatcher instead of the client's own Agent (the caller then owns and closes it). */
  dispatcher?: Dispatcher;
}

export type RequestBody = Buffer | (() => Readable);

export interface HttpRequest {
  method: 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';
  /** Absolute URL, or a path (`/v2/...`) on the registry endpoint. */
  target: string;
  headers?: Record<string, string>;
  /** A Buffer, or a function opening a fresh stream for each attempt. */
  body?: RequestBody;
  /** Follow 301/302/303/307/308 (blob downloads). */
  followRedirects?: boolean;
  /** Override of the number of retries (0 for requests that must not be repeated blindly). */
  retries?: number;
  /** Reference named in errors. */
  reference: string;
  /** Ends the request (and the reading of its body) when aborted: a caller's deadline. */
  signal?: AbortSignal;
}

export interface HttpResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
  /** The URL that answered (after redirects). */
  url: URL;
}

const RETRY_STATUS = (s: number) => s >= 500 || s === 429;
const REDIRECT_STATUS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 5;

const RETRY_CODES = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH',
  'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CLOSED',
]);

function errorCode(e: unknown): string | undefined {
  let cur: unknown = e;
  for (let i = 0; i < 4 && cur && typeof cur === 'object'; i++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    cur = (cur as { cause?: unknown }).cause;
  }
  return undefined;
}

/** Network failures worth another attempt: resets, refused or timed-out connections, stalls. */
export function isRetryableNetworkError(e: unknown): boolean {
  const code = errorCode(e);
  return code !== undefined && RETRY_CODES.has(code);
}

const TIMEOUT_CODES = new Set(['ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT']);

/** A host that accepted nothing or answered nothing within its timeout. */
function isTimeout(e: unknown): boolean {
  const code = errorCode(e);
  return code !== undefined && TIMEOUT_CODES.has(code);
}

/** What an aborted signal says, for an error message. */
export function abortReason(signal: AbortSignal): string {
  const r = signal.reason as unknown;
  if (r instanceof Error) return r.message;
  return r === undefined ? 'aborted' : String(r);
}

/** What a TLS client sees from a plain HTTP server (Go's "server gave HTTP response to HTTPS client"). */
function isPlainHttpAnswer(e: unknown): boolean {
  const code = errorCode(e) ?? '';
  const text = String((e as Error)?.message ?? '') + String(((e as { cause?: Error })?.cause)?.message ?? '');
  return code === 'ECONNREFUSED' || code === 'EPROTO' || code.startsWith('ERR_SSL_') || /wrong version number|packet length too long|http request/i.test(text);
}

export function header(h: HttpResponse['headers'], name: string): string | undefined {
  const v = h[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * A 206's `Content-Range: bytes first-last/total` (total `*`: not known, undefined here); null when
 * there is none or it is not of that form.
 */
export function contentRange(h: HttpResponse['headers']): { first: number; last: number; total: number | undefined } | null {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header(h, 'content-range')?.trim() ?? '');
  return m ? { first: Number(m[1]), last: Number(m[2]), total: m[3] === '*' ? undefined : Number(m[3]) } : null;
}

function describeNetworkError(e: unknown): string {
  const code = errorCode(e);
  const msg = (e as Error)?.message ?? String(e);
  return code && !msg.includes(code) ? `${code}: ${msg}` : msg;
}

export class Transport {
  /** The dispatcher of a request's URL (env-proxy.ts: some hosts bypass the proxy variables). */
  private readonly dispatcherFor: (url: URL) => Dispatcher;
  /** The dispatchers made here, closed with the transport (none when the caller gave its own). */
  private readonly owned: Dispatcher[];
  /** Hosts found to speak plain http under `insecure`. */
  private readonly httpHosts = new Set<string>();
  /** Aborted by destroy(): requests in flight and backoff waits end at once. */
  private readonly aborter = new AbortController();
  readonly retries: number;
  readonly timeoutRetries: number;
  readonly documentTimeoutMs: number;
  /** Retries made so far (metrics, tests). */
  retryCount = 0;

  constructor(private readonly opts: TransportOptions = {}) {
    // Every request in flight listens on this signal: many concurrent ones (nydusd's chunk reads) are normal.
    setMaxListeners(0, this.aborter.signal);
    this.retries = opts.retries ?? 3;
    this.timeoutRetries = opts.timeoutRetries ?? 1;
    this.documentTimeoutMs = opts.documentTimeoutMs ?? 120_000;
    if (opts.dispatcher) {
      const given = opts.dispatcher;
      this.dispatcherFor = () => given;
      this.owned = [];
    } else {
      const agentOptions = {
        connect: { timeout: opts.connectTimeoutMs ?? 30_000, rejectUnauthorized: !opts.insecure },
        headersTimeout: opts.headersTimeoutMs ?? 60_000,
        bodyTimeout: opts.bodyTimeoutMs ?? 60_000,
        keepAliveTimeout: 30_000,
        connections: opts.connections ?? 16,
      };
      const env = opts.env ?? process.env;
      const httpProxy = env.HTTP_PROXY ?? env.http_proxy;
      const httpsProxy = env.HTTPS_PROXY ?? env.https_proxy;
      if (opts.proxyFromEnvironment !== false && (httpProxy || httpsProxy)) {
        const routes = envProxyRoutes(agentOptions, { httpProxy, httpsProxy, noProxy: env.NO_PROXY ?? env.no_proxy ?? '' }, {
          // As Go's transport: http URLs in absolute form through the proxy, https through CONNECT.
          proxyTunnel: false,
          requestTls: { rejectUnauthorized: !opts.insecure },
        });
        this.dispatcherFor = routes.pick;
        this.owned = routes.all;
      } else {
        const agent = new (undici().Agent)(agentOptions);
        this.dispatcherFor = () => agent;
        this.owned = [agent];
      }
    }
  }

  /** `http` or `https` for a registry endpoint under the options and what was learned so far. */
  scheme(host: string): 'http' | 'https' {
    return this.opts.plainHttp || this.httpHosts.has(host) ? 'http' : 'https';
  }

  /** Resolves a path on a registry endpoint, or an absolute/relative URL against a base. */
  resolve(host: string, target: string, base?: URL): URL {
    if (/^https?:\/\//i.test(target)) return new URL(target);
    return new URL(target, base ?? `${this.scheme(host)}://${host}`);
  }

  private backoff(attempt: number, retryAfter?: string): number {
    const max = this.opts.retryMaxDelayMs ?? 5_000;
    const seconds = retryAfter !== undefined ? Number(retryAfter) : NaN;
    if (Number.isFinite(seconds) && seconds >= 0) return Math.min(seconds * 1000, max);
    const base = (this.opts.retryBaseDelayMs ?? 200) * 2 ** attempt;
    return Math.min(max, base / 2 + Math.random() * (base / 2));
  }

  /** The client's own signal, or it and a caller's (either ends the request). */
  private signalFor(signal?: AbortSignal): AbortSignal {
    return signal ? AbortSignal.any([this.aborter.signal, signal]) : this.aborter.signal;
  }

  /** Waits the backoff for retry number `attempt` (0-based); exposed for callers that resume streams. */
  async pause(attempt: number, signal?: AbortSignal): Promise<void> {
    this.retryCount++;
    await sleep(this.backoff(attempt), undefined, { signal: this.signalFor(signal) });
  }

  /**
   * Sends `req` to `host` (the registry endpoint). Returns the final response, whatever its status,
   * once retries are spent; throws RegistryError only for network failures.
   */
  async send(host: string, req: HttpRequest): Promise<HttpResponse> {
    const retries = req.retries ?? this.retries;
    let url = this.resolve(host, req.target);
    const firstHost = url.host;
    let headers: Record<string, string> = { 'user-agent': this.opts.userAgent ?? 'nydus-ts', ...req.headers };
    let method = req.method;
    let attempt = 0;
    let timeouts = 0;
    let redirects = 0;
    const signal = this.signalFor(req.signal);
    const aborted = (e: unknown) => new RegistryError({
      reference: req.reference, method, path: url.pathname + url.search,
      detail: this.aborter.signal.aborted ? 'aborted: the client was destroyed' : `aborted: ${abortReason(req.signal!)}`, cause: e,
    });
    for (;;) {
      let res: Dispatcher.ResponseData;
      try {
        if (!/^https?:$/.test(url.protocol)) throw new RegistryError({ reference: req.reference, method, path: url.href, detail: `not an http(s) URL` });
        const body = typeof req.body === 'function' ? req.body() : req.body;
        res = await undici().request(url, { dispatcher: this.dispatcherFor(url), method, headers, body: method === 'GET' || method === 'HEAD' ? undefined : body, signal });
      } catch (e) {
        if (e instanceof RegistryError) throw e;
        if (signal.aborted) throw aborted(e);
        if (this.opts.insecure && !this.opts.plainHttp && url.protocol === 'https:' && url.host === host && isPlainHttpAnswer(e)) {
          // As nydusify: an insecure registry that does not speak TLS is asked again over http.
          this.httpHosts.add(host);
          url = new URL(url.href.replace(/^https:/, 'http:'));
          continue;
        }
        // Timeouts are retried at most `timeoutRetries` times: a host that stays silent is not waited out again and again.
        if (isRetryableNetworkError(e) && attempt < retries && !(isTimeout(e) && timeouts++ >= this.timeoutRetries)) {
          await this.pause(attempt++, req.signal).catch((err) => { throw signal.aborted ? aborted(err) : err; });
          continue;
        }
        const tries = attempt > 0 ? ` (after ${attempt + 1} attempts)` : '';
        throw new RegistryError({ reference: req.reference, method, path: url.pathname + url.search, detail: describeNetworkError(e) + tries, cause: e });
      }
      const response: HttpResponse = { status: res.statusCode, headers: res.headers, body: res.body, url };
      if (RETRY_STATUS(res.statusCode) && attempt < retries) {
        await drain(res.body);
        this.retryCount++;
        await sleep(this.backoff(attempt++, res.statusCode === 429 ? header(res.headers, 'retry-after') : undefined), undefined, { signal })
          .catch((err) => { throw aborted(err); });
        continue;
      }
      if (req.followRedirects && REDIRECT_STATUS.has(res.statusCode)) {
        const location = header(res.headers, 'location');
        await drain(res.body);
        if (!location) return response;
        if (++redirects > MAX_REDIRECTS) {
          throw new RegistryError({ reference: req.reference, method, path: url.pathname, status: res.statusCode, detail: `more than ${MAX_REDIRECTS} redirects` });
        }
        let next: URL;
        try {
          next = new URL(location, url);
        } catch {
          throw new RegistryError({ reference: req.reference, method, path: url.pathname, status: res.statusCode, detail: `redirect to ${JSON.stringify(location.slice(0, 200))}, which is not a URL` });
        }
        if (!/^https?:$/.test(next.protocol)) {
          throw new RegistryError({ reference: req.reference, method, path: url.pathname, status: res.statusCode, detail: `redirect to a ${next.protocol} URL, not http(s)` });
        }
        url = next;
        if (url.host !== firstHost) {
          // A redirect to a storage host must not receive the registry's credentials.
          const { authorization: _dropped, ...rest } = headers;
          headers = rest;
        }
        if (res.statusCode === 303) method = 'GET';
        continue;
      }
      return response;
    }
  }

  private closed = false;

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.owned.map((d) => d.close()));
  }

  /** Aborts requests in flight (their callers get errors) and closes the connections. */
  async destroy(): Promise<void> {
    this.aborter.abort();
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.owned.map((d) => d.destroy()));
  }
}

/** Drops a response body not read to its end (closing its connection) without an unhandled 'error'. */
export function discard(body: HttpResponse['body']): void {
  body.on('error', () => undefined);
  body.destroy();
}

/** How long the rest of an unwanted body is read to keep its connection, at most (then it is dropped). */
const DRAIN_MS = 5_000;
/** ... and how many bytes (undici's own default for dump). */
const DRAIN_LIMIT = 128 << 10;

/**
 * Reads the rest of an unwanted body so its connection can serve again: at most DRAIN_LIMIT bytes and
 * DRAIN_MS; a body longer or slower than that is dropped with its connection instead. Never throws.
 */
export async function drain(body: HttpResponse['body']): Promise<void> {
  try {
    await body.dump({ limit: DRAIN_LIMIT, signal: AbortSignal.timeout(DRAIN_MS) });
  } catch {
    discard(body);
  }
}

/** Largest part of an error answer read (containerd's NewUnexpectedStatusErr keeps 64 000 bytes); the rest is dropped. */
export const ERROR_BODY_EXCERPT = 64 << 10;

export interface BoundedBody {
  /** At most `limit` bytes: the body, or its first `limit` bytes. */
  bytes: Buffer;
  /** The body had more than `limit` bytes (the rest was not read). */
  over: boolean;
  /** The deadline passed before the body ended (`bytes` is what had arrived). */
  timedOut: boolean;
  /** With `keepPartial`: the error that ended the body early (`bytes` is what had arrived). */
  failed?: unknown;
}

export interface ReadBoundedOptions {
  /** Hears the number of bytes read so far. */
  progress?: (bytes: number) => void;
  /** Return what arrived when the body fails (an error answer's excerpt) instead of throwing. */
  keepPartial?: boolean;
}

/**
 * Reads a body of at most `limit` bytes within `deadlineMs`: it stops at the first byte past the limit
 * or at the deadline, and drops the rest of the body with its connection. Nothing larger than `limit`
 * is ever held. Errors of the body itself (a reset, an aborted request) are thrown, or with
 * `keepPartial` returned beside what had arrived.
 */
export async function readBounded(body: HttpResponse['body'], limit: number, deadlineMs: number, opts: ReadBoundedOptions = {}): Promise<BoundedBody> {
  const parts: Buffer[] = [];
  let n = 0;
  let over = false;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    discard(body);
  }, deadlineMs);
  try {
    for await (const piece of body as AsyncIterable<Buffer>) {
      if (piece.length > limit - n) {
        parts.push(piece.subarray(0, limit - n));
        n = limit;
        over = true;
        break;
      }
      parts.push(piece);
      n += piece.length;
      opts.progress?.(n);
    }
  } catch (e) {
    if (opts.keepPartial && !timedOut) {
      discard(body);
      return { bytes: Buffer.concat(parts, n), over, timedOut, failed: e };
    }
    if (!timedOut) throw e;
  } finally {
    clearTimeout(timer);
    if (over || timedOut) discard(body);
  }
  return { bytes: Buffer.concat(parts, n), over, timedOut };
}
