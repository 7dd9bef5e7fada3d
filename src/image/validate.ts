/**
 * The one validation gate for untrusted bootstraps. Every reader (check, inspect, export, unpack and
 * the daemon) goes through validateImage() and afterwards only uses what it returns: superblock,
 * blob table, chunk table and every reachable inode, decoded once each (hardlinks share the decoded
 * inode and its chunk list) and checked against each other. Anything out of range is a FormatError
 * naming the structure. The work is bounded by the bootstrap's size: every chunk index, dirent and
 * table entry is read at most once, and no size from the image is allocated before it is checked.
 */
import { constants as C } from 'node:fs';
import { INLINED_BLOB_ID_PLACEHOLDER } from '../../erofs/blob-toc.ts';
import { FormatError, NydusError } from '../../erofs/errors.ts';
import { type ErofsImage, type Inode } from '../../erofs/image.ts';
import {
  EROFS_BLKSIZ, EROFS_FEATURE_COMPAT_RAFS_V6, EROFS_FEATURE_COMPAT_SB_CHKSUM, superBlockChecksum,
} from '../../erofs/super.ts';
import {
  EROFS_CHUNK_FORMAT_BLKBITS_MASK, EROFS_CHUNK_FORMAT_INDEXES, EROFS_INODE_CHUNK_BASED, EROFS_INODE_FLAT_INLINE,
  EROFS_INODE_FLAT_PLAIN, erofsInodeCompact, erofsInodeExtended,
} from '../../erofs/inode.ts';
import { EROFS_NAME_LEN, type DirEntry } from '../../erofs/dirent.ts';
import { type Xattrs, xattrNameProblem } from '../../erofs/xattr.ts';
import { EROFS_SYMLINK_MAX } from '../../erofs/limits.ts';
import { nydusChunkAddr } from '../../erofs/chunk.ts';
import {
  BLOB_CHUNK_FLAG_COMPRESSED, BLOB_CHUNK_FLAG_HAS_HOLE, BLOB_CHUNK_MAX_SIZE, BLOB_FEATURE_BATCH, BLOB_FEATURE_ENCRYPTED,
  BLOB_FEATURE_TARFS, BLOB_FEATURE_ZRAN, BLOB_MAX_CHUNKS,
} from '../../erofs/blobmeta.ts';
import { RAFS_COMPRESSOR_CODES, RAFS_DIGEST_BLAKE3, RAFS_DIGEST_SHA256 } from '../../erofs/rafs.ts';
import { COMPRESSORS, type CompressorName } from '../blob/compress.ts';
import type { Digester } from '../blob/digest.ts';
import type { ChunkRef } from '../builder/tree.ts';
import { HeapRoom } from '../heap-room.ts';

/** One blob of the image, as the blob table and device table agree on it. */
export interface ValidatedBlob {
  index: number;
  /** 64 lowercase hex digits: safe to join with a directory. */
  id: string;
  compressor: CompressorName;
  digester: Digester;
  /** Size of the blob's uncompressed address space (the device size the kernel sees). */
  uncompressedSize: number;
  /** The blob table's compressed size: every chunk's stored bytes end at or before it. */
  compressedSize: number;
  chunkCount: number;
  features: number;
  /** Where the blob's chunk-info array is in it, and its stored size: the blob meta header follows it. */
  ciOffset: number;
  ciCompressedSize: number;
  /** The chunks the chunk table lists for this blob, in uncompressed order (none overlap). */
  chunks: ChunkRef[];
}

/** A reachable inode, decoded and checked once. */
export interface ValidatedInode {
  inode: Inode;
  xattrs: Xattrs;
  /** Symlinks: the target. */
  target?: Buffer;
  /** Regular files stored in the bootstrap itself (flat layouts). */
  flatData?: Buffer;
  /** Directories: the entries besides "." and "..", in name order. */
  entries?: DirEntry[];
  /** Chunk-based regular files: each chunk position's chunk, null for a hole (reads as zeros). */
  chunks?: Array<ChunkRef | null>;
  /** Names that point at this inode (the root has none). */
  names: number;
}

