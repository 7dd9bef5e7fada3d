/**
 * What the network backends share: their undici dispatchers (keep-alive pools with nydus's timeouts
 * and TLS settings, or through the configured proxy), a deadline on every read, the proxy's health
 * (pinged every `check_interval`) and the choice between proxy and origin (`fallback`).
 */
import fs from 'node:fs';
import tls from 'node:tls';
import type { Agent, Dispatcher, ProxyAgent } from 'undici';
import { undici } from '../../registry/undici.ts';
import { NydusError, EIO } from '../../../erofs/errors.ts';
import { ConfigError } from '../config.ts';
import type { ConnectionConfig, ProxyConfig } from './remote-config.ts';

function tlsOptions(cfg: ConnectionConfig): tls.ConnectionOptions {
  const out: tls.ConnectionOptions = { rejectUnauthorized: !cfg.skipVerify };
  if (cfg.caCertFiles.length) {
    const extra = cfg.caCertFiles.map((f) => {
      try {
        return fs.readFileSync(f, 'utf8');
      } catch (e) {
        throw new ConfigError(`ca_cert_files: ${f}: ${(e as Error).message}`);
      }
    });
    // In addition to the system's CAs, as nydus does.
    out.ca = [...tls.rootCertificates, ...extra];
  } else {
    const deferred = deferredExtraCaCerts();
    if (deferred) out.ca = [...tls.rootCertificates, deferred];
  }
  return out;
}

/**
 * NODE_EXTRA_CA_CERTS, which bin/nydusd hands over as NYDUSD_EXTRA_CA_CERTS so that node starts
 * without parsing it (bin/run.sh): added to the default CAs as node would have (and, as with node,
 * not to an explicit `ca_cert_files` list); a file that cannot be read is ignored with node's warning.
 */
function deferredExtraCaCerts(): string | undefined {
  const file = process.env.NYDUSD_EXTRA_CA_CERTS;
  if (!file) return undefined;
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    process.emitWarning(`Ignoring extra certs from \`${file}\`, load failed: ${(e as Error).message}`);
    return undefined;
  }
}

/** A keep-alive pool to the origin, with the config's connect, answer and body-silence timeouts. */
export function directDispatcher(cfg: ConnectionConfig): Agent {
  return new (undici().Agent)({
    connect: { timeout: cfg.connectTimeoutSec * 1000, ...tlsOptions(cfg) },
    headersTimeout: cfg.timeoutSec * 1000,
    bodyTimeout: cfg.timeoutSec * 1000,
    keepAliveTimeout: 30_000,
    connections: 16,
  });
}

/** Requests through the proxy: http URLs in absolute form (as Dragonfly's dfdaemon takes them), https through CONNECT. */
export function proxyDispatcher(cfg: ConnectionConfig): ProxyAgent {
  const t = tlsOptions(cfg);
  const pool = { headersTimeout: cfg.timeoutSec * 1000, bodyTimeout: cfg.timeoutSec * 1000, keepAliveTimeout: 30_000, connections: 16 };
  const { Pool } = undici();
  return new (undici().ProxyAgent)({
    uri: cfg.proxy.url,
    proxyTunnel: false,
    requestTls: t,
    proxyTls: { timeout: cfg.connectTimeoutSec * 1000, ...t },
    ...pool,
    // The pools it makes: for an http origin (absolute-form requests), undici makes its pool to the
    // proxy with nothing but the connector, so the timeouts and the bound above would not hold there
    // (a proxy that stalled was waited on for undici's 300 s, not `timeout`).
    factory: (origin, opts) => new Pool(origin, { ...opts, ...pool }),
  });
}

/**
 * The longest one read may take: every attempt may wait out its connect and answer timeouts, plus
 * backoff between attempts (capped at 5 s each). A body trickling too slowly ends here too.
 */
export function readDeadlineMs(cfg: ConnectionConfig): number {
  const attempts = cfg.retryLimit + 1;
  return attempts * (cfg.connectTimeoutSec + 2 * cfg.timeoutSec) * 1000 + cfg.retryLimit * 5_000;
}

/**
 * `work` or an EIO naming `what` once `ms` have passed. Given as a function of an AbortSignal, the work
 * is aborted at the deadline too (its request and the reading of its body end, no download goes on
 * in the background); given as a promise, it ends on its own timeouts.
 */
