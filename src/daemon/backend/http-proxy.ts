/**
 * The http-proxy backend (nydus's `"type": "http-proxy"`): a plain HTTP server holding blobs at
 * `<addr><path>/<blob id>`, read with Range GETs and sized with HEAD. Same timeouts, retries, proxy and
 * deadline rules as the registry backend.
 */
import { NydusError, EIO, ENOENT } from '../../../erofs/errors.ts';
import { Transport, discard, drain, header, isRetryableNetworkError, type HttpResponse } from '../../registry/transport.ts';
import type { BlobBackend } from './localfs.ts';
import { type MetricsSink, countRead, countStream, newBackendMetrics } from './metrics.ts';
import type { HttpProxyBackendConfig } from './remote-config.ts';
import { ProxyRoute, asEio, directDispatcher, eioOnFailure, proxyDispatcher, readDeadlineMs, withDeadline } from './remote.ts';
import type { Dispatcher } from 'undici';

/** An HTTP failure with its status, so the proxy route can tell a down proxy (>= 500) from an answer. */
class HttpStatusError extends NydusError {
  constructor(message: string, readonly status: number) {
    super(message, status === 404 ? ENOENT : EIO);
  }
}

interface Connections {
  direct: Transport;
  viaProxy?: Transport;
  route?: ProxyRoute;
  dispatchers: Dispatcher[];
}

/** Exactly `length` bytes from a 206 answer for them (nydus requires the server to honour Range). */
async function rangeBody(res: HttpResponse, offset: number, length: number): Promise<Buffer> {
  const cr = header(res.headers, 'content-range') ?? '';
  const m = /^bytes (\d+)-(\d+)\//.exec(cr);
  if (res.status !== 206 || !m || Number(m[1]) !== offset || Number(m[2]) !== offset + length - 1) {
    discard(res.body);
    throw new NydusError(`asked for bytes ${offset}-${offset + length - 1}, got HTTP ${res.status} with Content-Range "${cr}"`, EIO);
  }
  const parts: Buffer[] = [];
  let got = 0;
  try {
    for await (const piece of res.body as AsyncIterable<Buffer>) {
      got += piece.length;
      if (got > length) throw new NydusError(`206 body longer than the ${length} bytes asked for`, EIO);
      parts.push(piece);
    }
  } finally {
    discard(res.body);
  }
  if (got !== length) throw new NydusError(`got ${got} of ${length} bytes at ${offset}`, EIO);
  return Buffer.concat(parts, length);
}

export class HttpProxyBackend implements BlobBackend {
  readonly type = 'http-proxy';
  private conn?: Connections;
  private readonly deadlineMs: number;

  constructor(private readonly cfg: HttpProxyBackendConfig, private readonly metrics: MetricsSink = newBackendMetrics()) {
    this.deadlineMs = readDeadlineMs(cfg);
  }

  private url(blobId: string): string {
    return `${this.cfg.addr}${this.cfg.path}/${blobId}`;
  }

  private connections(): Connections {
    if (this.conn) return this.conn;
    const cfg = this.cfg;
    const direct = directDispatcher(cfg);
    const conn: Connections = { direct: new Transport({ dispatcher: direct, retries: cfg.retryLimit }), dispatchers: [direct] };
    if (cfg.proxy.url) {
      const proxy = proxyDispatcher(cfg);
      conn.dispatchers.push(proxy);
      conn.viaProxy = new Transport({ dispatcher: proxy, retries: cfg.proxy.fallback ? 0 : cfg.retryLimit });
      conn.route = new ProxyRoute(cfg.proxy, direct, cfg.connectTimeoutSec);
    }
    this.conn = conn;
    return conn;
  }

  private routed<T>(op: (t: Transport, url: string) => Promise<T>, blobId: string): Promise<T> {
    const { direct, viaProxy, route } = this.connections();
    const url = this.url(blobId);
    const proxied = this.cfg.proxy.useHttp ? url.replace(/^https:/, 'http:') : url;
    return route && viaProxy ? route.run(() => op(viaProxy, proxied), () => op(direct, url)) : op(direct, url);
  }

