/**
 * Blob map: for one blob, its chunks in uncompressed order, so that a kernel READ of the blob's
 * uncompressed address space maps to the chunks (and their stored ranges) that cover it.
 *
 * The chunks are kept packed in two typed arrays (numbers and digests), as the registration worker
 * builds them and hands them over without copying: an image of millions of chunks costs the daemon
 * two buffers, not millions of objects, and a chunk becomes a ChunkRef only when a request needs it.
 */
import { NydusError, EIO } from '../../erofs/errors.ts';
import type { CompressorName } from '../blob/compress.ts';
import type { Digester } from '../blob/digest.ts';
import type { ChunkRef } from '../builder/tree.ts';

/** Chunks start block-aligned in a blob's uncompressed address space (its cache file). */
export const CHUNK_ALIGN = 4096;
export const alignToChunk = (n: number): number => Math.ceil(n / CHUNK_ALIGN) * CHUNK_ALIGN;
/** Whether `c` comes right after `prev` in the cache file (the gap between them is block padding). */
export const followsInFile = (prev: ChunkRef, c: ChunkRef): boolean => c.uncompressedOffset === alignToChunk(prev.uncompressedOffset + prev.uncompressedSize);

/** Numbers kept per chunk, in this order. */
const F_INDEX = 0;
const F_UOFF = 1;
const F_USIZE = 2;
const F_COFF = 3;
const F_CSIZE = 4;
const F_COMPRESSED = 5;
const FIELDS = 6;
/** Chunk digests (blake3 and sha256 alike) are 32 bytes in the chunk table. */
const DIGEST_SIZE = 32;

/** A blob's chunks, sorted by uncompressed offset, as two transferable buffers. */
export interface PackedChunks {
  numbers: Float64Array;
  digests: Uint8Array;
}

/** Packs validated chunks (sorted by uncompressed offset, none overlapping). */
export function packChunks(chunks: readonly ChunkRef[]): PackedChunks {
  const numbers = new Float64Array(chunks.length * FIELDS);
  const digests = new Uint8Array(chunks.length * DIGEST_SIZE);
  chunks.forEach((c, i) => {
    if (c.digest.length !== DIGEST_SIZE) throw new Error(`chunk ${c.indexInBlob} has a digest of ${c.digest.length} bytes, not ${DIGEST_SIZE}`);
    const o = i * FIELDS;
    numbers[o + F_INDEX] = c.indexInBlob;
    numbers[o + F_UOFF] = c.uncompressedOffset;
    numbers[o + F_USIZE] = c.uncompressedSize;
    numbers[o + F_COFF] = c.compressedOffset;
    numbers[o + F_CSIZE] = c.compressedSize;
    numbers[o + F_COMPRESSED] = c.compressed ? 1 : 0;
    digests.set(c.digest, i * DIGEST_SIZE);
  });
  return { numbers, digests };
}

/**
 * How many chunks packed arrays hold, or -1 when their lengths disagree (arrays that did not come
 * from packChunks, as a kept plan read back damaged).
 */
export function packedChunkCount(chunks: PackedChunks): number {
  const n = chunks.numbers.length / FIELDS;
  return Number.isInteger(n) && chunks.digests.length === n * DIGEST_SIZE ? n : -1;
}

export class BlobMap {
  private readonly n: Float64Array;
  private readonly digests: Buffer;
  readonly chunkCount: number;

  constructor(
    readonly blobId: string, readonly blobIndex: number, readonly uncompressedSize: number, readonly compressor: CompressorName,
    readonly digester: Digester, chunks: PackedChunks,
  ) {
    this.n = chunks.numbers;
    this.digests = Buffer.from(chunks.digests.buffer, chunks.digests.byteOffset, chunks.digests.byteLength);
    this.chunkCount = this.n.length / FIELDS;
  }

  /** Every blob of a validated image in this process (benchmarks and tests; the daemon plans on a worker). */
  static fromImage(image: { blobs: ReadonlyArray<{ id: string; index: number; uncompressedSize: number; compressor: CompressorName; digester: Digester; chunks: readonly ChunkRef[] }> }): Map<string, BlobMap> {
    const out = new Map<string, BlobMap>();
    for (const b of image.blobs) {
      const sorted = [...b.chunks].sort((x, y) => x.uncompressedOffset - y.uncompressedOffset);
      out.set(b.id, new BlobMap(b.id, b.index, b.uncompressedSize, b.compressor, b.digester, packChunks(sorted)));
    }
    return out;
  }

  /** Every chunk in uncompressed order, as ChunkRefs (for tests and tools; the hot path uses at/indexAt/rangeAt). */
  all(): ChunkRef[] {
    return Array.from({ length: this.chunkCount }, (_, pos) => this.at(pos));
  }

  /** The chunk at `pos` in uncompressed order. */
  at(pos: number): ChunkRef {
    const o = pos * FIELDS;
    return {
      blobIndex: this.blobIndex, indexInBlob: this.n[o + F_INDEX], digest: this.digests.subarray(pos * DIGEST_SIZE, (pos + 1) * DIGEST_SIZE),
      uncompressedOffset: this.n[o + F_UOFF], uncompressedSize: this.n[o + F_USIZE], compressedOffset: this.n[o + F_COFF],
      compressedSize: this.n[o + F_CSIZE], compressed: this.n[o + F_COMPRESSED] === 1,
    };
  }

  /** Chunk index, and uncompressed range, of the chunk at `pos` (without making a ChunkRef). */
  indexAt(pos: number): number {
    return this.n[pos * FIELDS + F_INDEX];
  }