export interface ValidatedImage {
  image: ErofsImage;
  name: string;
  chunkSize: number;
  blobs: ValidatedBlob[];
  rootNid: number;
  /** Every reachable inode by nid, parents before children. */
  inodes: Map<number, ValidatedInode>;
  /** Prefetch table entries that name reachable inodes, in order. */
  prefetchNids: number[];
}

const BLOB_ID = /^[0-9a-f]{64}$/;
/** A dirent's file type (EROFS_FT_*) as the S_IFMT bits of its inode's mode. */
const MODE_OF_FILE_TYPE = [0, C.S_IFREG, C.S_IFDIR, C.S_IFCHR, C.S_IFBLK, C.S_IFIFO, C.S_IFSOCK, C.S_IFLNK];
/** Blob features whose data layout nydus-ts cannot read: refusing beats wrong bytes. */
const UNSUPPORTED_BLOB_FEATURES: Array<[number, string]> = [
  [BLOB_FEATURE_ZRAN, 'zran'], [BLOB_FEATURE_BATCH, 'batch'], [BLOB_FEATURE_ENCRYPTED, 'encrypted'], [BLOB_FEATURE_TARFS, 'tarfs'],
];
/** i_format bits besides the layout (bit 0) and data layout (bits 1..3). */
const I_FORMAT_RESERVED = ~0xf & 0xffff;
/** i_u of chunk-based inodes: the chunk size bits and the index-format flag; the rest is reserved. */
const CHUNK_FORMAT_RESERVED = ~(EROFS_CHUNK_FORMAT_BLKBITS_MASK | EROFS_CHUNK_FORMAT_INDEXES) >>> 0;

/** zstd's worst case for incompressible input (ZSTD_COMPRESSBOUND); raw chunks are never larger. */
export function compressedBound(size: number): number {
  return size + (size >>> 8) + (size < 128 * 1024 ? (128 * 1024 - size) >>> 11 : 0);
}

function compressorOf(name: string, i: number, algo: number): CompressorName {
  const known = COMPRESSORS.find((c) => RAFS_COMPRESSOR_CODES[c].algo === algo);
  if (known) return known;
  throw new NydusError(`${name}: blob table entry ${i} uses compression algorithm ${algo}, which nydus-ts does not support`);
}

function digesterOf(name: string, i: number, algo: number): Digester {
  if (algo === RAFS_DIGEST_BLAKE3) return 'blake3';
  if (algo === RAFS_DIGEST_SHA256) return 'sha256';
  throw new NydusError(`${name}: blob table entry ${i} uses digest algorithm ${algo}, which nydus-ts does not support`);
}

function validateSuperBlock(image: ErofsImage): void {
  const { sb, name } = image;
  if (!image.isRafs) throw new FormatError(`${name}: not a RAFS v6 bootstrap (compat feature RAFS_V6 is not set)`);
  if (sb.feature_compat & EROFS_FEATURE_COMPAT_SB_CHKSUM) {
    const want = superBlockChecksum(image.buf.subarray(0, EROFS_BLKSIZ));
    if (want !== sb.checksum) {
      throw new FormatError(`${name}: erofs_super_block checksum 0x${sb.checksum.toString(16)} does not match its contents (crc32c 0x${want.toString(16)})`);
    }
  }
  // Compat bits are ignored by kernels that predate them and change how later ones read the image
  // (XATTR_FILTER hides xattrs a filter says are absent; 0x8 makes xattrs unreadable): nydus sets
  // only these two, and a reader here must read what every kernel reads.
  const unknownCompat = sb.feature_compat & ~(EROFS_FEATURE_COMPAT_SB_CHKSUM | EROFS_FEATURE_COMPAT_RAFS_V6);
  if (unknownCompat) throw new FormatError(`${name}: erofs_super_block.feature_compat has bits 0x${(unknownCompat >>> 0).toString(16)} set that nydus never sets (only SB_CHKSUM and RAFS_V6 are read)`);
  // The kernel refuses to mount any other directory block size.
  if (sb.dirblkbits !== 0) throw new FormatError(`${name}: erofs_super_block.dirblkbits ${sb.dirblkbits} is not 0 (directory blocks are the 4 KiB blocks)`);
  if (sb.packed_nid !== 0) throw new FormatError(`${name}: erofs_super_block.packed_nid ${sb.packed_nid} is set (fragments are not supported)`);
  if (sb.xattr_prefix_count !== 0) throw new FormatError(`${name}: erofs_super_block.xattr_prefix_count ${sb.xattr_prefix_count} without long xattr prefix support`);
  if (sb.sb_extslots !== 0) throw new FormatError(`${name}: erofs_super_block.sb_extslots ${sb.sb_extslots} is not 0`);
  if (image.chunkSize > BLOB_CHUNK_MAX_SIZE) {
    throw new FormatError(`${name}: rafs_v6_super_block_ext.s_chunk_size 0x${image.chunkSize.toString(16)} is larger than 0x${BLOB_CHUNK_MAX_SIZE.toString(16)}`);
  }
}

