/**
 * The daemon: registered images (from the API, persisted), their blob maps and backends, and the
 * resolution of the kernel's (volume, cookie) keys to bootstraps and blobs.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { openImage } from '../image/open.ts';
import type { ValidatedImage } from '../image/validate.ts';
import type { ChunkRef } from '../builder/tree.ts';
import { BlobMap } from './blob-map.ts';
import { ChunkFetcher } from './chunk-fetcher.ts';
import { type BackendMetrics, type BlobBackend, newBackendMetrics } from './backend/localfs.ts';
import { createBackend } from './backend/index.ts';
import { type ImageEntry, ConfigError, parseBlobCacheEntry } from './config.ts';
import type { ObjectResolver, ResolvedObject } from './frontend/cachefiles.ts';
import type { DaemonState } from './state.ts';
import type { VerifyPool } from './verify-pool.ts';

interface RegisteredImage {
  entry: ImageEntry;
  /** The PUT body as it came (what a successor daemon registers again after a takeover). */
  body: unknown;
  bootstrapSize: number;
  blobs: Map<string, BlobMap>;
  backend: BlobBackend;
  fetcher: ChunkFetcher;
  /** Per blob, the chunks to fetch ahead of reads (when prefetch is enabled). */
  prefetch: Map<string, ChunkRef[]>;
}

/**
 * What to prefetch: the chunks of the files the bootstrap's prefetch table lists (directories with
 * everything below them), in that order; without a prefetch table, or with `all`, the whole blob
 * (after those files).
 */
function prefetchChunks(image: ValidatedImage, blobs: Map<string, BlobMap>, all: boolean): Map<string, ChunkRef[]> {
  const listed = prefetchTableChunks(image);
  if (!all && listed) return listed;
  const out = new Map<string, ChunkRef[]>();
  for (const [id, map] of blobs) {
    const first = listed?.get(id) ?? [];
    const seen = new Set(first.map((c) => c.indexInBlob));
    out.set(id, [...first, ...map.all().filter((c) => !seen.has(c.indexInBlob))]);
  }
  return out;
}

/** The chunks of the prefetch table's files, per blob in table order; null without a table. */
function prefetchTableChunks(image: ValidatedImage): Map<string, ChunkRef[]> | null {
  const out = new Map<string, ChunkRef[]>();
  if (image.image.prefetchTable().length === 0) return null;
  // Over the decoded-once inodes: each inode (a hardlink or a directory named twice in the table)
  // is visited once, so the walk costs at most the image's own size.
  const visited = new Set<number>();
  const seen = new Set<ChunkRef>();
  for (const start of image.prefetchNids) {
    const stack = [start];
    while (stack.length) {
      const nid = stack.pop()!;
      if (visited.has(nid)) continue;
      visited.add(nid);
      const v = image.inodes.get(nid)!;
      for (let i = (v.entries?.length ?? 0) - 1; i >= 0; i--) stack.push(v.entries![i].nid);
      for (const c of v.chunks ?? []) {
        if (!c || seen.has(c)) continue;
        seen.add(c);
        const id = image.blobs[c.blobIndex].id;
        if (!out.has(id)) out.set(id, []);
        out.get(id)!.push(c);
      }
    }
  }
  return out;
}

/**
 * The cache's `work_dir`: nydusd keeps an image's blob meta files there (the snapshotter gives each
 * image its own, `<root>/snapshots/<id>/fs`, apart from the cachefiles directory). nydus-ts reads chunk
 * maps from the bootstrap and keeps nothing there, but holds the entry to nydusd's rules: an absolute
 * path, made when missing, that is a directory.
 */
function prepareWorkDir(dir: string): void {
  if (!dir) return;
  if (!path.isAbsolute(dir)) throw new ConfigError(`cache work_dir ${JSON.stringify(dir)} must be an absolute path`);
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new ConfigError(`cache work_dir ${dir} cannot be made: ${(e as Error).message}`);
  }
  if (!fs.statSync(dir).isDirectory()) throw new ConfigError(`cache work_dir ${dir} is not a directory`);
}

export class ImageRegistry implements ObjectResolver {
  private readonly images = new Map<string, RegisteredImage>();

  /** Per backend type, counters that only grow: removing an image does not take its reads back. */
  private readonly backendMetrics = new Map<string, BackendMetrics>();

  constructor(private readonly state: DaemonState, private readonly log: Logger, private readonly pool?: VerifyPool) {}

  private metricsOf(type: string): BackendMetrics {
    let m = this.backendMetrics.get(type);
    if (!m) this.backendMetrics.set(type, (m = newBackendMetrics()));
    return m;
  }

  /** Re-registers what an earlier run of the daemon had (after a restart). */
  restore(): void {
    for (const { id, entry } of this.state.images()) {
      try {
        this.add(entry, false);
      } catch (e) {
        this.log.error({ id, err: (e as Error).message }, 'cannot restore a registered image');
      }
    }
  }

  /** PUT /api/v2/blobs: validates the entry and the bootstrap before accepting it. */
  add(body: unknown, persist = true): ImageEntry {
    const entry = parseBlobCacheEntry(body);
    const known = this.images.get(entry.id);
    if (known) {
      // The snapshotter registers its images again after a restart: the same body is no error.
      if (JSON.stringify(known.body) === JSON.stringify(body)) return known.entry;
      throw new ConfigError(`image ${entry.id} is already registered with another configuration`);
    }
    // The same validation gate as check: blob ids, chunk ranges and sizes, every inode once.
    const { image } = openImage(entry.metadataPath);
    const blobs = BlobMap.fromImage(image);
    prepareWorkDir(entry.workDir);
    const backend = createBackend(entry.backend, this.metricsOf(entry.backend.type));
    this.images.set(entry.id, {
      entry, body, bootstrapSize: fs.statSync(entry.metadataPath).size, blobs, backend,
      prefetch: entry.prefetch.enable ? prefetchChunks(image, blobs, entry.prefetch.all) : new Map(), fetcher: new ChunkFetcher(backend, (blob, chunk) => this.state.countFetch(blob, chunk), this.pool),
    });
    if (persist) this.state.saveImage(entry.id, body);
    this.log.info({ id: entry.id, domain: entry.domainId, bootstrap: entry.metadataPath, blobs: [...blobs.keys()] }, 'image registered');
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

  /** Releases every backend's handles (the daemon is stopping). */
  async close(): Promise<void> {
    await Promise.all([...this.images.values()].map((img) => img.backend.close()));
  }

  /** The PUT bodies of the registered images, in registration order. */
  bodies(): unknown[] {
    return [...this.images.values()].map((i) => i.body);
  }

  list(): ImageEntry[] {
    return [...this.images.values()].map((i) => i.entry);
  }

  /** Backend counters by backend type, since the daemon started. */
  metrics(): Record<string, BackendMetrics> {
    return Object.fromEntries(this.backendMetrics);
  }

  resolve(volume: string, cookie: string): ResolvedObject | null {
    for (const img of this.images.values()) {
      if ((img.entry.domainId || img.entry.id) !== volume) continue;
      if (cookie === img.entry.id) return { kind: 'bootstrap', path: img.entry.metadataPath, size: img.bootstrapSize };
      const map = img.blobs.get(cookie);
      if (map) {
        const chunks = img.prefetch.get(cookie);
        return { kind: 'blob', map, fetcher: img.fetcher, prefetch: chunks ? { chunks, config: img.entry.prefetch } : null, fill: { amplifyIo: img.entry.amplifyIo } };
      }
    }
    return null;
  }
}
