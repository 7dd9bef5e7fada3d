/**
 * The HTTP API on a unix socket, with Nydus's paths and bodies (nydus api/src/http.rs; the calls
 * nydus-snapshotter makes, pkg/daemon/client.go):
 *   GET|PUT /api/v1/daemon, PUT /api/v1/daemon/{fuse/sendfd,fuse/takeover,start,exit}, GET /api/v1/daemon/backend,
 *   PUT|GET|DELETE /api/v2/blobs, GET /api/v1/metrics{,/backend,/blobcache,/inflight,/files,/pattern},
 *   GET|PUT /api/v1/config; POST|DELETE /api/v1/mount (fanotify mode; PUT, nydusd's remount, is refused);
 * and GET /api/v1/metrics/prometheus: every metric in Prometheus' text format (prometheus.ts).
 * Errors are JSON {code, message}: 400 for bad requests and for a request the daemon's state refuses,
 * 501 for what this daemon does not do (nydus's Unsupported: a mount asked of a daemon in fscache
 * mode, a remount), 404 for unknown paths and for metrics of an image that is not there (nydus's
 * NoCounter), 500 for the rest, a mount or umount that fails too (nydusd's MountFilesystem errors:
 * a mountpoint, bootstrap or config the mount refuses, a path not mounted).
 */
import http from 'node:http';
import path from 'node:path';
import type { Logger } from 'pino';
import { NydusError } from '../../erofs/errors.ts';
import { ConfigError, type ImageEntry, absolutePathField, obj, parseConfigText, parseJsonText, str } from './config.ts';
import type { ImageRegistry } from './daemon.ts';
import type { DaemonState } from './state.ts';
import { type DaemonLifecycle, StateError } from './lifecycle.ts';
import { BUILD_INFO } from '../version.ts';
import { prometheusText } from './prometheus.ts';
import { sumBackendMetrics } from './backend/metrics.ts';
import { errorEvents } from './error-events.ts';
import { API_MAX_CONNECTIONS, listenOwnerOnly } from './unix-socket.ts';
import type { FanotifySession } from './frontend/fanotify.ts';

export interface ApiContext {
  id: string;
  registry: ImageRegistry;
  state: DaemonState;
  /** The daemon's lifecycle; null where the API runs without one (tests of registration alone). */
  lifecycle: Pick<DaemonLifecycle, 'state' | 'currentSession' | 'takeover' | 'start' | 'sendfd' | 'cull'> | null;
  /** The supervisor socket (--supervisor), reported in GET /api/v1/daemon. */
  supervisor?: string;
  /** The fanotify front end's mounts (POST|DELETE /api/v1/mount); absent in fscache mode. */
  mounts?: Pick<FanotifySession, 'mount' | 'umount' | 'list' | 'stats' | 'imageIdOf' | 'served'>;
  /** PUT /api/v1/daemon/exit: called once the answer is sent. */
  exit?: () => void;
  log: Logger;
}

/** nydusd's log levels (Rust's log::LevelFilter, any case), as pino names them: `off` is pino's `silent`. */
const LOG_LEVELS = new Map([['trace', 'trace'], ['debug', 'debug'], ['info', 'info'], ['warn', 'warn'], ['error', 'error'], ['off', 'silent']]);
/** The file operations nydus counts (its StatsFop, in order): the length of the fop arrays of its metrics. */
const STATS_FOPS = 15;
/** Read's place among them. */
const STATS_FOP_READ = 4;
const KNOWN_PATHS = new Set([
  '/api/v1/daemon', '/api/v1/daemon/events', '/api/v1/daemon/fuse/sendfd', '/api/v1/daemon/fuse/takeover', '/api/v1/daemon/start', '/api/v1/daemon/exit',
  '/api/v2/blobs', '/api/v2/daemon', '/api/v1/metrics', '/api/v1/metrics/backend', '/api/v1/metrics/blobcache', '/api/v1/metrics/inflight', '/api/v1/config', '/api/v1/metrics/prometheus', '/api/v1/mount', '/api/v1/daemon/backend',
  '/api/v1/metrics/files', '/api/v1/metrics/pattern',
]);
/** cachefiles' READ opcode, as GET /api/v1/metrics/inflight reports it. */
const CACHEFILES_OP_READ = 2;