/** What a reader of a bootstrap may take that others may not. */
export interface ValidateOptions {
  /**
   * The blob id a bootstrap inlined in its blob gives that blob (INLINED_BLOB_ID_PLACEHOLDER): read
   * where the blob is given its id from elsewhere (nydus-image merge --blob-digests). Everywhere else
   * a blob is found, cached and fetched by its id, and the placeholder is refused saying so.
   */
  inlinedBlobId?: boolean;
}

function validateBlobTable(image: ErofsImage, opts: ValidateOptions): ValidatedBlob[] {
  const { name } = image;
  const seen = new Map<string, number>();
  return image.blobs.map((b, i) => {
    const where = `${name}: blob table entry ${i}`;
    const id = image.blobId(i);
    if (id === INLINED_BLOB_ID_PLACEHOLDER && !opts.inlinedBlobId) {
      throw new FormatError(`${where}: the blob id is the placeholder of a bootstrap inlined in its blob (nydus-image create --blob-inline-meta), not the blob's digest: `
        + 'merge the layer bootstraps with nydus-image merge --blob-digests to give each blob its id');
    }
    if (!BLOB_ID.test(id) && id !== INLINED_BLOB_ID_PLACEHOLDER) throw new FormatError(`${where}: invalid blob id ${JSON.stringify(id)} (must be 64 lowercase hex digits)`);
    // Blobs are found, cached and served by id: two entries of one id would be one file for two blobs.
    if (seen.has(id)) throw new FormatError(`${where}: blob id ${id} is entry ${seen.get(id)}'s too`);
    seen.set(id, i);
    const dev = image.devices[i];
    if (dev.tag !== id) throw new FormatError(`${name}: device slot ${i} tag ${JSON.stringify(dev.tag)} differs from blob id ${id}`);
    // nydus rounds the device up to whole blocks; the blob table keeps the exact size.
    if (dev.blocks !== Math.ceil(b.uncompressed_size / EROFS_BLKSIZ)) {
      throw new FormatError(`${name}: device slot ${i} has ${dev.blocks} blocks, blob table entry ${i} says ${b.uncompressed_size} uncompressed bytes`);
    }
    if (b.chunk_size !== image.chunkSize) throw new FormatError(`${where}: chunk size ${b.chunk_size} differs from the superblock's ${image.chunkSize}`);
    // Chunk indexes size the daemon's per-blob state (a byte or a bit a chunk): bounded, as nydus
    // bounds them, and by the blocks the chunks need (each starts on a block of its own).
    if (b.chunk_count > BLOB_MAX_CHUNKS) throw new FormatError(`${where}: chunk count ${b.chunk_count} exceeds ${BLOB_MAX_CHUNKS}`);
    if (b.chunk_count > dev.blocks) throw new FormatError(`${where}: chunk count ${b.chunk_count} exceeds the ${dev.blocks} blocks of its uncompressed size ${b.uncompressed_size}`);
    if (b.uncompressed_size > b.chunk_count * image.chunkSize) {
      throw new FormatError(`${where}: uncompressed size ${b.uncompressed_size} exceeds ${b.chunk_count} chunks of ${image.chunkSize} bytes`);
    }
    for (const [bit, feature] of UNSUPPORTED_BLOB_FEATURES) {
      if (b.features & bit) throw new NydusError(`${where}: blob feature ${feature} is not supported by nydus-ts`);
    }
    if (b.cipher_algo !== 0) throw new NydusError(`${where}: encrypted blobs (cipher ${b.cipher_algo}) are not supported by nydus-ts`);
    return {
      index: i, id, compressor: compressorOf(name, i, b.compression_algo), digester: digesterOf(name, i, b.digest_algo),
      uncompressedSize: b.uncompressed_size, compressedSize: b.compressed_size, chunkCount: b.chunk_count, features: b.features,
      ciOffset: b.ci_offset, ciCompressedSize: b.ci_compressed_size, chunks: [],
    };
  });
}

