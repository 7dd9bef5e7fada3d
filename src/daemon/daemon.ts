/**
 * The daemon: registered images (from the API, persisted), their blob maps and backends, and the
 * resolution of the kernel's (volume, cookie) keys to bootstraps and blobs.
 */
import fs from 'node:fs';
import type { Logger } from 'pino';
import { openImage } from '../image/open.ts';
import type { ValidatedImage } from '../image/validate.ts';
import type { ChunkRef } from '../builder/tree.ts';
import { BlobMap } from './blob-map.ts';
import { ChunkFetcher } from './chunk-fetcher.ts';
import { type BlobBackend, LocalFsBackend } from './backend/localfs.ts';
import { type ImageEntry, ConfigError, parseBlobCacheEntry } from './config.ts';
import type { ObjectResolver, ResolvedObject } from './ondemand.ts';
import type { DaemonState } from './state.ts';
import type { VerifyPool } from './verify-pool.ts';

interface RegisteredImage {
  entry: ImageEntry;
  bootstrapSize: number;
  blobs: Map<string, BlobMap>;
  backend: BlobBackend;
  fetcher: ChunkFetcher;
  /** Per blob, the chunks to fetch ahead of reads (when prefetch is enabled). */
  prefetch: Map<string, ChunkRef[]>;
}

/**
 * What to prefetch: the chunks of the files the bootstrap's prefetch table lists (directories with
 * everything below them), in that order; without a prefetch table, the whole blob.
 */
function prefetchChunks(image: ValidatedImage, blobs: Map<string, BlobMap>): Map<string, ChunkRef[]> {
  const out = new Map<string, ChunkRef[]>();
  if (image.image.prefetchTable().length === 0) {
    for (const [id, map] of blobs) out.set(id, [...map.all()]);
    return out;
  }
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

export class ImageRegistry implements ObjectResolver {
  private readonly images = new Map<string, RegisteredImage>();

  constructor(private readonly state: DaemonState, private readonly log: Logger, private readonly pool?: VerifyPool) {}

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
    if (this.images.has(entry.id)) throw new ConfigError(`image ${entry.id} is already registered`);
    // The same validation gate as check: blob ids, chunk ranges and sizes, every inode once.
    const { image } = openImage(entry.metadataPath);
    const blobs = BlobMap.fromImage(image);
    const backend = new LocalFsBackend(entry.backend.dir);
    this.images.set(entry.id, {
      entry, bootstrapSize: fs.statSync(entry.metadataPath).size, blobs, backend,
      prefetch: entry.prefetch ? prefetchChunks(image, blobs) : new Map(), fetcher: new ChunkFetcher(backend, (blob, chunk) => this.state.countFetch(blob, chunk), this.pool),
    });
    if (persist) this.state.saveImage(entry.id, body);
    this.log.info({ id: entry.id, domain: entry.domainId, bootstrap: entry.metadataPath, blobs: [...blobs.keys()] }, 'image registered');
    return entry;
  }

  /** DELETE /api/v2/blobs: by fsid (blob_id) and/or domain. Returns how many were removed. */
  remove(query: { id?: string; domainId?: string }): number {
    let n = 0;
    for (const [id, img] of this.images) {
      if (query.id && id !== query.id) continue;
      if (query.domainId && img.entry.domainId !== query.domainId) continue;
      if (!query.id && !query.domainId) continue;
      this.images.delete(id);
      this.state.deleteImage(id);
      n++;
    }
    return n;
  }

  list(): ImageEntry[] {
    return [...this.images.values()].map((i) => i.entry);
  }

  backends(): BlobBackend[] {
    return [...this.images.values()].map((i) => i.backend);
  }

  resolve(volume: string, cookie: string): ResolvedObject | null {
    for (const img of this.images.values()) {
      if ((img.entry.domainId || img.entry.id) !== volume) continue;
      if (cookie === img.entry.id) return { kind: 'bootstrap', path: img.entry.metadataPath, size: img.bootstrapSize };
      const map = img.blobs.get(cookie);
      if (map) return { kind: 'blob', map, fetcher: img.fetcher, prefetch: img.prefetch.get(cookie) ?? null };
    }
    return null;
  }
}