  /** `signal`: the read's deadline (withDeadline), which ends the request and its body. */
  private async send(t: Transport, url: string, method: 'GET' | 'HEAD', headers: Record<string, string>, ok: number[], signal?: AbortSignal): Promise<HttpResponse> {
    const res = await t.send(new URL(url).host, { method, target: url, headers, followRedirects: true, reference: this.cfg.addr, signal });
    if (!ok.includes(res.status)) {
      discard(res.body);
      throw new HttpStatusError(`${method} ${url}: HTTP ${res.status}`, res.status);
    }
    return res;
  }

  /** One Range GET; a body that breaks off is asked for again up to retry_limit times. */
  private async readRange(t: Transport, url: string, offset: number, size: number, signal: AbortSignal): Promise<Buffer> {
    for (let failures = 0; ; failures++) {
      const res = await this.send(t, url, 'GET', { range: `bytes=${offset}-${offset + size - 1}` }, [206], signal);
      try {
        return await rangeBody(res, offset, size);
      } catch (e) {
        if (!isRetryableNetworkError(e) || failures >= this.cfg.retryLimit) throw e;
        await t.pause(failures, signal);
      }
    }
  }

  read(blobId: string, offset: number, size: number): Promise<Buffer> {
    const where = `http-proxy backend ${this.url(blobId)}: bytes ${offset}+${size}`;
    return countRead(this.metrics, async () => {
      try {
        if (size === 0) return Buffer.alloc(0);
        return await withDeadline((signal) => this.routed((t, url) => this.readRange(t, url, offset, size, signal), blobId), this.deadlineMs, where);
      } catch (e) {
        throw asEio(e, where);
      }
    });
  }

  /** One GET for the blob from `from` on (without Range from byte 0), through the proxy as reads go. */
  stream(blobId: string, from: number, signal: AbortSignal): AsyncIterable<Buffer> {
    const where = `http-proxy backend ${this.url(blobId)}: from byte ${from}`;
    const self = this;
    async function* open(t: Transport, url: string): AsyncGenerator<Buffer> {
      const res = await self.send(t, url, 'GET', from ? { range: `bytes=${from}-` } : {}, from ? [206] : [200], signal);
      try {
        const start = /^bytes (\d+)-/.exec(header(res.headers, 'content-range') ?? '')?.[1];
        if (from && Number(start) !== from) throw new NydusError(`asked for bytes from ${from}, got Content-Range "${header(res.headers, 'content-range')}"`, EIO);
        yield* res.body as AsyncIterable<Buffer>;
      } finally {
        discard(res.body);
      }
    }
    const { direct, viaProxy, route } = this.connections();
    const url = this.url(blobId);
    const proxied = this.cfg.proxy.useHttp ? url.replace(/^https:/, 'http:') : url;
    const pieces = route && viaProxy ? route.stream(() => open(viaProxy, proxied), () => open(direct, url)) : open(direct, url);
    return countStream(this.metrics, eioOnFailure(pieces, where), signal);
  }

  async size(blobId: string): Promise<number> {
    const where = `http-proxy backend ${this.url(blobId)}`;
    try {
      const res = await withDeadline((signal) => this.routed((t, url) => this.send(t, url, 'HEAD', {}, [200], signal), blobId), this.deadlineMs, where);
      await drain(res.body);
      const n = Number(header(res.headers, 'content-length') ?? NaN);
      if (!Number.isSafeInteger(n) || n < 0) throw new NydusError('HEAD answer without a valid Content-Length', EIO);
      return n;
    } catch (e) {
      if (e instanceof HttpStatusError && e.status === 404) throw new NydusError(`${where}: not found`, ENOENT);
      throw asEio(e, where);
    }
  }

  async close(): Promise<void> {
    const conn = this.conn;
    this.conn = undefined;
    if (!conn) return;
    conn.route?.close();
    await Promise.all(conn.dispatchers.map((d) => d.close().catch(() => undefined)));
  }
}
