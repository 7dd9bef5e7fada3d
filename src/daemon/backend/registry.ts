/**
 * The registry backend: chunks read by HTTP Range from `/v2/<repo>/blobs/sha256:<blob id>` of an OCI
 * distribution registry (nydus's `"type": "registry"`), through the project's registry client (keep-alive
 * pool, Bearer/Basic auth with a token fetched again on 401, redirects without the Authorization header
 * for other hosts, bounded retries with backoff). Every read has a deadline; any failure is an EIO for
 * that read only.
 */
import type { Dispatcher } from 'undici';
import { NydusError, ENOENT } from '../../../erofs/errors.ts';
import { type Credentials, RegistryClient, credentialsFromAuth, repositoryAt, type ImageReference } from '../../registry/index.ts';
import type { BlobBackend } from './localfs.ts';
import { type MetricsSink, countRead, countStream, newBackendMetrics } from './metrics.ts';
import type { RegistryBackendConfig } from './remote-config.ts';
import { ProxyRoute, asEio, directDispatcher, eioOnFailure, proxyDispatcher, readDeadlineMs, withDeadline } from './remote.ts';

/**
 * Adds `registry_token` to requests for the registry's host that carry no Authorization yet (the
 * client's own token, fetched after the registry refused this one, takes its place).
 */
function withRegistryToken(registryHost: string, token: string): Dispatcher.DispatcherComposeInterceptor {
  return (dispatch) => (opts, handler) => {
    const h = opts.headers;
    const plain = h && !Array.isArray(h) && typeof (h as Iterable<unknown>)[Symbol.iterator] !== 'function' ? h as Record<string, string> : undefined;
    if (new URL(String(opts.origin)).host === registryHost && (!h || plain) && !Object.keys(plain ?? {}).some((k) => k.toLowerCase() === 'authorization')) {
      opts = { ...opts, headers: { ...plain, authorization: `Bearer ${token}` } };
    }
    return dispatch(opts, handler);
  };
}

/** Rewrites the scheme and/or host of a blob redirect's Location (`blob_url_scheme`, `blob_redirected_host`). */
function rewriteBlobRedirects(scheme: string, host: string): Dispatcher.DispatcherComposeInterceptor {
  return (dispatch) => (opts, handler) => {
    if (!/\/blobs\/sha256:/.test(opts.path)) return dispatch(opts, handler);
    const h = handler as Dispatcher.DispatchHandler;
    const wrapped: Dispatcher.DispatchHandler = {
      onRequestStart: (c, ctx) => h.onRequestStart?.(c, ctx),
      onRequestUpgrade: (c, s, hd, sock) => h.onRequestUpgrade?.(c, s, hd, sock),
      onResponseStart: (c, status, headers, message) => {
        const loc = headers.location;
        if (status >= 300 && status < 400 && typeof loc === 'string') {
          const url = new URL(loc, `${opts.origin}`);
          if (scheme) url.protocol = `${scheme}:`;
          if (host) url.host = host;
          headers = { ...headers, location: url.href };
        }
        return h.onResponseStart?.(c, status, headers, message);
      },
      onResponseData: (c, d) => h.onResponseData?.(c, d),
      onResponseEnd: (c, t) => h.onResponseEnd?.(c, t),
      onResponseError: (c, e) => h.onResponseError?.(c, e),
    };
    return dispatch(opts, wrapped);
  };
}

interface Connections {
  direct: RegistryClient;
  viaProxy?: RegistryClient;
  route?: ProxyRoute;
  dispatchers: Dispatcher[];
}

export class RegistryBackend implements BlobBackend {
  readonly type = 'registry';
  private readonly ref: ImageReference;
  private conn?: Connections;
  private readonly deadlineMs: number;
  /** The config's `auth`, until PUT /api/v1/config replaces it (updateAuth). */
  private credentials: Credentials | undefined;

  constructor(private readonly cfg: RegistryBackendConfig, private readonly metrics: MetricsSink = newBackendMetrics()) {
    this.ref = repositoryAt(cfg.host, cfg.repo);
    this.deadlineMs = readDeadlineMs(cfg);
    this.credentials = cfg.credentials;
  }

  /**
   * Credentials for the reads from now on (the snapshotter renews them through PUT /api/v1/config):
   * the clients are made again, so no token got with the old ones is sent. Reads under way finish on
   * the old clients, which are closed once no read can still use them (after a read's deadline).
   */
  updateAuth(auth: string): void {
    this.credentials = credentialsFromAuth(auth, 'registry_auth');
    const old = this.conn;
    this.conn = undefined;
    if (old) setTimeout(() => void closeConnections(old), this.deadlineMs).unref();
  }

