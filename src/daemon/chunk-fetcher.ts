/**
 * Chunk fetcher: backend -> decompress -> digest check. Concurrent requests for one chunk share one
 * fetch. A chunk whose digest does not match is an EIO error and is never returned.
 */
import { NydusError, EIO } from '../../erofs/errors.ts';
import { decompressChunk } from '../blob/compress.ts';
import { chunkDigest } from '../blob/digest.ts';
import type { ChunkRef } from '../builder/tree.ts';
import type { BlobBackend } from './backend/localfs.ts';
import type { BlobMap } from './blob-map.ts';

export class ChunkFetcher {
  private readonly inflight = new Map<string, Promise<Buffer>>();

  constructor(private readonly backend: BlobBackend, private readonly onFetch?: (blobId: string, chunkIndex: number) => void) {}

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
    const data = chunk.compressed ? decompressChunk(blob.compressor, stored, chunk.uncompressedSize, where) : stored;
    if (data.length !== chunk.uncompressedSize) throw new NydusError(`${where}: ${data.length} bytes, expected ${chunk.uncompressedSize}`, EIO);
    if (!chunkDigest(blob.digester, data).equals(chunk.digest)) throw new NydusError(`${where}: digest mismatch, refusing corrupt data`, EIO);
    return data;
  }
}