/** What is wrong with a chunk's ranges against its blob and the chunk size, or null. */
function chunkProblem(c: ChunkRef, blob: ValidatedBlob, chunkSize: number): string | null {
  if (c.uncompressedSize < 1 || c.uncompressedSize > chunkSize) return `uncompressed size ${c.uncompressedSize} is not in [1, ${chunkSize}]`;
  if (c.compressedSize < 1 || c.compressedSize > compressedBound(chunkSize)) return `compressed size ${c.compressedSize} is out of range`;
  if (!c.compressed && c.compressedSize !== c.uncompressedSize) return `stored raw but sizes differ (${c.compressedSize} and ${c.uncompressedSize})`;
  if (c.compressed && blob.compressor === 'none') return 'marked compressed in a blob without compression';
  if (c.uncompressedOffset % EROFS_BLKSIZ !== 0) return `uncompressed offset ${c.uncompressedOffset} is not ${EROFS_BLKSIZ}-aligned`;
  if (c.uncompressedOffset + c.uncompressedSize > blob.uncompressedSize) {
    return `uncompressed range [${c.uncompressedOffset}, ${c.uncompressedOffset + c.uncompressedSize}) lies outside blob ${blob.id} (${blob.uncompressedSize} bytes)`;
  }
  if (c.compressedOffset + c.compressedSize > blob.compressedSize) {
    return `stored range [${c.compressedOffset}, ${c.compressedOffset + c.compressedSize}) lies outside blob ${blob.id} (${blob.compressedSize} bytes)`;
  }
  if (c.indexInBlob >= blob.chunkCount) return `index ${c.indexInBlob} is not below the blob's chunk count ${blob.chunkCount}`;
  return null;
}

/**
 * Sorts a blob's chunks by uncompressed offset and refuses overlaps and one index used for two
 * chunks (the daemon keys its work by index). Identical duplicates collapse into one.
 */
function indexChunks(blob: ValidatedBlob, chunks: ChunkRef[], what: string): Map<number, ChunkRef> {
  // Builders write the table in blob order: sorted already, it is not sorted again (the comparator,
  // interpreted, ran some 60,000 times for the Debian rootfs bootstrap's 5,200 chunks).
  let sorted = true;
  for (let i = 1; i < chunks.length && sorted; i++) sorted = chunks[i - 1].uncompressedOffset <= chunks[i].uncompressedOffset;
  if (!sorted) chunks.sort((a, b) => a.uncompressedOffset - b.uncompressedOffset);
  const byOffset = new Map<number, ChunkRef>();
  const indexes = new Set<number>();
  const kept: ChunkRef[] = [];
  let prev: ChunkRef | null = null;
  for (let i = 0; i < chunks.length; i++) {
    const c = chunks[i];
    if (prev && c.uncompressedOffset === prev.uncompressedOffset && c.indexInBlob === prev.indexInBlob && c.uncompressedSize === prev.uncompressedSize
      && c.compressedOffset === prev.compressedOffset && c.compressedSize === prev.compressedSize && c.compressed === prev.compressed && c.digest.equals(prev.digest)) continue;
    if (prev && c.uncompressedOffset < prev.uncompressedOffset + prev.uncompressedSize) {
      throw new FormatError(`${what}: chunks ${prev.indexInBlob} and ${c.indexInBlob} of blob ${blob.id} overlap at uncompressed offset ${c.uncompressedOffset}`);
    }
    if (indexes.has(c.indexInBlob)) throw new FormatError(`${what}: two chunks of blob ${blob.id} claim index ${c.indexInBlob}`);
    indexes.add(c.indexInBlob);
    byOffset.set(c.uncompressedOffset, c);
    kept.push(c);
    prev = c;
  }
  if (kept.length !== chunks.length) {
    chunks.length = 0;
    for (let i = 0; i < kept.length; i++) chunks.push(kept[i]);
  }
  return byOffset;
}