const MAX_BODY = 1 << 20;
/**
 * What of a body over MAX_BODY is still read (and dropped) after its refusal, and for how long: a
 * client still writing it, or the supervisor's relay, whose write then failed with EPIPE, lost the
 * answer when the connection closed at once ("socket hang up" through the relay, 13 times in 20).
 */
const REFUSED_BODY_DRAIN_BYTES = 16 << 20;
const REFUSED_BODY_DRAIN_MS = 5_000;

/** Metrics asked of an image that is not there: 404, as nydus answers MetricsError::NoCounter. */
class NoCounterError extends Error {}

/** What this daemon does not do: 501, as nydus answers ApiError's Unsupported (a fusedev-only request in fscache mode). */
class UnsupportedError extends Error {}

/**
 * The image an `id` of the metrics paths names (nydus's `id`): an image id of PUT /api/v2/blobs, the
 * same with a leading slash (nydus-snapshotter asks a shared daemon for `/<id>`), or a fanotify
 * mountpoint. Any other id is a 404 naming it: never another image's figures, nor the daemon's.
 */
function imageOf(ctx: ApiContext, id: string): ImageEntry {
  const mounted = ctx.mounts?.imageIdOf(id);
  const images = ctx.registry.list();
  const found = images.find((e) => e.id === mounted) ?? images.find((e) => e.id === id.replace(/^\//, ''));
  if (!found) throw new NoCounterError(`no image ${JSON.stringify(id)}: give an image id of PUT /api/v2/blobs or a mountpoint`);
  return found;
}

/**
 * The image metrics are asked of: the one `id` names; without one, the only image there is (as nydus
 * does with one file system), of a mount where the daemon mounts (an unmounted image stays registered
 * while a cache file another mount shares runs on it).
 */
function metricsImage(ctx: ApiContext, id: string | null): ImageEntry {
  if (id) return imageOf(ctx, id);
  const mounted = ctx.mounts ? new Set(ctx.mounts.served().map((m) => m.imageId)) : null;
  const images = ctx.registry.list().filter((e) => !mounted || mounted.has(e.id));
  if (images.length === 1) return images[0];
  throw new NoCounterError(`${images.length} images are registered: say which with ?id=`);
}

/** nydus's `latest` read files: inode numbers sorted, consecutive ones as [first, last], others as [ino]. */
function inodeRanges(nids: number[]): number[][] {
  const out: number[][] = [];
  for (const n of [...new Set(nids)].sort((a, b) => a - b)) {
    const last = out[out.length - 1];
    if (last && last[last.length - 1] === n - 1) last.splice(1, 1, n);
    else out.push([n]);
  }
  return out;
}

/** The cache-file keys an image's blobs are kept under: its fscache volume, or (fanotify) its cache work_dir. */
function imageVolumes(image: ImageEntry): Set<string> {
  const vols = new Set([`erofs,${image.domainId || image.id}`]);
  if (image.workDir) vols.add(`fanotify,${path.dirname(path.join(image.workDir, 'blob'))}`);
  return vols;
}

/** A blob's cache files (those under `volumes` only, when given): what each holds, their union, and the blob's fetches. */
function blobCache(ctx: ApiContext, blob: string, volumes: Set<string> | null) {
  const files = ctx.state.cacheFilesOf(blob).filter(({ volume }) => !volumes || volumes.has(volume)).map(({ volume }) => {
    const cached = [...ctx.state.cached({ volume, cookie: blob })].sort((a, b) => a - b);
    return { volume, cached_chunks: cached.length, cached };
  });
  const union = [...new Set(files.flatMap((f) => f.cached))].sort((a, b) => a - b);
  return { blob_id: blob, cached_chunks: union.length, cached: union, cache_files: files, fetches: ctx.state.fetches(blob) };
}

/**
 * nydus's CacheMetrics keys, which the snapshotter decodes. The prefetch counters nydus-ts keeps are
 * the daemon's (GET /api/v1/daemon, `ondemand` or `fanotify`): none is given here as a blob's or an
 * image's. `data_all_ready` is the caller's to say (every chunk of the image cached).
 * `underlying_files`: the cache files' names, `<blob id>.blob.data` as nydus's fscache manager gives
 * them. The snapshotter's blob cache GC takes the blob ids in use from them, and skips its whole round
 * while any image of the daemon gives none (its usage unknown): an empty list would stop the GC for good.
 */
function cacheMetricsKeys(id: string, entries: number, blobs: readonly string[], storePath: string) {
  return {
    id, underlying_files: blobs.map((b) => `${b}.blob.data`), store_path: storePath, partial_hits: 0, whole_hits: 0, total: 0, entries_count: entries,
    prefetch_data_amount: 0, prefetch_requests_count: 0, prefetch_workers: 0, prefetch_unmerged_chunks: 0,
    prefetch_cumulative_time_millis: 0, prefetch_begin_time_secs: 0, prefetch_begin_time_millis: 0, prefetch_end_time_secs: 0,
    prefetch_end_time_millis: 0, buffered_backend_size: 0, data_all_ready: false,
  };
}

/** A time as nydus's DaemonInfo gives it (the `time` crate's human-readable OffsetDateTime): `2026-11-27 04:01:02.123000000 +00:00:00`. */
function nydusTime(t: Date): string {
  return `${t.toISOString().replace('T', ' ').replace(/\.(\d{3})Z$/, '.$1000000')} +00:00:00`;
}

/**
 * DaemonInfo's `backend_collection` as nydusd fills it: null in fscache mode (nydusd's fscache daemon
 * has no file system service), and per fanotify mount (nydusd's FUSE mounts) a FsBackendDescriptor:
 * `backend_type` "Rafs", `mountpoint`, `mounted_time`, `config` (nydus's ConfigV2, which upstream
 * nydusctl reads: the cache's prefetch, the file system's mode). Upstream nydusctl's `info` unwraps
 * each of these, so no other shape may stand there; our per-image backends are under `images`.
 */
function backendCollection(ctx: ApiContext): Record<string, unknown> | null {
  if (!ctx.mounts) return null;
  const images = new Map(ctx.registry.list().map((e) => [e.id, e]));
  return Object.fromEntries(ctx.mounts.served().flatMap(({ mountpoint, imageId, since }) => {
    const e = images.get(imageId);
    if (!e) return [];
    const prefetch = { enable: e.prefetch.enable, threads: e.prefetch.threads, batch_size: e.prefetch.batchSize, bandwidth_limit: e.prefetch.bandwidthLimit, prefetch_all: e.prefetch.all };
    return [[mountpoint, {
      backend_type: 'Rafs', mountpoint, mounted_time: nydusTime(since),
      // The backend by its type alone: its fields under nydus's names are the user's config, and its credentials stay here.
      config: { version: 2, id: e.id, backend: { type: e.backend.type }, cache: { type: 'fscache', fscache: { work_dir: e.workDir }, prefetch }, rafs: { mode: 'direct', batch_size: e.amplifyIo, prefetch } },
    }]];
  }));
}

function send(res: http.ServerResponse, status: number, body?: unknown): void {
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

async function readBody(req: http.IncomingMessage): Promise<unknown> {
  let size = 0;
  const parts: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY) {
        parts.push(chunk);
        return;
      }
      req.off('data', onData);
      drainRefusedBody(req);
      reject(new ConfigError('request body is too large'));
    };
    req.on('data', onData);
    req.once('end', () => resolve());
    req.on('error', reject);
    req.once('close', () => reject(new ConfigError('request body ended early: the connection closed')));
  });
  try {
    return parseJsonText(Buffer.concat(parts).toString('utf8'), 'request body');
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError(`request body is not valid JSON: ${(e as Error).message}`);
  }
}