  /** `scheme://host/repo`, as errors name it. */
  private get where(): string {
    return `registry backend ${this.cfg.scheme}://${this.cfg.host}/${this.cfg.repo}`;
  }

  /** Proxy requests that went to the proxy and that fell back to the registry (tests, metrics). */
  get proxyStats(): { viaProxy: number; fellBack: number } {
    return { viaProxy: this.conn?.route?.viaProxy ?? 0, fellBack: this.conn?.route?.fellBack ?? 0 };
  }

  private compose(d: Dispatcher): Dispatcher {
    const interceptors: Dispatcher.DispatcherComposeInterceptor[] = [];
    if (this.cfg.registryToken) interceptors.push(withRegistryToken(this.ref.endpoint, this.cfg.registryToken));
    if (this.cfg.blobUrlScheme || this.cfg.blobRedirectedHost) interceptors.push(rewriteBlobRedirects(this.cfg.blobUrlScheme, this.cfg.blobRedirectedHost));
    return interceptors.length ? d.compose(...interceptors) : d;
  }

  /** The clients, made on first use (and again after close()). */
  private connections(): Connections {
    if (this.conn) return this.conn;
    const cfg = this.cfg;
    // retry_limit applies to every failure, timeouts included, as in nydus: the read's deadline bounds them.
    const client = (dispatcher: Dispatcher, plainHttp: boolean, retries: number) => new RegistryClient({
      dispatcher: this.compose(dispatcher), plainHttp, insecure: cfg.skipVerify, retries, timeoutRetries: retries,
      credentials: this.credentials, dockerConfig: false, userAgent: 'nydus-ts nydusd',
    });
    const direct = directDispatcher(cfg);
    const conn: Connections = { direct: client(direct, cfg.scheme === 'http', cfg.retryLimit), dispatchers: [direct] };
    if (cfg.proxy.url) {
      const proxy = proxyDispatcher(cfg);
      conn.dispatchers.push(proxy);
      // With fallback, a failing proxy is not retried: the registry is asked instead.
      conn.viaProxy = client(proxy, cfg.scheme === 'http' || cfg.proxy.useHttp, cfg.proxy.fallback ? 0 : cfg.retryLimit);
      conn.route = new ProxyRoute(cfg.proxy, direct, cfg.connectTimeoutSec);
    }
    this.conn = conn;
    return conn;
  }

  private routed<T>(op: (c: RegistryClient) => Promise<T>): Promise<T> {
    const { direct, viaProxy, route } = this.connections();
    return route && viaProxy ? route.run(() => op(viaProxy), () => op(direct)) : op(direct);
  }

  read(blobId: string, offset: number, size: number): Promise<Buffer> {
    const where = `${this.where}: blob ${blobId} bytes ${offset}+${size}`;
    return countRead(this.metrics, async () => {
      try {
        // At the deadline the request is aborted, not left downloading.
        return await withDeadline((signal) => this.routed((c) => c.readBlobRange(this.ref, `sha256:${blobId}`, offset, size, { signal })), this.deadlineMs, where);
      } catch (e) {
        throw asEio(e, where);
      }
    });
  }

  /**
   * One GET for the blob (without Range from byte 0), through the proxy as reads go. (The registry
   * client checks the blob's sha256 only at its end, which a taker that stops after its last chunk
   * does not read to: every chunk is checked on its own.)
   */
  stream(blobId: string, from: number, signal: AbortSignal): AsyncIterable<Buffer> {
    const where = `${this.where}: blob ${blobId} from byte ${from}`;
    const { direct, viaProxy, route } = this.connections();
    const open = (c: RegistryClient) => c.blobStream(this.ref, `sha256:${blobId}`, { from, signal }) as AsyncIterable<Buffer>;
    const pieces = route && viaProxy ? route.stream(() => open(viaProxy), () => open(direct)) : open(direct);
    return countStream(this.metrics, eioOnFailure(pieces, where), signal);
  }

  async size(blobId: string): Promise<number> {
    const where = `${this.where}: blob ${blobId}`;
    let head: { size: number } | undefined;
    try {
      head = await withDeadline((signal) => this.routed((c) => c.headBlob(this.ref, `sha256:${blobId}`, 'pull', signal)), this.deadlineMs, where);
    } catch (e) {
      throw asEio(e, where);
    }
    if (!head) throw new NydusError(`${where}: not in the registry`, ENOENT);
    return head.size;
  }

  async close(): Promise<void> {
    const conn = this.conn;
    this.conn = undefined;
    if (conn) await closeConnections(conn);
  }
}

async function closeConnections(conn: Connections): Promise<void> {
  conn.route?.close();
  await Promise.all([conn.direct.close(), conn.viaProxy?.close()]);
  await Promise.all(conn.dispatchers.map((d) => d.close().catch(() => undefined)));
}