function validateChunkTable(image: ErofsImage, blobs: ValidatedBlob[]): Array<Map<number, ChunkRef>> {
  // (An entry's name is made only for its error, not once per chunk.)
  const where = (i: number) => `${image.name}: chunk table entry ${i} (rafs_v5_chunk_info)`;
  image.mapChunkTable((c, i) => {
    if (c.flags & ~(BLOB_CHUNK_FLAG_COMPRESSED | BLOB_CHUNK_FLAG_HAS_HOLE)) throw new FormatError(`${where(i)}: unknown flags 0x${c.flags.toString(16)}`);
    const blob = blobs[c.blobIndex];
    const ref: ChunkRef = {
      blobIndex: c.blobIndex, indexInBlob: c.index, digest: c.digest, uncompressedOffset: c.uncompressedOffset,
      uncompressedSize: c.uncompressedSize, compressedOffset: c.compressedOffset, compressedSize: c.compressedSize,
      compressed: (c.flags & BLOB_CHUNK_FLAG_COMPRESSED) !== 0,
    };
    const problem = chunkProblem(ref, blob, image.chunkSize);
    if (problem) throw new FormatError(`${where(i)}: ${problem}`);
    blob.chunks.push(ref);
  });
  return blobs.map((b) => indexChunks(b, b.chunks, `${image.name}: chunk table`));
}

/** A directory entry's path, from its directory's (made for an error, and for each directory). */
function childPath(dir: string, name: Buffer): string {
  return dir === '/' ? `/${name.toString('utf8')}` : `${dir}/${name.toString('utf8')}`;
}

function checkName(name: Buffer, where: string): void {
  if (name.length === 0 || name.length > EROFS_NAME_LEN || name.includes(0x2f) || name.includes(0)) {
    throw new FormatError(`${where}: invalid file name ${JSON.stringify(name.toString('latin1'))}`);
  }
}

/** Inode fields every kind shares: reserved bits and impossible values. */
function checkInodeFields(image: ErofsImage, ino: Inode, where: () => string): void {
  const format = image.buf.readUInt16LE(ino.offset);
  if (format & I_FORMAT_RESERVED) throw new FormatError(`${where()}: reserved i_format bits set (0x${format.toString(16)})`);
  if (ino.compact) {
    // Kernels since 6.13 or so read i_reserved as the inode's mtime past build_time, older ones
    // ignore it (the image's time): nydus writes 0, the one value every kernel reads alike.
    if (image.buf.readUInt32LE(ino.offset + erofsInodeCompact.offsetOf('i_reserved')) !== 0) throw new FormatError(`${where()}: erofs_inode_compact.i_reserved is not zero`);
    if (image.buf.readUInt32LE(ino.offset + erofsInodeCompact.offsetOf('i_reserved2')) !== 0) throw new FormatError(`${where()}: erofs_inode_compact.i_reserved2 is not zero`);
  } else {
    if (image.buf.readUInt16LE(ino.offset + erofsInodeExtended.offsetOf('i_reserved')) !== 0) throw new FormatError(`${where()}: erofs_inode_extended.i_reserved is not zero`);
    const r2 = erofsInodeExtended.offsetOf('i_reserved2');
    const b = image.buf;
    const at = ino.offset + r2;
    if ((b.readUInt32LE(at) | b.readUInt32LE(at + 4) | b.readUInt32LE(at + 8) | b.readUInt32LE(at + 12)) !== 0) throw new FormatError(`${where()}: erofs_inode_extended.i_reserved2 is not zero`);
  }
  if (ino.nlink === 0) throw new FormatError(`${where()}: i_nlink is 0`);
  const type = ino.mode & C.S_IFMT;
  if (type !== C.S_IFREG && ino.datalayout === EROFS_INODE_CHUNK_BASED) throw new FormatError(`${where()}: only regular files can be chunk-based (mode 0${ino.mode.toString(8)})`);
  if ((type === C.S_IFCHR || type === C.S_IFBLK || type === C.S_IFIFO || type === C.S_IFSOCK) && ino.size !== 0) {
    throw new FormatError(`${where()}: a special file with size ${ino.size}`);
  }
}

