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

  constructor(
    private readonly backend: BlobBackend, private readonly onFetch?: (blobId: string, chunkIndex: number) => void,
    private readonly pool?: VerifyPool,
  ) {}

  fetch(blob: BlobMap, chunk: ChunkRef): Promise<Buffer> {
    const key = `${blob.blobId}:${chunk.indexInBlob}`;
    let p = this.inflight.get(key);
    if (!p) {
      p = this.load(blob, chunk).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }

  /**
   * Chunks stored back to back, fetched in one backend read and verified one by one (nydus's merged
   * prefetch requests). Each chunk settles on its own: a corrupt one fails, its neighbours do not.
   * A chunk already on its way is not read again.
   */
  fetchBatch(blob: BlobMap, chunks: readonly ChunkRef[]): Array<Promise<Buffer>> {
    const todo = chunks.filter((c) => !this.inflight.has(`${blob.blobId}:${c.indexInBlob}`));
    for (let i = 1; i < todo.length; i++) {
      if (todo[i].compressedOffset !== todo[i - 1].compressedOffset + todo[i - 1].compressedSize) {
        throw new Error(`fetchBatch: chunk ${todo[i].indexInBlob} does not follow chunk ${todo[i - 1].indexInBlob} in blob ${blob.blobId}`);
      }
    }
    if (todo.length > 1) {
      const start = todo[0].compressedOffset;
      const end = todo[todo.length - 1].compressedOffset + todo[todo.length - 1].compressedSize;
      for (const c of todo) this.onFetch?.(blob.blobId, c.indexInBlob);
      const span = this.backend.read(blob.blobId, start, end - start);
      for (const c of todo) {
        const key = `${blob.blobId}:${c.indexInBlob}`;
        // A copy of each chunk's bytes: verification may move its buffer to a worker thread.
        const p = span.then((buf) => this.verify(blob, c, Buffer.from(buf.subarray(c.compressedOffset - start, c.compressedOffset - start + c.compressedSize))))
          .finally(() => this.inflight.delete(key));
        this.inflight.set(key, p);
      }
    }
    return chunks.map((c) => this.fetch(blob, c));
  }

  private async load(blob: BlobMap, chunk: ChunkRef): Promise<Buffer> {
    this.onFetch?.(blob.blobId, chunk.indexInBlob);
    return this.verify(blob, chunk, await this.backend.read(blob.blobId, chunk.compressedOffset, chunk.compressedSize));
  }

  private verify(blob: BlobMap, chunk: ChunkRef, stored: Buffer): Promise<Buffer> {
    const where = `blob ${blob.blobId} chunk ${chunk.indexInBlob}`;
    const job = {
      stored, compressed: chunk.compressed, compressor: blob.compressor, uncompressedSize: chunk.uncompressedSize,
      digester: blob.digester, digest: chunk.digest, where,
    };
    return this.pool ? this.pool.verify(job) : Promise.resolve().then(() => verifyChunk(job));
  }
}