export async function withDeadline<T>(work: Promise<T> | ((signal: AbortSignal) => Promise<T>), ms: number, what: string): Promise<T> {
  const aborter = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const e = new NydusError(`${what}: no answer within ${Math.round(ms / 1000)} s`, EIO);
      reject(e);
      aborter.abort(e);
    }, ms);
  });
  let running: Promise<T>;
  try {
    running = typeof work === 'function' ? work(aborter.signal) : work;
  } catch (e) {
    clearTimeout(timer);
    throw e;
  }
  running.catch(() => undefined);
  try {
    return await Promise.race([running, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Any failure of a backend read as the EIO the reader gets, naming the backend and the blob. */
export function asEio(e: unknown, where: string): NydusError {
  if (e instanceof NydusError && e.errno === EIO && e.message.startsWith(where)) return e;
  return new NydusError(`${where}: ${(e as Error).message}`, EIO);
}

/** A stream whose failure is the EIO asEio makes of it. */
export async function* eioOnFailure(pieces: AsyncIterable<Buffer>, where: string): AsyncGenerator<Buffer> {
  try {
    yield* pieces;
  } catch (e) {
    throw asEio(e, where);
  }
}

/** An HTTP status of a failed request (from the registry client's errors), if any. */
function statusOf(e: unknown): number | undefined {
  const s = (e as { status?: unknown }).status;
  return typeof s === 'number' ? s : undefined;
}

/**
 * The proxy in front of an origin, as nydus's connection does it: healthy until a ping of `ping_url`
 * fails (checked every `check_interval` while there are requests); a request goes to the proxy while it
 * is healthy, and to the origin when the proxy is unhealthy, unreachable or answers >= 500, unless
 * `fallback` is off (then that is the request's error).
 */
export class ProxyRoute {
  private healthy = true;
  private lastActive = Date.now();
  private readonly timer?: NodeJS.Timeout;
  private pinging = false;
  /** Requests sent to the proxy, and those that went to the origin instead (metrics, tests). */
  viaProxy = 0;
  fellBack = 0;

  constructor(private readonly cfg: ProxyConfig, private readonly pingDispatcher: Dispatcher, connectTimeoutSec: number) {
    if (cfg.pingUrl) {
      this.timer = setInterval(() => void this.ping(connectTimeoutSec), cfg.checkIntervalSec * 1000);
      this.timer.unref();
    }
  }

  get isHealthy(): boolean {
    return this.healthy;
  }

  private async ping(connectTimeoutSec: number): Promise<void> {
    if (this.pinging || (Date.now() - this.lastActive) / 1000 > this.cfg.checkPauseElapsedSec) return;
    this.pinging = true;
    try {
      // The whole ping, body included, within its answer and body timeouts (a body dripping forever ends too).
      const signal = AbortSignal.timeout(2 * connectTimeoutSec * 1000);
      const res = await undici().request(this.cfg.pingUrl, { dispatcher: this.pingDispatcher, headersTimeout: connectTimeoutSec * 1000, bodyTimeout: connectTimeoutSec * 1000, signal });
      await res.body.dump({ limit: 128 << 10, signal });
      this.healthy = res.statusCode >= 200 && res.statusCode < 300;
    } catch {
      this.healthy = false;
    } finally {
      this.pinging = false;
    }
  }

  /** Runs `viaProxy`, or `direct` when the proxy cannot serve and fallback is allowed. */
  async run<T>(viaProxy: () => Promise<T>, direct: () => Promise<T>): Promise<T> {
    this.lastActive = Date.now();
    if (!this.healthy) {
      if (!this.cfg.fallback) throw new NydusError(`proxy ${this.cfg.url} is not healthy (${this.cfg.pingUrl} fails) and fallback is disabled`, EIO);
      this.fellBack++;
      return direct();
    }
    this.viaProxy++;
    try {
      return await viaProxy();
    } catch (e) {
      const status = statusOf(e);
      if (!this.cfg.fallback || (status !== undefined && status < 500)) throw e;
      this.fellBack++;
      return direct();
    }
  }

  /**
   * A stream the way `run` routes a read: its first piece decides (a proxy that fails before it gives
   * one falls back as `run` does); a failure after that is the stream's.
   */
  stream(viaProxy: () => AsyncIterable<Buffer>, direct: () => AsyncIterable<Buffer>): AsyncIterable<Buffer> {
    return streamFrom(() => this.run(() => firstPiece(viaProxy()), () => firstPiece(direct())));
  }

  close(): void {
    clearInterval(this.timer);
  }
}

type Started = { it: AsyncIterator<Buffer>; first: IteratorResult<Buffer> };

async function firstPiece(pieces: AsyncIterable<Buffer>): Promise<Started> {
  const it = pieces[Symbol.asyncIterator]();
  return { it, first: await it.next() };
}

/** The pieces of a stream whose first one `start` waited for. */
async function* streamFrom(start: () => Promise<Started>): AsyncGenerator<Buffer> {
  const { it, first } = await start();
  let done = false;
  try {
    for (let r = first; !r.done; r = await it.next()) yield r.value;
    done = true;
  } finally {
    // Left early (its taker stopped): the request ends.
    if (!done) await it.return?.();
  }
}
