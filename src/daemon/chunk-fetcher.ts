/**
 * Chunk fetcher: backend -> decompress -> digest check (on the verify pool's threads when there is
 * one). Concurrent requests for one chunk share one fetch. A chunk whose digest does not match is an
 * EIO error and is never returned.
 */
import { verifyChunk } from '../blob/verify.ts';
import type { ChunkRef } from '../builder/tree.ts';
import type { VerifyPool } from './verify-pool.ts';
import type { BlobBackend } from './backend/localfs.ts';
import type { BlobMap } from './blob-map.ts';

export class ChunkFetcher {
  private readonly inflight = new Map<string, Promise<Buffer>>();
  /** Chunks in flight a reader waits for: verified before the ones fetched ahead. */
  private readonly urgent = new Set<string>();

  constructor(
    private readonly backend: BlobBackend, private readonly onFetch?: (blobId: string, chunkIndex: number) => void,
    private readonly pool?: VerifyPool,
  ) {}

  /** `urgent`: a reader waits for it (see prioritize). */
  fetch(blob: BlobMap, chunk: ChunkRef, urgent = false): Promise<Buffer> {
    const key = `${blob.blobId}:${chunk.indexInBlob}`;
    let p = this.inflight.get(key);
    if (p) {
      if (urgent) this.prioritize(blob, chunk);
      return p;
    }
    if (urgent) this.urgent.add(key);
    p = this.load(blob, chunk).finally(() => this.settled(key));
    this.inflight.set(key, p);
    return p;
  }

  /**
   * A reader now waits for a chunk in flight (fetched ahead of it): its verification goes before the
   * chunks queued ahead of it. Starts no fetch.
   */
  prioritize(blob: BlobMap, chunk: ChunkRef): void {
    const key = `${blob.blobId}:${chunk.indexInBlob}`;
    if (!this.inflight.has(key)) return;
    this.urgent.add(key);
    this.pool?.promote(where(blob, chunk));
  }

  private settled(key: string): void {
    this.inflight.delete(key);
    this.urgent.delete(key);
  }

  /**
   * Chunks fetched in as few backend reads as they allow (nydus's merged requests): each run of them
   * stored back to back is one read (of at most `maxRead` bytes), verified chunk by chunk. Each chunk settles on its own: a corrupt
   * one fails, its neighbours do not. A chunk already on its way is not read again.
   */
  fetchBatch(blob: BlobMap, chunks: readonly ChunkRef[], urgent = false, maxRead = MAX_MERGED_READ): Array<Promise<Buffer>> {
    const todo = chunks.filter((c) => !this.inflight.has(`${blob.blobId}:${c.indexInBlob}`));
    for (const run of batchChunks(todo, maxRead)) {
      if (run.length < 2) continue;
      const start = run[0].compressedOffset;
      const end = run[run.length - 1].compressedOffset + run[run.length - 1].compressedSize;
      for (const c of run) this.onFetch?.(blob.blobId, c.indexInBlob);
      const span = this.backend.read(blob.blobId, start, end - start);
      for (const c of run) {
        const key = `${blob.blobId}:${c.indexInBlob}`;
        if (urgent) this.urgent.add(key);
        // A copy of each chunk's bytes: verification may move its buffer to a worker thread.
        const p = span.then((buf) => this.verify(blob, c, Buffer.from(buf.subarray(c.compressedOffset - start, c.compressedOffset - start + c.compressedSize))))
          .finally(() => this.settled(key));
        this.inflight.set(key, p);
      }
    }
    return chunks.map((c) => this.fetch(blob, c, urgent));
  }

  private async load(blob: BlobMap, chunk: ChunkRef): Promise<Buffer> {
    this.onFetch?.(blob.blobId, chunk.indexInBlob);
    return this.verify(blob, chunk, await this.backend.read(blob.blobId, chunk.compressedOffset, chunk.compressedSize));
  }

  private verify(blob: BlobMap, chunk: ChunkRef, stored: Buffer): Promise<Buffer> {
    const job = {
      stored, compressed: chunk.compressed, compressor: blob.compressor, uncompressedSize: chunk.uncompressedSize,
      digester: blob.digester, digest: chunk.digest, where: where(blob, chunk),
    };
    const urgent = this.urgent.has(`${blob.blobId}:${chunk.indexInBlob}`);
    return this.pool ? this.pool.verify(job, urgent) : Promise.resolve().then(() => verifyChunk(job));
  }
}

/**
 * The most one merged backend read takes (nydus's default merging size): small chunks gain from
 * sharing a read; chunks this large gain more from reads of their own in parallel.
 */
const MAX_MERGED_READ = 1 << 20;

const where = (blob: BlobMap, chunk: ChunkRef) => `blob ${blob.blobId} chunk ${chunk.indexInBlob}`;

/** Splits chunks (in their order) into runs stored back to back, each at most `maxBytes` (one chunk at least). */
export function batchChunks(chunks: readonly ChunkRef[], maxBytes: number): ChunkRef[][] {
  const out: ChunkRef[][] = [];
  let cur: ChunkRef[] = [];
  let bytes = 0;
  for (const c of chunks) {
    const last = cur[cur.length - 1];
    const follows = last && c.compressedOffset === last.compressedOffset + last.compressedSize;
    if (cur.length && (!follows || bytes + c.compressedSize > maxBytes)) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(c);
    bytes += c.compressedSize;
  }
  if (cur.length) out.push(cur);
  return out;
}
