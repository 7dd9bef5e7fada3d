/**
 * RAFS v6 (Nydus) additions to EROFS: the extended superblock after the EROFS one, the blob table,
 * and the prefetch table (nydus rafs/src/metadata/layout/v6.rs).
 */
import { Struct } from './struct.ts';
import { EROFS_SUPER_OFFSET } from './super.ts';

export const RAFS_V6_SUPER_EXT_OFFSET = EROFS_SUPER_OFFSET + 128;
/** The device table follows the extended superblock: devt_slotoff = 1408 / 128 = 11. */
export const RAFS_V6_DEVTABLE_OFFSET = RAFS_V6_SUPER_EXT_OFFSET + 256;
export const RAFS_V6_DEVT_SLOTOFF = RAFS_V6_DEVTABLE_OFFSET / 128;

/** RafsSuperFlags (s_flags). */
export const RAFS_FLAG_COMPRESSION_NONE = 0x1;
export const RAFS_FLAG_COMPRESSION_LZ4 = 0x2;
export const RAFS_FLAG_HASH_BLAKE3 = 0x4;
export const RAFS_FLAG_HASH_SHA256 = 0x8;
export const RAFS_FLAG_EXPLICIT_UID_GID = 0x10;
export const RAFS_FLAG_HAS_XATTR = 0x20;
export const RAFS_FLAG_COMPRESSION_GZIP = 0x40;
export const RAFS_FLAG_COMPRESSION_ZSTD = 0x80;
export const RAFS_FLAG_INLINED_CHUNK_DIGEST = 0x100;
export const RAFS_FLAG_TARFS_MODE = 0x200;
export const RAFS_FLAG_ENCRYPTION_NONE = 0x0100_0000;

/** The image's compressor as s_flags says it, in nydus's words (compress::Algorithm); null when no flag says one. */
export function rafsFlagsCompressor(flags: number): 'none' | 'lz4_block' | 'gzip' | 'zstd' | null {
  if (flags & RAFS_FLAG_COMPRESSION_ZSTD) return 'zstd';
  if (flags & RAFS_FLAG_COMPRESSION_GZIP) return 'gzip';
  if (flags & RAFS_FLAG_COMPRESSION_LZ4) return 'lz4_block';
  if (flags & RAFS_FLAG_COMPRESSION_NONE) return 'none';
  return null;
}

export const rafsV6SuperBlockExt = new Struct('rafs_v6_super_block_ext', 256, {
  s_flags: { offset: 0, type: 'u64' }, // RAFS_FLAG_*
  s_blob_table_offset: { offset: 8, type: 'u64' }, // bytes, 4096-aligned
  s_blob_table_size: { offset: 16, type: 'u32' }, // bytes, 256 per blob
  s_chunk_size: { offset: 20, type: 'u32' }, // bytes, power of two
  s_chunk_table_offset: { offset: 24, type: 'u64' }, // bytes, 4096-aligned
  s_chunk_table_size: { offset: 32, type: 'u64' }, // bytes, 80 per chunk
  s_prefetch_table_offset: { offset: 40, type: 'u64' },
  s_prefetch_table_size: { offset: 48, type: 'u32' }, // bytes, 4 per entry
  s_padding: { offset: 52, type: 'u32' },
  s_reserved: { offset: 56, type: { bytes: 200 } },
});
export type RafsV6SuperBlockExt = ReturnType<typeof rafsV6SuperBlockExt.decode>;

/** nydus_utils compress::Algorithm and digest::Algorithm values in the blob table. */
export const RAFS_COMPRESS_NONE = 0;
export const RAFS_COMPRESS_LZ4_BLOCK = 1;
export const RAFS_COMPRESS_GZIP = 2;
export const RAFS_COMPRESS_ZSTD = 3;

/** Each compressor nydus-ts writes, by nydus's name: its blob table code and its superblock flag. */
export const RAFS_COMPRESSOR_CODES = {
  none: { algo: RAFS_COMPRESS_NONE, flag: RAFS_FLAG_COMPRESSION_NONE },
  zstd: { algo: RAFS_COMPRESS_ZSTD, flag: RAFS_FLAG_COMPRESSION_ZSTD },
  lz4_block: { algo: RAFS_COMPRESS_LZ4_BLOCK, flag: RAFS_FLAG_COMPRESSION_LZ4 },
} as const;
export const RAFS_DIGEST_BLAKE3 = 0;
export const RAFS_DIGEST_SHA256 = 1;

export const RAFS_BLOB_ID_SIZE = 64;

/** One entry of the blob table (RafsV6Blob). */
export const rafsV6Blob = new Struct('rafs_v6_blob', 256, {
  blob_id: { offset: 0, type: { bytes: RAFS_BLOB_ID_SIZE } }, // sha256 hex of the blob
  blob_index: { offset: 64, type: 'u32' },
  chunk_size: { offset: 68, type: 'u32' },
  chunk_count: { offset: 72, type: 'u32' },
  compression_algo: { offset: 76, type: 'u32' }, // RAFS_COMPRESS_*
  digest_algo: { offset: 80, type: 'u32' }, // RAFS_DIGEST_*
  features: { offset: 84, type: 'u32' }, // BLOB_FEATURE_*
  compressed_size: { offset: 88, type: 'u64' }, // chunk data only, without blob meta
  uncompressed_size: { offset: 96, type: 'u64' },
  blob_toc_size: { offset: 104, type: 'u32' },
  ci_compressor: { offset: 108, type: 'u32' }, // compressor of the chunk-info array
  ci_offset: { offset: 112, type: 'u64' }, // where the chunk-info array is in the blob
  ci_compressed_size: { offset: 120, type: 'u64' },
  ci_uncompressed_size: { offset: 128, type: 'u64' },
  blob_toc_digest: { offset: 136, type: { bytes: 32 } },
  blob_meta_digest: { offset: 168, type: { bytes: 32 } },
  blob_meta_size: { offset: 200, type: 'u64' },
  cipher_iv: { offset: 208, type: { bytes: 8 } },
  cipher_algo: { offset: 216, type: 'u32' },
  reserved2: { offset: 220, type: { bytes: 36 } },
});
export type RafsV6Blob = ReturnType<typeof rafsV6Blob.decode>;

/** Prefetch table entries are u32 nids of files and directories to read first. */
export const RAFS_PREFETCH_ENTRY_SIZE = 4;