/** Each name as the builder's check takes it (xattrNameProblem): what one accepts, the other does. */
function validateXattrs(xattrs: Xattrs, where: () => string): void {
  for (const name of xattrs.keys()) {
    const problem = xattrNameProblem(Buffer.from(name, 'latin1'));
    if (problem) throw new FormatError(`${where()}: xattr name ${JSON.stringify(name)}: ${problem}`);
  }
}

/** The chunks of a chunk-based regular file, each resolved and sized as the file needs it. */
function fileChunks(
  image: ErofsImage, ino: Inode, where: () => string, resolve: (blobIndex: number, offset: number, where: () => string, chunk: number) => ChunkRef,
): Array<ChunkRef | null> {
  if (ino.iu & CHUNK_FORMAT_RESERVED) throw new FormatError(`${where()}: reserved chunk format bits set (0x${ino.iu.toString(16)})`);
  const chunkSize = image.inodeChunkSize(ino);
  if (chunkSize !== image.chunkSize) throw new FormatError(`${where()}: chunk size ${chunkSize} differs from the image's ${image.chunkSize}`);
  return image.mapChunks(ino, (i, deviceId, blkaddr, advise, deviceIdRaw) => {
    if (blkaddr === null) return null;
    if (deviceId === 0) throw new FormatError(`${where()}: chunk ${i} is on the primary device, which a bootstrap does not hold`);
    const ref = resolve(deviceId - 1, blkaddr * EROFS_BLKSIZ, where, i);
    // The kernel finds the chunk by its device and block, nydusd by the blob and chunk index nydus
    // keeps beside them: the two must name one chunk, or the two would read different bytes.
    const want = nydusChunkAddr(ref.blobIndex, ref.indexInBlob);
    if (advise !== want.advise || deviceIdRaw !== want.device_id) {
      throw new FormatError(`${where()}: chunk ${i}: its index fields (0x${advise.toString(16)}, 0x${deviceIdRaw.toString(16)}) do not name chunk ${ref.indexInBlob} of blob ${ref.blobIndex}, the chunk at its block (nydusd finds it by them)`);
    }
    const expect = Math.min(chunkSize, ino.size - i * chunkSize);
    if (ref.uncompressedSize !== expect) throw new FormatError(`${where()}: chunk ${i} holds ${ref.uncompressedSize} bytes, the file needs ${expect}`);
    return ref;
  });
}

