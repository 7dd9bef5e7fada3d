/**
 * The daemon: registered images (from the API, persisted), their blob maps and backends, and the
 * resolution of the kernel's (volume, cookie) keys to bootstraps and blobs.
 */
import path from 'node:path';
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { BlobMap } from './blob-map.ts';
import { type RegistrationPool, sharedRegistrationPool } from './registration-pool.ts';
import { PlanCache } from './plan-cache.ts';
import { PlanStore } from './plan-store.ts';
import type { PrefetchOrder } from './registration.ts';
import type { RafsSuperMeta } from '../image/super-meta.ts';
import { ChunkFetcher } from './chunk-fetcher.ts';
import { type BackendMetrics, type BlobBackend, newBackendMetrics } from './backend/localfs.ts';
import { createBackend } from './backend/index.ts';
import { type ImageEntry, type EntryOrigin, ConfigError, parseBlobCacheEntry } from './config.ts';
import { NydusError } from '../../erofs/errors.ts';
import type { ObjectResolver, ResolvedObject } from './frontend/cachefiles.ts';
import type { DaemonState } from './state.ts';
import type { VerifyPool } from './verify-pool.ts';
import { Limiter } from './blob-cache.ts';
import { AccessTrace, type TraceSnapshot } from './access-trace.ts';
import { ensureDirectory } from './log.ts';
import { credentialsFromAuth } from '../registry/index.ts';

/** The runtime key nydus knows (nydus_utils::config::Keys): registry credentials, base64 of user:password. */
const REGISTRY_AUTH = 'registry_auth';

interface RegisteredImage {
  entry: ImageEntry;
  /** The PUT body as it came (what a successor daemon registers again after a takeover). */
  body: unknown;
  bootstrapSize: number;
  /** nydus's RafsSuperMeta of the bootstrap (GET /api/v1/daemon/backend). */
  superMeta: RafsSuperMeta;
  blobs: Map<string, BlobMap>;
  backend: BlobBackend;
  /** The image's own backend counters (its backend counts into its type's too). */
  backendMetrics: BackendMetrics;
  fetcher: ChunkFetcher;
  /** Per blob, the positions in its blob map to fetch ahead of reads (when prefetch is enabled), the prefetch table's `listed` first. */
  prefetch: Map<string, PrefetchOrder>;
  /** Every blob-table entry's map, by blob index (the trace's blob ordinals). */
  maps: BlobMap[];
  /** What the kernel read on demand. */
  trace: AccessTrace;
  /** Its blobs' prefetch streams (stream_prefetch), `threads` at a time. */
  streams: Limiter;
}

/** A file of an image's access trace: what its demand reads came to. */
export interface TracedFile {
  /** Its nid: the inode number the kernel shows for it. */
  nid: number;
  path: string;
  /** When its data was first read on demand (ms since the epoch; 0 for `latest`, which keeps no times). */
  firstReadMs: number;
  /** Demand reads of its chunks (a read counted once per chunk it touches). */
  reads: number;
  /** Bytes of its chunks read on demand (each chunk once). */
  bytes: number;
}

/**
 * The cache's `work_dir`: nydusd keeps an image's blob meta files there (the snapshotter gives each
 * image its own, `<root>/snapshots/<id>/fs`, apart from the cachefiles directory). nydus-ts reads chunk
 * maps from the bootstrap and keeps nothing there, but holds the entry to nydusd's rules: an absolute
 * path, made when missing, that is a directory.
 */
