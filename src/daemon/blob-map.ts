/**
 * Blob map: for one blob, its chunks in uncompressed order, so that a kernel READ of the blob's
 * uncompressed address space maps to the chunks (and their stored ranges) that cover it.
 */
import { NydusError, EIO } from '../../erofs/errors.ts';
import type { ValidatedImage } from '../image/validate.ts';
import type { CompressorName } from '../blob/compress.ts';
import type { Digester } from '../blob/digest.ts';
import type { ChunkRef } from '../builder/tree.ts';

export class BlobMap {
  private readonly chunks: ChunkRef[];

  constructor(
    readonly blobId: string, readonly uncompressedSize: number, readonly compressor: CompressorName,
    readonly digester: Digester, chunks: ChunkRef[],
  ) {
    // Validated chunks: inside the blob, no two overlapping, sizes bounded by the chunk size.
    this.chunks = [...chunks].sort((a, b) => a.uncompressedOffset - b.uncompressedOffset);
  }

  /** Every blob of a validated bootstrap, keyed by blob id, from its blob table and chunk table. */
  static fromImage(image: ValidatedImage): Map<string, BlobMap> {
    const out = new Map<string, BlobMap>();
    for (const b of image.blobs) out.set(b.id, new BlobMap(b.id, b.uncompressedSize, b.compressor, b.digester, b.chunks));
    return out;
  }

  get chunkCount(): number {
    return this.chunks.length;
  }

  all(): readonly ChunkRef[] {
    return this.chunks;
  }

  /** Up to `n` chunks that start at or after `offset`. */
  chunksAfter(offset: number, n: number): ChunkRef[] {
    let lo = 0;
    let hi = this.chunks.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.chunks[mid].uncompressedOffset < offset) lo = mid + 1;
      else hi = mid;
    }
    return this.chunks.slice(lo, lo + n);
  }

  /** Chunks overlapping [offset, offset + len); gaps between chunks are alignment padding. */
  chunksIn(offset: number, len: number): ChunkRef[] {
    if (offset < 0 || offset >= this.uncompressedSize + 4096) {
      throw new NydusError(`blob ${this.blobId}: read at ${offset} is beyond its ${this.uncompressedSize} bytes`, EIO);
    }
    let lo = 0;
    let hi = this.chunks.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const c = this.chunks[mid];
      if (c.uncompressedOffset + c.uncompressedSize <= offset) lo = mid + 1;
      else hi = mid;
    }
    const out: ChunkRef[] = [];
    for (let i = lo; i < this.chunks.length && this.chunks[i].uncompressedOffset < offset + len; i++) out.push(this.chunks[i]);
    return out;
  }
}