/**
 * The rest of a refused body read and dropped while its refusal is answered, then the connection
 * closed once REFUSED_BODY_DRAIN_BYTES more came or REFUSED_BODY_DRAIN_MS passed (an endless body).
 */
function drainRefusedBody(req: http.IncomingMessage): void {
  let left = REFUSED_BODY_DRAIN_BYTES;
  const stop = () => req.socket.destroy();
  const timer = setTimeout(stop, REFUSED_BODY_DRAIN_MS);
  timer.unref();
  req.on('data', (chunk: Buffer) => {
    left -= chunk.length;
    if (left < 0) stop();
  });
  req.once('close', () => clearTimeout(timer));
}

function need(ctx: ApiContext): NonNullable<ApiContext['lifecycle']> {
  // (A daemon in fanotify mode: its images come and go with their mounts, its cache files with its work_dirs.)
  if (!ctx.lifecycle) throw new StateError(`this API is fscache mode's (/dev/cachefiles: takeover, start, sendfd, culling a blob's cache files); this daemon ${ctx.mounts ? 'runs in fanotify mode: mounts come and go with POST and DELETE /api/v1/mount' : 'has no daemon lifecycle'}`);
  return ctx.lifecycle;
}

/**
 * A request's headers, and the whole request (its body), must arrive within these: a client that
 * starts one and stalls holds its connection no longer. A connection that has sent nothing yet is
 * never timed out (nydus-snapshotter watches the daemon's life through an idle connection it never
 * writes to, and takes its closing for the daemon's death), and the time the daemon takes to answer
 * is not bounded (a mount registers a whole image).
 */
