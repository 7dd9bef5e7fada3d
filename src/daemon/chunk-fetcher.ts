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

  private async load(blob: BlobMap, chunk: ChunkRef): Promise<Buffer> {
    const where = `blob ${blob.blobId} chunk ${chunk.indexInBlob}`;
    this.onFetch?.(blob.blobId, chunk.indexInBlob);
    const stored = await this.backend.read(blob.blobId, chunk.compressedOffset, chunk.compressedSize);
    const job = {
      stored, compressed: chunk.compressed, compressor: blob.compressor, uncompressedSize: chunk.uncompressedSize,
      digester: blob.digester, digest: chunk.digest, where,
    };
    return this.pool ? this.pool.verify(job) : verifyChunk(job);
  }
}