function prepareWorkDir(dir: string): void {
  if (!dir) return;
  checkWorkDirPath(dir);
  try {
    // A directory on a pseudo file system (/proc...) is refused before mkdir, which never returns there.
    ensureDirectory(dir, 'cache work_dir');
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
}

/** What of a work_dir can be told from its path: checked before the bootstrap is validated (seconds, for a large one). */
function checkWorkDirPath(dir: string): void {
  if (dir && !path.isAbsolute(dir)) throw new ConfigError(`cache work_dir ${JSON.stringify(dir)} must be an absolute path`);
}

export class ImageRegistry implements ObjectResolver {
  private readonly images = new Map<string, RegisteredImage>();
  /** PUT /api/v1/config values by instance id (as nydus keeps them), for images registered now or later. */
  private readonly runtimeConfig = new Map<string, Map<string, string>>();

  /** Per backend type, counters that only grow: removing an image does not take its reads back. */
  private readonly backendMetrics = new Map<string, BackendMetrics>();

  /** Registrations on their way (validated on a worker), by image id. */
  private readonly pending = new Map<string, Promise<unknown>>();

  /** Plans of bootstraps validated before (by this daemon or an earlier run of it), by content. */
  private readonly plans: PlanCache;
  private readonly planStore: PlanStore;
  /** Set by close(): a registration that finishes after it is refused (its backend would never be closed). */
  private closed = false;

  /**
   * `registration`: where bootstraps are read and validated, off this thread (by default the
   * process's shared pool; the daemon gives its own).
   */
  constructor(
    private readonly state: DaemonState, private readonly log: Logger, private readonly pool?: VerifyPool,
    private readonly registration: RegistrationPool = sharedRegistrationPool(),
  ) {
    this.planStore = new PlanStore(state.dir, log);
    this.plans = new PlanCache(this.planStore, log);
  }

  private metricsOf(type: string): BackendMetrics {
    let m = this.backendMetrics.get(type);
    if (!m) this.backendMetrics.set(type, (m = newBackendMetrics()));
    return m;
  }

  /** Re-registers what an earlier run of the daemon had (after a restart). */
  async restore(): Promise<void> {
    for (const { id, entry } of this.state.images()) {
      if (this.closed) return;
      try {
        await this.add(entry, false);
      } catch (e) {
        this.log.error({ id, err: (e as Error).message }, 'cannot restore a registered image');
      }
    }
  }

  /**
   * PUT /api/v2/blobs: validates the entry and the bootstrap before accepting it. The bootstrap is
   * read, validated and planned on a registration worker: this thread keeps serving the kernel.
   */
  async add(body: unknown, persist = true, origin: EntryOrigin = 'blob-cache'): Promise<ImageEntry> {
    const entry = parseBlobCacheEntry(body, origin);
    // A registration of the same id on its way: its outcome decides (as a second PUT after it would).
    while (this.pending.has(entry.id)) await this.pending.get(entry.id)!.catch(() => undefined);
    const known = this.images.get(entry.id);
    if (known) {
      // The snapshotter registers its images again after a restart: the same body is no error.
      if (JSON.stringify(known.body) === JSON.stringify(body)) return known.entry;
      throw new ConfigError(`image ${entry.id} is already registered with another configuration`);
    }
    const done = this.register(entry, body, persist);
    this.pending.set(entry.id, done);
    try {
      return await done;
    } finally {
      this.pending.delete(entry.id);
    }
  }

  private async register(entry: ImageEntry, body: unknown, persist: boolean): Promise<ImageEntry> {
    // The daemon's first image (none registered, no other on its way) serves nothing yet: a larger
    // bootstrap may be planned at once rather than wait for a worker to come up (RegistrationPool).
    const first = this.images.size === 0 && this.pending.size === 0;
    checkWorkDirPath(entry.workDir);
    const request = { metadataPath: entry.metadataPath, prefetch: { enable: entry.prefetch.enable, all: entry.prefetch.all } };
    const { plan, source } = await this.plans.plan(request, () => this.registration.plan(request, first));
    if (this.closed) throw new NydusError(`image ${entry.id} is not registered: the daemon is stopping`);
    prepareWorkDir(entry.workDir);
    const backendMetrics = newBackendMetrics();
    const backend = createBackend(entry.backend, [this.metricsOf(entry.backend.type), backendMetrics]);
    const auth = this.runtimeValue(entry.id, REGISTRY_AUTH);
    if (auth !== undefined) backend.updateAuth?.(auth);
    const blobs = new Map<string, BlobMap>();
    const prefetch = new Map<string, PrefetchOrder>();
    const maps: BlobMap[] = [];
    for (const b of plan.blobs) {
      const map = new BlobMap(b.id, b.index, b.uncompressedSize, b.compressor, b.digester, b.chunks);
      maps[b.index] = map;
      blobs.set(b.id, map);
      if (b.prefetch) prefetch.set(b.id, b.prefetch);
    }
    // Kept before it is served: an entry the state cannot take is not registered at all.
    if (persist) {
      try {
        this.state.saveImage(entry.id, body);
      } catch (e) {
        await backend.close();
        throw e;
      }
    }
    this.images.set(entry.id, {
      entry, body, bootstrapSize: plan.bootstrapSize, superMeta: plan.superMeta, blobs, backend, backendMetrics, prefetch, maps, trace: new AccessTrace(maps),
      streams: new Limiter(Math.max(1, entry.prefetch.threads)),
      fetcher: new ChunkFetcher(backend, (blob, chunk) => this.state.countFetch(blob, chunk), this.pool),
    });
    this.log.info({ id: entry.id, domain: entry.domainId, bootstrap: entry.metadataPath, blobs: [...blobs.keys()], plan: source }, 'image registered');
    return entry;
  }

  /**
   * DELETE /api/v2/blobs as nydus does it: every image of a domain, or one image (by fsid) of a domain
   * ('' for images registered without one). The backends' handles are closed. Returns how many went.
   */
  async remove(query: { domainId: string; id?: string }): Promise<number> {
    const gone: RegisteredImage[] = [];
    for (const [id, img] of this.images) {
      if (img.entry.domainId !== query.domainId || (query.id !== undefined && id !== query.id)) continue;
      if (query.id === undefined && query.domainId === '') continue;
      this.images.delete(id);
      this.state.deleteImage(id);
      gone.push(img);
    }
    await Promise.all(gone.map((img) => img.backend.close()));
    return gone.length;
  }

  /**
   * PUT /api/v1/config?id=: nydus's runtime keys (`registry_auth`, base64 of user:password: the
   * credentials a registry backend uses from now on, also for an image registered later that the id
   * names). The id as nydus-snapshotter sends it (configKeys): `/` for a dedicated daemon, every image
   * of it; `/<snapshot id>` for a shared one, that snapshot's image. Checked whole before any is kept.
   */
  setConfig(id: string, values: Record<string, unknown>): void {
    for (const [k, v] of Object.entries(values)) {
      if (k !== REGISTRY_AUTH) throw new ConfigError(`unknown configuration key ${JSON.stringify(k)} (known: ${REGISTRY_AUTH})`);
      if (typeof v !== 'string') throw new ConfigError(`configuration key ${k} needs a string value`);
      try {
        credentialsFromAuth(v, k);
      } catch (e) {
        throw new ConfigError((e as Error).message);
      }
    }
    for (const key of configKeys(id)) {
      const kept = this.runtimeConfig.get(key) ?? new Map<string, string>();
      for (const [k, v] of Object.entries(values)) kept.set(k, v as string);
      this.runtimeConfig.set(key, kept);
      const auth = kept.get(REGISTRY_AUTH);
      if (auth === undefined) continue;
      if (key === EVERY_IMAGE) for (const img of this.images.values()) img.backend.updateAuth?.(auth);
      else this.images.get(key)?.backend.updateAuth?.(auth);
    }
  }

  /** GET /api/v1/config?id=: the keys set for what `id` names; credentials are never shown, only that they are set. */
  configOf(id: string): Record<string, string> {
    return Object.fromEntries(configKeys(id).flatMap((key) => [...(this.runtimeConfig.get(key) ?? [])].map(([k]) => [k, '(set)'])));
  }

  /** A runtime key of image `imageId`: its own, else the one set for every image. */
  private runtimeValue(imageId: string, key: string): string | undefined {
    return this.runtimeConfig.get(imageId)?.get(key) ?? this.runtimeConfig.get(EVERY_IMAGE)?.get(key);
  }

  /**
   * Releases every backend's handles (the daemon is stopping) and closes the kept plans' store; a
   * registration on its way is refused when its plan comes.
   */
  async close(): Promise<void> {
    // (Registrations on their way are not waited for: each is refused once its plan comes, before it
    // makes a backend; a validation may take a minute, and shutdown must not.)
    this.closed = true;
    await Promise.all([...this.images.values()].map((img) => img.backend.close()));
    this.planStore.close();
  }

  /** The PUT bodies of the registered images, in registration order. */
  bodies(): unknown[] {
    return [...this.images.values()].map((i) => i.body);
  }

  /** nydus's RafsSuperMeta of a registered image's bootstrap; null for an id not registered. */
  superMetaOf(id: string): RafsSuperMeta | null {
    return this.images.get(id)?.superMeta ?? null;
  }

  /** Whether every chunk the image has of blob `blobId` is in `cached` (chunk indexes in the blob); null for a blob it lacks. */
  holdsAllChunks(id: string, blobId: string, cached: ReadonlySet<number>): boolean | null {
    const map = this.images.get(id)?.maps.find((m) => m.blobId === blobId);
    if (!map) return null;
    for (let pos = 0; pos < map.chunkCount; pos++) if (!cached.has(map.indexAt(pos))) return false;
    return true;
  }

  /** The blob ids of a registered image in its blob table order (the order of its devices). */
  blobsOf(id: string): string[] {
    return [...(this.images.get(id)?.blobs.keys() ?? [])];
  }

  list(): ImageEntry[] {
    return [...this.images.values()].map((i) => i.entry);
  }

  /**
   * The files of an image's access trace, in the order their data was first read on demand; with
   * `latest`, those read since the last such call (which starts the next period). Mapped on a
   * registration worker, from the bootstrap read again.
   */
  async tracedFiles(id: string, latest = false): Promise<TracedFile[]> {
    const img = this.images.get(id);
    if (!img) throw new ConfigError(`no image ${id} is registered`);
    const snap: TraceSnapshot = latest ? img.trace.takeRecent() : img.trace.snapshot();
    if (img.trace.dropped) this.log.warn({ id, dropped: img.trace.dropped }, 'the access trace is full: chunks first read since are not in it');
    const { owner, files } = await this.registration.traceFiles({
      metadataPath: img.entry.metadataPath, blobs: img.maps.map((m) => ({ id: m.blobId, chunkCount: m.chunkCount })), chunks: snap.chunks,
    });
    const out: TracedFile[] = files.map((f) => ({ ...f, firstReadMs: 0, reads: 0, bytes: 0 }));
    owner.forEach((f, i) => {
      if (f < 0) return;
      if (!out[f].firstReadMs) out[f].firstReadMs = snap.times[i];
      out[f].reads += snap.reads[i];
      out[f].bytes += snap.sizes[i];
    });
    return out;
  }

  /** Whether an image of this id is registered. */
  has(id: string): boolean {
    return this.images.has(id);
  }

  /** Backend counters by backend type, since the daemon started. */
  metrics(): Record<string, BackendMetrics> {
    return Object.fromEntries(this.backendMetrics);
  }

  /** The backend counters of one image (since it was registered in this process), or null when it is not registered. */
  imageMetrics(id: string): BackendMetrics | null {
    return this.images.get(id)?.backendMetrics ?? null;
  }

  resolve(volume: string, cookie: string): ResolvedObject | null {
    for (const img of this.images.values()) {
      if ((img.entry.domainId || img.entry.id) !== volume) continue;
      if (cookie === img.entry.id) return { kind: 'bootstrap', path: img.entry.metadataPath, size: img.bootstrapSize };
      const map = img.blobs.get(cookie);
      if (map) {
        const planned = img.prefetch.get(cookie);
        return {
          kind: 'blob', map, fetcher: img.fetcher, prefetch: planned ? { ...planned, config: img.entry.prefetch, streams: img.streams } : null, fill: { amplifyIo: img.entry.amplifyIo },
          trace: img.trace.blob(map.blobIndex),
        };
      }
    }
    return null;
  }
}

/** The runtime config key of every image (nydus's id `/`, the one its fscache mode builds each backend with). */
const EVERY_IMAGE = '/';

/**
 * What the id of PUT|GET /api/v1/config names, as keys of the runtime config: `/` (or none) every
 * image; `/<x>` or `<x>` the image registered as x, or the image of snapshot x as nydus-snapshotter
 * registers it with a shared daemon (its FscacheID: the sha256 of "nydus-snapshot-<x>").
 */
export function configKeys(id: string): string[] {
  const bare = id.replace(/^\//, '');
  if (bare === '') return [EVERY_IMAGE];
  return [bare, createHash('sha256').update(`nydus-snapshot-${bare}`).digest('hex')];
}