const API_HEADERS_TIMEOUT_MS = 60_000;
const API_REQUEST_TIMEOUT_MS = 300_000;

/**
 * The request target's path and query: origin-form (`/path?query`), or absolute-form (`http://host/path`,
 * which HTTP/1.1 servers take too). Anything else (`//%%%/`, `*`, a path with a broken %-escape) is a
 * 400 naming it.
 */
function requestUrl(target: string | undefined): URL {
  const t = target ?? '/';
  let url: URL | undefined;
  try {
    // An origin-form target is a path under a base of ours, never a URL of its own (`//host/...` names a host).
    if (t.startsWith('/')) url = new URL(`http://nydusd${t}`);
    else if (/^https?:\/\//i.test(t)) url = new URL(t);
    if (url) decodeURIComponent(url.pathname);
  } catch {
    url = undefined;
  }
  if (!url) throw new ConfigError(`BadRequest: the request target ${JSON.stringify(t.slice(0, 200))} is not a valid path`);
  return url;
}

export function startApi(sock: string, ctx: ApiContext): Promise<http.Server> {
  const server = http.createServer({ requestTimeout: API_REQUEST_TIMEOUT_MS, headersTimeout: API_HEADERS_TIMEOUT_MS }, (req, res) => {
    // Nothing a request holds may throw out of here: an exception or a rejection would end the worker.
    handle(req, res).catch((e) => {
      ctx.log.error({ err: (e as Error)?.message }, 'API request failed unexpectedly');
      res.destroy();
    });
  });
  server.maxConnections = API_MAX_CONNECTIONS;
  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    let route = `${req.method} ${(req.url ?? '').slice(0, 200)}`;
    try {
      const url = requestUrl(req.url);
      route = `${req.method} ${url.pathname}`;
      switch (route) {
        case 'GET /api/v1/daemon':
        case 'GET /api/v2/daemon': {
          const session = ctx.lifecycle?.currentSession ?? null;
          return send(res, 200, {
            id: ctx.id || null, version: BUILD_INFO, supervisor: ctx.supervisor ?? null, state: ctx.lifecycle?.state ?? 'RUNNING', pid: process.pid,
            // nydusd's v2 info is its v1 info without the file systems.
            backend_collection: route === 'GET /api/v2/daemon' ? null : backendCollection(ctx),
            images: Object.fromEntries(ctx.registry.list().map((e) => [e.id, { backend_type: e.backend.type }])),
            ondemand: session ? session.stats : null,
            fanotify: ctx.mounts ? { mounts: ctx.mounts.list(), ...ctx.mounts.stats } : null,
          });
        }
        case 'GET /api/v1/daemon/events':
          // nydusd's ErrorHolder: the backend reads that failed, latest last.
          return send(res, 200, errorEvents);
        case 'PUT /api/v1/daemon':
        case 'PUT /api/v2/daemon': {
          const body = await readBody(req) as { log_level?: unknown };
          const level = typeof body?.log_level === 'string' ? body.log_level.toLowerCase() : '';
          const pinoLevel = LOG_LEVELS.get(level);
          if (!pinoLevel) throw new ConfigError(`log_level must be one of ${[...LOG_LEVELS.keys()].join(', ')}`);
          ctx.log.level = pinoLevel;
          return send(res, 204);
        }
        case 'PUT /api/v1/daemon/fuse/sendfd':
          await need(ctx).sendfd();
          return send(res, 204);
        case 'PUT /api/v1/daemon/fuse/takeover':
          await need(ctx).takeover();
          return send(res, 204);
        case 'PUT /api/v1/daemon/start':
          need(ctx).start();
          return send(res, 204);
        case 'PUT /api/v1/daemon/exit':
          if (!ctx.exit) throw new StateError('this daemon cannot be stopped through the API');
          res.once('finish', ctx.exit);
          return send(res, 204);
        case 'GET /api/v1/metrics': {
          // The session's counters are the whole daemon's: asked of one image, they are refused (404,
          // nydus's NoCounter), never given as its own.
          const id = url.searchParams.get('id');
          if (id) {
            const image = imageOf(ctx, id);
            throw new NoCounterError(`no file system counters of image ${JSON.stringify(id)}: nydus-ts counts the kernel's reads per daemon (GET /api/v1/metrics without id); the image's own reads are in GET /api/v1/metrics/files?id=${image.id}`);
          }
          // The bytes the kernel asked the daemon for: fscache's READs, fanotify's events (reads of
          // what the cache files held already never reach the daemon in either mode).
          const stats = ctx.lifecycle?.currentSession?.stats;
          return send(res, 200, {
            files_account_enabled: true, access_pattern_enabled: true, record_latest_read_files_enabled: true, measure_latency: false,
            id: '', data_read: stats?.readBytes ?? ctx.mounts?.stats.eventBytes ?? 0, block_count_read: new Array(8).fill(0),
            fop_hits: new Array(STATS_FOPS).fill(0), fop_errors: new Array(STATS_FOPS).fill(0), fop_cumulative_latency_total: new Array(STATS_FOPS).fill(0),
            read_latency_dist: new Array(8).fill(0), nr_opens: stats?.opens ?? 0,
          });
        }
        case 'GET /api/v1/metrics/files': {
          // nydus: ino -> its counters, or with latest=true the inodes read since the last such call.
          const latest = url.searchParams.get('latest') === 'true';
          const files = await ctx.registry.tracedFiles(metricsImage(ctx, url.searchParams.get('id')).id, latest);
          if (latest) return send(res, 200, inodeRanges(files.map((f) => f.nid)));
          // (nydus's InodeIoStats; ours counts reads and their bytes, the rest is zeros.)
          return send(res, 200, Object.fromEntries(files.map((f) => [f.nid, {
            total_fops: f.reads, data_read: f.bytes, block_count_read: new Array(8).fill(0),
            fop_hits: Array.from({ length: STATS_FOPS }, (_, i) => (i === STATS_FOP_READ ? f.reads : 0)), fop_errors: new Array(STATS_FOPS).fill(0), path: f.path,
          }])));
        }
        case 'GET /api/v1/metrics/pattern': {
          // nydus's AccessPattern records, in the order of first access, with the path beside the inode.
          const files = await ctx.registry.tracedFiles(metricsImage(ctx, url.searchParams.get('id')).id);
          return send(res, 200, files.map((f) => ({
            ino: f.nid, nr_read: f.reads, first_access_time_secs: Math.floor(f.firstReadMs / 1000),
            first_access_time_nanos: (f.firstReadMs % 1000) * 1_000_000, path: f.path,
          })));
        }
        case 'GET /api/v1/metrics/inflight': {
          const reads = ctx.lifecycle?.currentSession?.inflight() ?? [];
          if (reads.length === 0) return send(res, 204);
          return send(res, 200, reads.map((r) => ({
            inode: r.objectId, opcode: CACHEFILES_OP_READ, unique: r.msgId, timestamp_secs: Math.floor(r.since / 1000),
          })));
        }
        case 'POST /api/v1/mount': {
          const { mountpoint, mounts } = mountTarget(url, ctx);
          const cmd = mountCmdOf(await readBody(req));
          await carriedOut(async () => {
            absolutePathField(mountpoint, "query parameter 'mountpoint'");
            await mounts.mount({ mountpoint, ...mountRequestOf(cmd) });
          });
          return send(res, 204);
        }
        case 'GET /api/v1/daemon/backend': {
          // nydusd's FsBackendInfo: the RAFS superblock of the file system mounted there.
          const { mountpoint, mounts } = mountTarget(url, ctx);
          const id = mounts.imageIdOf(mountpoint);
          const meta = id === undefined ? null : ctx.registry.superMetaOf(id);
          if (!meta) throw new NoCounterError(`no file system is mounted at ${JSON.stringify(mountpoint)} by this daemon`);
          return send(res, 200, meta);
        }
        case 'PUT /api/v1/mount':
          // nydusd's remount: a FUSE file system it serves takes a new bootstrap in place. A kernel
          // EROFS mount keeps the bootstrap it was mounted with, and its open files read it.
          throw new UnsupportedError('PUT /api/v1/mount (remount with a new bootstrap) is not supported: a kernel EROFS mount keeps its bootstrap; unmount (DELETE) and mount (POST) instead');
        case 'DELETE /api/v1/mount': {
          const { mountpoint, mounts } = mountTarget(url, ctx);
          await carriedOut(() => mounts.umount(mountpoint));
          return send(res, 204);
        }
        case 'GET /api/v1/config':
          return send(res, 200, ctx.registry.configOf(url.searchParams.get('id') ?? ''));
        case 'PUT /api/v1/config': {
          const body = await readBody(req);
          if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ConfigError('the body must be a JSON object of string values');
          ctx.registry.setConfig(url.searchParams.get('id') ?? '', body as Record<string, unknown>);
          return send(res, 204);
        }
        case 'PUT /api/v2/blobs': {
          await ctx.registry.add(await readBody(req));
          return send(res, 204);
        }
        case 'GET /api/v2/blobs':
          return send(res, 200, ctx.registry.list());
        case 'DELETE /api/v2/blobs': {
          // As nydus (and the snapshotter's umount relies on it): `domain_id` alone removes that
          // domain's images and never fails; with `blob_id`, that one image, and a missing one is
          // "cache entry not found"; `blob_id` alone culls the blob's cache files.
          const blobId = url.searchParams.get('blob_id') ?? undefined;
          const domainId = url.searchParams.get('domain_id');
          if (domainId === null && blobId === undefined) throw new ConfigError('DELETE /api/v2/blobs needs domain_id, blob_id or both');
          if (domainId === null) {
            await need(ctx).cull(blobId!);
            return send(res, 204);
          }
          const n = await ctx.registry.remove({ domainId, id: blobId });
          if (n === 0 && blobId !== undefined) throw new NydusError(`blob_cache: cache entry not found: no image ${blobId} in domain ${JSON.stringify(domainId)}`);
          return send(res, 204);
        }
        case 'GET /api/v1/metrics/backend': {
          // nydus's `id`: the counters of one image's backend (its reads since it was registered here);
          // `/` is the id of nydusd's own backend in fscache mode: the daemon's.
          const id = url.searchParams.get('id');
          if (id && id !== '/') {
            const image = imageOf(ctx, id);
            const m = ctx.registry.imageMetrics(image.id);
            if (!m) throw new NoCounterError(`image ${JSON.stringify(id)} is not registered`);
            return send(res, 200, { id: image.id, backend_type: image.backend.type, ...m });
          }
          // The daemon's counters, in nydus's BackendMetrics shape (what nydus gives when it has one
          // backend), its backend types named; then per backend type the same counters.
          const backends = ctx.registry.metrics();
          return send(res, 200, { backend_type: Object.keys(backends).sort().join(','), ...sumBackendMetrics(Object.values(backends)), backends });
        }
        case 'GET /api/v1/metrics/prometheus': {
          const session = ctx.lifecycle?.currentSession;
          const text = prometheusText({ backends: ctx.registry.metrics(), session: session?.stats, images: ctx.registry.list().length, inflight: session?.inflight().length ?? 0 });
          res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8', 'content-length': Buffer.byteLength(text) }).end(text);
          return;
        }
        case 'GET /api/v1/metrics/blobcache': {
          // nydus's `id` names the image (its blobs' cache files), ours `blob_id` one blob (of that
          // image when both are given); neither: the only image there is, as nydus answers.
          const blob = url.searchParams.get('blob_id');
          const id = url.searchParams.get('id');
          if (blob !== null && !/^[0-9a-f]{64}$/.test(blob)) throw new ConfigError(`invalid blob_id ${JSON.stringify(blob)}: a blob id is 64 lowercase hex digits`);
          if (blob && !id) {
            // A blob the daemon never saw has what its figures say: no cached chunk, no fetch (a
            // snapshot before an image that has it is registered).
            const one = blobCache(ctx, blob, null);
            return send(res, 200, { ...cacheMetricsKeys(blob, one.cached_chunks, [blob], ''), ...one });
          }
          const image = id ? imageOf(ctx, id) : metricsImage(ctx, null);
          const blobs = ctx.registry.blobsOf(image.id);
          if (blob && !blobs.includes(blob)) throw new NoCounterError(`image ${JSON.stringify(id)} has no blob ${JSON.stringify(blob)} (its blobs: ${blobs.join(', ')})`);
          const volumes = imageVolumes(image);
          if (blob) {
            const one = blobCache(ctx, blob, volumes);
            const ready = ctx.registry.holdsAllChunks(image.id, blob, new Set(one.cached)) === true;
            return send(res, 200, { ...cacheMetricsKeys(blob, one.cached_chunks, [blob], image.workDir), data_all_ready: ready, image_id: image.id, ...one });
          }
          const each = blobs.map((b) => blobCache(ctx, b, volumes));
          // nydus's data_all_ready: every chunk of the image is in its cache files.
          const ready = each.every((b) => ctx.registry.holdsAllChunks(image.id, b.blob_id, new Set(b.cached)) === true);
          return send(res, 200, {
            ...cacheMetricsKeys(id ?? image.id, each.reduce((n, b) => n + b.cached_chunks, 0), blobs, image.workDir), data_all_ready: ready, image_id: image.id, blobs: each,
          });
        }
        default:
          // nydus's answers: a known path with another method is a bad request, anything else no route.
          if (KNOWN_PATHS.has(url.pathname)) return send(res, 400, { code: 'UNDEFINED', message: `BadRequest: ${req.method} is not served at ${url.pathname}` });
          return send(res, 404, { code: 'UNDEFINED', message: `NoRoute: no API at ${url.pathname}` });
      }
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      const status = err instanceof NoCounterError ? 404 : err instanceof UnsupportedError ? 501 : err instanceof ConfigError || err instanceof StateError ? 400 : 500;
      ctx.log.warn({ route, err: err.message }, 'API request failed');
      // Answered already (a failure after the headers went), or the client is gone: nothing to say.
      if (res.headersSent || res.destroyed) {
        res.destroy();
        return;
      }
      // nydus's error body: the code is always UNDEFINED, the message says what went wrong.
      return send(res, status, { code: 'UNDEFINED', message: err.message });
    }
  };
  return listenOwnerOnly(server, sock);
}