export function validateImage(image: ErofsImage, opts: ValidateOptions = {}): ValidatedImage {
  const { name } = image;
  validateSuperBlock(image);
  const blobs = validateBlobTable(image, opts);
  const byOffset = validateChunkTable(image, blobs);
  // Every chunk is read against its digest, and the chunk table is where a RAFS v6 bootstrap keeps
  // them: a chunk that is not there cannot be verified (a blob's own chunk-info array has no digests),
  // so it is refused here, for every reader alike.
  const resolve = (blobIndex: number, offset: number, where: () => string, chunk: number): ChunkRef => {
    const hit = byOffset[blobIndex].get(offset);
    if (!hit) throw new FormatError(`${where()} chunk ${chunk}: no chunk at offset ${offset} of blob ${blobs[blobIndex].id} in the chunk table (its digest is needed to verify its data)`);
    return hit;
  };

  const inodes = new Map<number, ValidatedInode>();
  // An inode's path is made only for an error, not once per entry: `path` makes it.
  const decode = (nid: number, path: () => string): ValidatedInode => {
    const ino = image.inode(nid);
    const where = () => `${name}: ${path()} (inode ${nid})`;
    checkInodeFields(image, ino, where);
    const v: ValidatedInode = { inode: ino, xattrs: image.xattrs(ino), names: 0 };
    validateXattrs(v.xattrs, where);
    const type = ino.mode & C.S_IFMT;
    if (type === C.S_IFLNK) {
      v.target = image.flatData(ino);
      if (v.target.length === 0 || v.target.length > EROFS_SYMLINK_MAX) throw new FormatError(`${where()}: symlink target of ${v.target.length} bytes`);
      if (v.target.includes(0)) throw new FormatError(`${where()}: symlink target holds a NUL byte`);
    } else if (type === C.S_IFREG) {
      if (ino.datalayout === EROFS_INODE_CHUNK_BASED) v.chunks = fileChunks(image, ino, where, resolve);
      else v.flatData = image.flatData(ino);
    } else if (type === C.S_IFDIR) {
      if (ino.datalayout !== EROFS_INODE_FLAT_PLAIN && ino.datalayout !== EROFS_INODE_FLAT_INLINE) throw new FormatError(`${where()}: directory with data layout ${ino.datalayout}`);
    }
    return v;
  };

  const room = new HeapRoom(name);
  const root = decode(image.rootNid, () => '/');
  if ((root.inode.mode & C.S_IFMT) !== C.S_IFDIR) throw new FormatError(`${name}: root inode ${image.rootNid} is not a directory`);
  inodes.set(image.rootNid, root);
  // Depth-first over directories; every directory is entered once (a second path to it is a cycle or
  // a second parent, both refused), every other inode is decoded at its first name only.
  const stack: Array<[number, number, string]> = [[image.rootNid, image.rootNid, '/']];
  while (stack.length) {
    const [nid, parentNid, path] = stack.pop()!;
    const dir = inodes.get(nid)!;
    const where = `${name}: directory ${path} (inode ${nid})`;
    const all = image.dirEntries(dir.inode);
    dir.entries = [];
    let prev: Buffer | null = null;
    let dots = 0;
    for (const e of all) {
      if (prev && Buffer.compare(prev, e.name) >= 0) throw new FormatError(`${where}: entries are not sorted`);
      prev = e.name;
      const dot = e.name[0] === 0x2e && (e.name.length === 1 || (e.name.length === 2 && e.name[1] === 0x2e));
      if (dot) {
        const n = e.name.length === 1 ? '.' : '..';
        const want = n === '.' ? nid : parentNid;
        if (e.nid !== want) throw new FormatError(`${where}: "${n}" points to inode ${e.nid}, expected ${want}`);
        if (MODE_OF_FILE_TYPE[e.fileType] !== C.S_IFDIR) throw new FormatError(`${where}: "${n}" has file type ${e.fileType}, not a directory's`);
        dots++;
        continue;
      }
      checkName(e.name, where);
      let child = inodes.get(e.nid);
      if (!child) {
        room.tick();
        child = decode(e.nid, () => childPath(path, e.name));
        inodes.set(e.nid, child);
      } else if ((child.inode.mode & C.S_IFMT) === C.S_IFDIR || e.nid === image.rootNid) {
        throw new FormatError(`${where}: directory inode ${e.nid} is reachable twice (a cycle or a second parent)`);
      }
      child.names++;
      const ft = MODE_OF_FILE_TYPE[e.fileType];
      if (ft !== (child.inode.mode & C.S_IFMT)) throw new FormatError(`${where}: entry ${JSON.stringify(e.name.toString('latin1'))} has file type ${e.fileType}, its inode says mode 0${child.inode.mode.toString(8)}`);
      dir.entries.push(e);
      if (ft === C.S_IFDIR) stack.push([e.nid, nid, childPath(path, e.name)]);
    }
    if (dots !== 2) throw new FormatError(`${where}: lacks "." or ".."`);
  }
  inodes.forEach((v, nid) => {
    if ((v.inode.mode & C.S_IFMT) !== C.S_IFDIR && v.names > v.inode.nlink) {
      throw new FormatError(`${name}: inode ${nid} has ${v.names} names but i_nlink ${v.inode.nlink}`);
    }
  });
  if (inodes.size !== image.sb.inos) throw new FormatError(`${name}: superblock counts ${image.sb.inos} inodes, the tree holds ${inodes.size}`);
  const prefetchNids = image.prefetchTable().filter((nid) => inodes.has(nid));
  return { image, name, chunkSize: image.chunkSize, blobs, rootNid: image.rootNid, inodes, prefetchNids };
}

