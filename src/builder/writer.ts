/**
 * Writer stage: encodes a laid-out tree into a RAFS v6 bootstrap (metadata plus device and blob
 * tables), or, for `export --block`, into the metadata part of a single self-contained EROFS image
 * whose chunk indexes point into data appended after it.
 */
import {
  EROFS_BLKSIZ, EROFS_BLKSIZ_BITS, EROFS_FEATURE_COMPAT_RAFS_V6, EROFS_FEATURE_INCOMPAT_CHUNKED_FILE,
  EROFS_FEATURE_INCOMPAT_DEVICE_TABLE, EROFS_SUPER_MAGIC_V1, EROFS_SUPER_OFFSET, erofsSuperBlock,
} from '../../erofs/super.ts';
import {
  EROFS_CHUNK_FORMAT_INDEXES, EROFS_INODE_CHUNK_BASED, EROFS_INODE_LAYOUT_EXTENDED, erofsInodeExtended, inodeFormat,
} from '../../erofs/inode.ts';
import { EROFS_NULL_ADDR, erofsInodeChunkIndex, nydusChunkAddr } from '../../erofs/chunk.ts';
import { erofsDeviceSlot } from '../../erofs/devtable.ts';
import {
  EROFS_FT_BLKDEV, EROFS_FT_CHRDEV, EROFS_FT_DIR, EROFS_FT_FIFO, EROFS_FT_REG_FILE, EROFS_FT_SOCK, EROFS_FT_SYMLINK,
  packDirBlocks,
} from '../../erofs/dirent.ts';
import {
  RAFS_COMPRESSOR_CODES, RAFS_DIGEST_BLAKE3, RAFS_DIGEST_SHA256, RAFS_FLAG_EXPLICIT_UID_GID, RAFS_FLAG_HASH_BLAKE3, RAFS_FLAG_HASH_SHA256,
  RAFS_FLAG_HAS_XATTR, RAFS_PREFETCH_ENTRY_SIZE, RAFS_V6_DEVTABLE_OFFSET, RAFS_V6_DEVT_SLOTOFF, RAFS_V6_SUPER_EXT_OFFSET,
  rafsV6Blob, rafsV6SuperBlockExt,
} from '../../erofs/rafs.ts';
import { BLOB_CHUNK_FLAG_COMPRESSED, rafsChunkInfo } from '../../erofs/blobmeta.ts';
import type { CompressorName } from '../blob/compress.ts';
import type { Digester } from '../blob/digest.ts';
import type { ChunkRef, NodeKind } from './tree.ts';
import type { Layout, LaidOutInode } from './layout.ts';

/** What the bootstrap says about one blob. */
export interface BlobDescriptor {
  blobId: string;
  /** The whole blob file, chunk data and blob meta (nydus's compressed_size). */
  compressedSize: number;
  uncompressedSize: number;
  chunkCount: number;
  features: number;
  ciCompressor: number;
  ciOffset: number;
  ciCompressedSize: number;
  ciUncompressedSize: number;
  /** RAFS_COMPRESS_* of this blob's chunks when it differs from the image's (a blob of another image). */
  compressionAlgo?: number;
  /** Of a blob built elsewhere, carried over: its TOC, and its blob meta when kept apart (SEPARATE). */
  tocDigest?: Buffer;
  tocSize?: number;
  metaDigest?: Buffer;
  metaSize?: number;
}

export interface WriteOptions {
  chunkSize: number;
  compressor: CompressorName;
  digester: Digester;
  blobs: BlobDescriptor[];
  /** Build time for the superblock (seconds). */
  buildTime: number;
  /**
   * Whether the inodes carry their owners (RAFS's EXPLICIT_UID_GID, nydus-image's default); without
   * (`create --repeatable`) every file is root's, as nydus-image writes it.
   */
  explicitUidGid?: boolean;
  /** nids of the prefetch list, in order. */
  prefetch?: number[];
  /**
   * Block mode (export --block): no device table and no RAFS tables; chunk data of blob i is placed
   * in the image from block `blobBaseBlk[i]` on, which the caller fills in after the metadata.
   */
  blockMode?: { blobBaseBlk: (metaBlocks: number) => number[] };
}

export interface WrittenImage {
  /** The metadata (a whole bootstrap in normal mode), a multiple of the block size. */
  meta: Buffer;
  /** Block mode: start block of each blob's data in the image. */
  blobBaseBlk: number[];
}

const FILE_TYPE: Record<NodeKind, number> = {
  file: EROFS_FT_REG_FILE, dir: EROFS_FT_DIR, symlink: EROFS_FT_SYMLINK, chrdev: EROFS_FT_CHRDEV,
  blkdev: EROFS_FT_BLKDEV, fifo: EROFS_FT_FIFO, socket: EROFS_FT_SOCK,
};

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;
const MAPPED_BLKADDR_ALIGN = 0x80000;