/**
 * The mountpoint a request of /api/v1/mount or /api/v1/daemon/backend names (nydus's `mountpoint`
 * query parameter), and the daemon's own mounts (fanotify mode; a daemon in fscache mode has none).
 */
function mountTarget(url: URL, ctx: ApiContext): { mountpoint: string; mounts: NonNullable<ApiContext['mounts']> } {
  const mountpoint = url.searchParams.get('mountpoint');
  if (!mountpoint) throw new ConfigError("'mountpoint' should be specified in query string");
  if (!ctx.mounts) throw new UnsupportedError('this daemon mounts nothing itself (fscache mode: mount -t erofs -o fsid=...); start it with --fanotify');
  return { mountpoint, mounts: ctx.mounts };
}

/**
 * A request nydusd could parse but not carry out is its 500 (translate_status_code: a mount or umount
 * that fails is ApiError::MountFilesystem), not a bad request: what the mount itself refuses (the
 * mountpoint, the bootstrap, the config text, a path not mounted) is answered so.
 */
class NotCarriedOutError extends Error {}

async function carriedOut<T>(work: () => T | Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (e) {
    if (e instanceof ConfigError) throw new NotCarriedOutError(e.message);
    throw e;
  }
}

/** nydus's ApiMountCmd as its HTTP layer parses it (a body of another shape is a 400): `source`, `fs_type`, `config`, `prefetch_files`. */
interface MountCmd {
  source: string;
  fsType: string;
  config: string;
  prefetchFiles: unknown;
}

function mountCmdOf(body: unknown): MountCmd {
  const b = obj(body, 'body');
  return { source: str(b, 'source', 'body'), fsType: str(b, 'fs_type', 'body', false), config: str(b, 'config', 'body'), prefetchFiles: b.prefetch_files };
}

/** What the mount takes of the command: the bootstrap (an absolute path), the config (JSON or TOML text); fs_type "rafs". */
function mountRequestOf(cmd: MountCmd): { bootstrap: string; config: unknown } {
  absolutePathField(cmd.source, 'body.source (the bootstrap)');
  if (cmd.fsType && cmd.fsType !== 'rafs') throw new UnsupportedError(`body.fs_type ${JSON.stringify(cmd.fsType)} is not supported (rafs)`);
  if (Array.isArray(cmd.prefetchFiles) && cmd.prefetchFiles.length) throw new UnsupportedError('body.prefetch_files is not supported; use the config\'s prefetch settings');
  return { bootstrap: cmd.source, config: parseConfigText(cmd.config, 'body.config') };
}