  rangeAt(pos: number): [number, number] {
    const o = pos * FIELDS;
    return [this.n[o + F_UOFF], this.n[o + F_UOFF] + this.n[o + F_USIZE]];
  }

  /**
   * Whether every chunk of `other` (the same blob as another image has it) is one of this map's, the
   * same in every field and digest: a cache file kept by this map then serves `other`'s reads too.
   * (An image that hides files of a shared layer references fewer of its chunks.)
   */
  includes(other: BlobMap): boolean {
    if (!this.sameBlob(other)) return false;
    let i = 0;
    for (let pos = 0; pos < other.chunkCount; pos++) {
      while (i < this.chunkCount && this.n[i * FIELDS + F_UOFF] < other.n[pos * FIELDS + F_UOFF]) i++;
      if (i === this.chunkCount || !this.sameChunk(i, other, pos)) return false;
    }
    return true;
  }

  /**
   * The chunks of this map and of `other` (the same blob as another image has it) in one map, with
   * `other`'s blob index; null when they are not one blob's: another size, compressor or digester, or
   * chunks that disagree (at one place but not the same in every field and digest, overlapping, or
   * one chunk index at two places).
   */
  union(other: BlobMap): BlobMap | null {
    if (!this.sameBlob(other)) return null;
    const numbers: number[] = [];
    const digests: Buffer[] = [];
    const indexes = new Set<number>();
    let end = 0;
    const take = (m: BlobMap, pos: number): boolean => {
      const o = pos * FIELDS;
      if (m.n[o + F_UOFF] < end || indexes.has(m.n[o + F_INDEX])) return false;
      end = m.n[o + F_UOFF] + m.n[o + F_USIZE];
      indexes.add(m.n[o + F_INDEX]);
      for (let f = 0; f < FIELDS; f++) numbers.push(m.n[o + f]);
      digests.push(m.digests.subarray(pos * DIGEST_SIZE, (pos + 1) * DIGEST_SIZE));
      return true;
    };
    let i = 0;
    let j = 0;
    while (i < this.chunkCount || j < other.chunkCount) {
      const a = i < this.chunkCount ? this.n[i * FIELDS + F_UOFF] : Infinity;
      const b = j < other.chunkCount ? other.n[j * FIELDS + F_UOFF] : Infinity;
      if (a === b) {
        if (!this.sameChunk(i, other, j) || !take(this, i)) return null;
        i++;
        j++;
      } else if (!(a < b ? take(this, i++) : take(other, j++))) return null;
    }
    return new BlobMap(this.blobId, other.blobIndex, this.uncompressedSize, this.compressor, this.digester, {
      numbers: Float64Array.from(numbers), digests: new Uint8Array(Buffer.concat(digests)),
    });
  }

  /** Whether `other` is a table of this blob: the same id, size, compressor and digester. */
  private sameBlob(other: BlobMap): boolean {
    return other.blobId === this.blobId && other.uncompressedSize === this.uncompressedSize && other.compressor === this.compressor && other.digester === this.digester;
  }

  /** Whether this map's chunk at `pos` and `other`'s at `otherPos` are one chunk: every field and the digest. */
  private sameChunk(pos: number, other: BlobMap, otherPos: number): boolean {
    for (let f = 0; f < FIELDS; f++) if (this.n[pos * FIELDS + f] !== other.n[otherPos * FIELDS + f]) return false;
    return this.digests.subarray(pos * DIGEST_SIZE, (pos + 1) * DIGEST_SIZE).equals(other.digests.subarray(otherPos * DIGEST_SIZE, (otherPos + 1) * DIGEST_SIZE));
  }

  /** The first position whose chunk ends after `offset` (`end`) or starts at or after it. */
  private search(offset: number, byEnd: boolean): number {
    let lo = 0;
    let hi = this.chunkCount;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const o = mid * FIELDS;
      const key = byEnd ? this.n[o + F_UOFF] + this.n[o + F_USIZE] : this.n[o + F_UOFF] + 1;
      if (key <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Whether a chunk starts at `offset` of the uncompressed blob. */
  startsChunk(offset: number): boolean {
    const i = this.search(offset, false);
    return i < this.chunkCount && this.n[i * FIELDS + F_UOFF] === offset;
  }

  /**
   * The chunks that start at or after `offset` and end by `limit`, and at least `least` of them
   * (those past `limit` too) while there are chunks: only these become ChunkRefs.
   */
  chunksAfter(offset: number, limit: number, least: number): ChunkRef[] {
    const out: ChunkRef[] = [];
    for (let i = this.search(offset, false); i < this.chunkCount; i++) {
      const o = i * FIELDS;
      if (out.length >= least && this.n[o + F_UOFF] + this.n[o + F_USIZE] > limit) break;
      out.push(this.at(i));
    }
    return out;
  }

  /** Chunks overlapping [offset, offset + len); gaps between chunks are alignment padding. */
  chunksIn(offset: number, len: number): ChunkRef[] {
    if (offset < 0 || offset >= this.uncompressedSize + CHUNK_ALIGN) {
      throw new NydusError(`blob ${this.blobId}: read at ${offset} is beyond its ${this.uncompressedSize} bytes`, EIO);
    }
    const [from, to] = this.positionsIn(offset, len);
    const out: ChunkRef[] = [];
    for (let i = from; i < to; i++) out.push(this.at(i));
    return out;
  }

  /** The positions [from, to) of the chunks overlapping [offset, offset + len) (empty when none). */
  positionsIn(offset: number, len: number): [number, number] {
    const from = this.search(offset, true);
    let to = from;
    while (to < this.chunkCount && this.n[to * FIELDS + F_UOFF] < offset + len) to++;
    return [from, to];
  }
}