function inodeData(ino: LaidOutInode, layout: Layout): Buffer {
  if (ino.node.kind === 'symlink') return ino.node.target!;
  const entries = ino.dirEntries!.map((e) => ({
    name: e.name, nid: layout.inodeOf.get(e.node)!.nid, fileType: FILE_TYPE[e.node.kind],
  }));
  const blocks = packDirBlocks(entries);
  // Full blocks are padded to the block size; the kernel finds the last name's end by a NUL or the block end.
  return Buffer.concat(blocks.map((b, i) => (i < blocks.length - 1 ? Buffer.concat([b, Buffer.alloc(EROFS_BLKSIZ - b.length)]) : b)));
}

export function writeImage(layout: Layout, opts: WriteOptions): WrittenImage {
  const block = !!opts.blockMode;
  const explicitUidGid = opts.explicitUidGid ?? true;
  const deviceCount = block ? 0 : opts.blobs.length;
  // Distinct chunks, in blob order, for the chunk table.
  const distinct = new Map<ChunkRef, number>();
  for (const ino of layout.inodes) for (const c of ino.node.chunks ?? []) if (c && !distinct.has(c)) distinct.set(c, distinct.size);
  const chunkList = [...distinct.keys()].sort((a, b) => a.blobIndex - b.blobIndex || a.indexInBlob - b.indexInBlob);

  // Tables after the directory/symlink data blocks, each 4096-aligned as nydus validates.
  let end = layout.dataEndBlk * EROFS_BLKSIZ;
  const blobTableOffset = end;
  const blobTableSize = block ? 0 : opts.blobs.length * rafsV6Blob.size;
  end = alignUp(end + blobTableSize, EROFS_BLKSIZ);
  const chunkTableOffset = end;
  const chunkTableSize = block ? 0 : chunkList.length * rafsChunkInfo.size;
  end = alignUp(end + chunkTableSize, EROFS_BLKSIZ);
  const prefetch = block ? [] : opts.prefetch ?? [];
  const prefetchOffset = end;
  const prefetchSize = prefetch.length * RAFS_PREFETCH_ENTRY_SIZE;
  end = alignUp(end + prefetchSize, EROFS_BLKSIZ);
  const meta = Buffer.alloc(end);
  const metaBlocks = end / EROFS_BLKSIZ;
  const blobBaseBlk = block ? opts.blockMode!.blobBaseBlk(metaBlocks) : [];

  const chunkAddress = (c: ChunkRef | null): { advise: number; device_id: number; blkaddr: number } => (!c
    ? { advise: 0, device_id: 0, blkaddr: EROFS_NULL_ADDR }
    : block
    ? { advise: 0, device_id: 0, blkaddr: blobBaseBlk[c.blobIndex] + c.uncompressedOffset / EROFS_BLKSIZ }
    : { ...nydusChunkAddr(c.blobIndex, c.indexInBlob), blkaddr: c.uncompressedOffset / EROFS_BLKSIZ });

  let hasXattr = false;
  const chunkBits = Math.log2(opts.chunkSize) - EROFS_BLKSIZ_BITS;
  for (const ino of layout.inodes) {
    const n = ino.node;
    let iu = 0;
    if (ino.datalayout === EROFS_INODE_CHUNK_BASED) iu = EROFS_CHUNK_FORMAT_INDEXES | chunkBits;
    else if (n.kind === 'chrdev' || n.kind === 'blkdev') iu = n.rdev;
    else if (ino.blockCount > 0) iu = ino.rawBlkaddr;
    erofsInodeExtended.encodeInto(meta, ino.offset, {
      i_format: inodeFormat(EROFS_INODE_LAYOUT_EXTENDED, ino.datalayout),
      i_xattr_icount: ino.xattrIcount,
      i_mode: n.mode & 0xffff,
      i_size: ino.dataSize,
      i_u: iu,
      i_ino: ino.ino,
      i_uid: explicitUidGid ? n.uid : 0,
      i_gid: explicitUidGid ? n.gid : 0,
      i_mtime: n.mtimeSec,
      i_mtime_nsec: n.mtimeNsec,
      i_nlink: ino.nlink,
    });
    let at = ino.offset + erofsInodeExtended.size;
    if (ino.xattrBody.length) {
      hasXattr = true;
      ino.xattrBody.copy(meta, at);
      at += ino.xattrBody.length;
    }
    if (ino.datalayout === EROFS_INODE_CHUNK_BASED) {
      at = alignUp(at, erofsInodeChunkIndex.size);
      for (const c of n.chunks ?? []) {
        erofsInodeChunkIndex.encodeInto(meta, at, chunkAddress(c));
        at += erofsInodeChunkIndex.size;
      }
    } else if (n.kind === 'dir' || n.kind === 'symlink') {
      const data = inodeData(ino, layout);
      const inBlocks = ino.blockCount * EROFS_BLKSIZ;
      data.copy(meta, ino.rawBlkaddr * EROFS_BLKSIZ, 0, Math.min(inBlocks, data.length));
      if (ino.inlineSize) data.copy(meta, at, inBlocks);
    }
  }

  if (!block) {
    // Where each blob would sit if bootstrap and blobs were laid end to end in one flat device, in
    // 512 KiB segments, as nydus computes it (the kernel uses it when mounted without device=).
    let flatPos = meta.length;
    opts.blobs.forEach((b, i) => {
      const mapped = alignUp(flatPos, MAPPED_BLKADDR_ALIGN) / EROFS_BLKSIZ;
      flatPos = (mapped + b.uncompressedSize / EROFS_BLKSIZ) * EROFS_BLKSIZ;
      erofsDeviceSlot.encodeInto(meta, RAFS_V6_DEVTABLE_OFFSET + i * erofsDeviceSlot.size, {
        tag: Buffer.from(b.blobId, 'latin1'),
        blocks: b.uncompressedSize / EROFS_BLKSIZ,
        mapped_blkaddr: mapped,
      });
      rafsV6Blob.encodeInto(meta, blobTableOffset + i * rafsV6Blob.size, {
        blob_id: Buffer.from(b.blobId, 'latin1'),
        blob_index: i,
        chunk_size: opts.chunkSize,
        chunk_count: b.chunkCount,
        compression_algo: b.compressionAlgo ?? RAFS_COMPRESSOR_CODES[opts.compressor].algo,
        digest_algo: opts.digester === 'blake3' ? RAFS_DIGEST_BLAKE3 : RAFS_DIGEST_SHA256,
        features: b.features,
        compressed_size: b.compressedSize,
        uncompressed_size: b.uncompressedSize,
        ci_compressor: b.ciCompressor,
        ci_offset: b.ciOffset,
        ci_compressed_size: b.ciCompressedSize,
        ci_uncompressed_size: b.ciUncompressedSize,
        blob_toc_size: b.tocSize ?? 0,
        blob_toc_digest: b.tocDigest ?? Buffer.alloc(0),
        blob_meta_digest: b.metaDigest ?? Buffer.alloc(0),
        blob_meta_size: b.metaSize ?? 0,
      });
    });
    chunkList.forEach((c, i) => {
      rafsChunkInfo.encodeInto(meta, chunkTableOffset + i * rafsChunkInfo.size, {
        block_id: c.digest,
        blob_index: c.blobIndex,
        flags: c.compressed ? BLOB_CHUNK_FLAG_COMPRESSED : 0,
        compressed_size: c.compressedSize,
        uncompressed_size: c.uncompressedSize,
        compressed_offset: c.compressedOffset,
        uncompressed_offset: c.uncompressedOffset,
        file_offset: 0,
        index: c.indexInBlob,
      });
    });
    prefetch.forEach((nid, i) => meta.writeUInt32LE(nid, prefetchOffset + i * RAFS_PREFETCH_ENTRY_SIZE));
    const flags = RAFS_COMPRESSOR_CODES[opts.compressor].flag
      | (opts.digester === 'blake3' ? RAFS_FLAG_HASH_BLAKE3 : RAFS_FLAG_HASH_SHA256)
      | (explicitUidGid ? RAFS_FLAG_EXPLICIT_UID_GID : 0) | (hasXattr ? RAFS_FLAG_HAS_XATTR : 0);
    rafsV6SuperBlockExt.encodeInto(meta, RAFS_V6_SUPER_EXT_OFFSET, {
      s_flags: flags,
      s_blob_table_offset: blobTableOffset,
      s_blob_table_size: blobTableSize,
      s_chunk_size: opts.chunkSize,
      s_chunk_table_offset: chunkTableSize ? chunkTableOffset : 0,
      s_chunk_table_size: chunkTableSize,
      s_prefetch_table_offset: prefetchSize ? prefetchOffset : 0,
      s_prefetch_table_size: prefetchSize,
    });
  }

  const dataBlocks = block ? opts.blobs.reduce((s, b) => s + b.uncompressedSize / EROFS_BLKSIZ, 0) : 0;
  erofsSuperBlock.encodeInto(meta, EROFS_SUPER_OFFSET, {
    magic: EROFS_SUPER_MAGIC_V1,
    checksum: 0,
    feature_compat: block ? 0 : EROFS_FEATURE_COMPAT_RAFS_V6,
    blkszbits: EROFS_BLKSIZ_BITS,
    root_nid: layout.root.nid,
    inos: layout.inodes.length,
    build_time: opts.buildTime,
    blocks: metaBlocks + dataBlocks,
    meta_blkaddr: 0,
    xattr_blkaddr: 0,
    feature_incompat: EROFS_FEATURE_INCOMPAT_CHUNKED_FILE | (block ? 0 : EROFS_FEATURE_INCOMPAT_DEVICE_TABLE),
    extra_devices: deviceCount,
    devt_slotoff: block ? 0 : RAFS_V6_DEVT_SLOTOFF,
  });
  return { meta, blobBaseBlk };
}
