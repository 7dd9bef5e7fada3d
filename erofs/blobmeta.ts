/**
 * Blob meta of a Nydus data blob (nydus storage/src/meta/): the chunk-info array that maps each chunk's
 * uncompressed range to its stored (compressed) range, followed by a 4096-byte header at the blob's end:
 *
 *   chunk data | chunk-info array (ci_offset) | BlobCompressionContextHeader (4096 B)
 *
 * and the chunk table of the bootstrap (RafsV5ChunkInfo, 80 B per chunk) that carries chunk digests.
 */
import { Struct } from './struct.ts';
import { FormatError } from './errors.ts';

export const BLOB_CCT_MAGIC = 0xb10bb10b;
export const BLOB_CCT_HEADER_SIZE = 4096;

/** BlobFeatures. */
export const BLOB_FEATURE_ALIGNED = 0x1; // uncompressed chunks start 4096-aligned (required by RAFS v6)
export const BLOB_FEATURE_INLINED_FS_META = 0x2;
export const BLOB_FEATURE_CHUNK_INFO_V2 = 0x4;
export const BLOB_FEATURE_ZRAN = 0x8;
export const BLOB_FEATURE_SEPARATE = 0x10;
export const BLOB_FEATURE_INLINED_CHUNK_DIGEST = 0x20;
export const BLOB_FEATURE_TARFS = 0x40;
export const BLOB_FEATURE_BATCH = 0x80;
export const BLOB_FEATURE_ENCRYPTED = 0x100;
export const BLOB_FEATURE_HAS_TAR_HEADER = 0x1000_0000;
export const BLOB_FEATURE_HAS_TOC = 0x2000_0000;
/** Written by nydus-image 2.2 and later (always): the blob's data ends at its chunk-info array (or that array's tar header), not at its compressed size. */
export const BLOB_FEATURE_CAP_TAR_TOC = 0x4000_0000;

export const blobCompressionContextHeader = new Struct('blob_compression_context_header', BLOB_CCT_HEADER_SIZE, {
  s_magic: { offset: 0, type: 'u32' },
  s_features: { offset: 4, type: 'u32' }, // BLOB_FEATURE_*
  s_ci_compressor: { offset: 8, type: 'u32' }, // RAFS_COMPRESS_* of the chunk-info array
  s_ci_entries: { offset: 12, type: 'u32' },
  s_ci_offset: { offset: 16, type: 'u64' }, // blob file offset of the chunk-info array
  s_ci_compressed_size: { offset: 24, type: 'u64' },
  s_ci_uncompressed_size: { offset: 32, type: 'u64' },
  s_ci_zran_offset: { offset: 40, type: 'u64' },
  s_ci_zran_size: { offset: 48, type: 'u64' },
  s_ci_zran_count: { offset: 56, type: 'u32' },
  s_reserved: { offset: 60, type: { bytes: BLOB_CCT_HEADER_SIZE - 64 } },
  s_magic2: { offset: BLOB_CCT_HEADER_SIZE - 4, type: 'u32' },
});

/**
 * BlobChunkInfoV1Ondisk, 16 bytes, two little-endian u64 bit fields:
 *   uncomp_info: [0,8) reserved | [8,12) (size-1) bits 20..23 | [12,44) offset (4096-aligned) | [44,64) (size-1) bits 0..19
 *   comp_info:   [0,40) offset | [40,44) (size-1) bits 20..23 | [44,64) (size-1) bits 0..19
 * A chunk is compressed exactly when its two sizes differ.
 */
export const BLOB_CHUNK_INFO_V1_SIZE = 16;
const SIZE_LOW_MASK = 0xfffffn;
const SIZE_HIGH_MASK = 0xf00000n;
const COMP_OFFSET_MASK = 0xff_ffff_ffffn;
const UNCOMP_OFFSET_MASK = 0xfff_ffff_f000n;
/** Largest chunk the 24-bit size fields hold. */
export const BLOB_CHUNK_MAX_SIZE = 0x100_0000;
/** Most chunks one blob may hold (nydus's RAFS_MAX_CHUNKS_PER_BLOB): chunk indexes are below it. */
export const BLOB_MAX_CHUNKS = 1 << 24;

export interface BlobChunkInfo {
  compressedOffset: number;
  compressedSize: number;
  uncompressedOffset: number;
  uncompressedSize: number;
}

export function encodeChunkInfoV1(c: BlobChunkInfo, buf: Buffer, at: number): void {
  if (c.uncompressedOffset % 4096 !== 0) throw new Error(`uncompressed offset ${c.uncompressedOffset} is not 4096-aligned`);
  for (const s of [c.compressedSize, c.uncompressedSize]) {
    if (s < 1 || s > BLOB_CHUNK_MAX_SIZE) throw new Error(`chunk size ${s} out of range`);
  }
  const us = BigInt(c.uncompressedSize - 1);
  const cs = BigInt(c.compressedSize - 1);
  const uncomp = ((us & SIZE_LOW_MASK) << 44n) | (BigInt(c.uncompressedOffset) & UNCOMP_OFFSET_MASK) | ((us & SIZE_HIGH_MASK) >> 12n);
  const comp = ((cs & SIZE_LOW_MASK) << 44n) | ((cs & SIZE_HIGH_MASK) << 20n) | (BigInt(c.compressedOffset) & COMP_OFFSET_MASK);
  buf.writeBigUInt64LE(uncomp, at);
  buf.writeBigUInt64LE(comp, at + 8);
}

export function decodeChunkInfoV1(buf: Buffer, at: number): BlobChunkInfo {
  if (at + BLOB_CHUNK_INFO_V1_SIZE > buf.length) throw new FormatError(`truncated chunk info at offset ${at}`);
  const uncomp = buf.readBigUInt64LE(at);
  const comp = buf.readBigUInt64LE(at + 8);
  return {
    uncompressedOffset: Number(uncomp & UNCOMP_OFFSET_MASK),
    uncompressedSize: Number(((uncomp & 0xf00n) << 12n) | (uncomp >> 44n)) + 1,
    compressedOffset: Number(comp & COMP_OFFSET_MASK),
    compressedSize: Number(((comp & 0xf0000000000n) >> 20n) | (comp >> 44n)) + 1,
  };
}

/** BlobChunkFlags of the bootstrap chunk table. */
export const BLOB_CHUNK_FLAG_COMPRESSED = 0x1;
export const BLOB_CHUNK_FLAG_HAS_HOLE = 0x2;

/** One entry of the bootstrap's chunk table (RafsV5ChunkInfo, reused by RAFS v6). */
export const rafsChunkInfo = new Struct('rafs_v5_chunk_info', 80, {
  block_id: { offset: 0, type: { bytes: 32 } }, // digest of the uncompressed chunk
  blob_index: { offset: 32, type: 'u32' },
  flags: { offset: 36, type: 'u32' }, // BLOB_CHUNK_FLAG_*
  compressed_size: { offset: 40, type: 'u32' },
  uncompressed_size: { offset: 44, type: 'u32' },
  compressed_offset: { offset: 48, type: 'u64' },
  uncompressed_offset: { offset: 56, type: 'u64' },
  file_offset: { offset: 64, type: 'u64' },
  index: { offset: 72, type: 'u32' }, // index in the blob's chunk-info array
  reserved: { offset: 76, type: 'u32' },
});
