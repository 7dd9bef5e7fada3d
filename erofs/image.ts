/**
 * Decoding side of the format: an EROFS / RAFS v6 metadata image held in memory, decoded once into
 * plain objects. Every read is bounds-checked; corrupt or foreign input yields a FormatError naming
 * the structure and offset.
 */
import { constants as C } from 'node:fs';
import { FormatError } from './errors.ts';
import {
  EROFS_BLKSIZ, EROFS_BLKSIZ_BITS, EROFS_FEATURE_COMPAT_RAFS_V6, EROFS_FEATURE_INCOMPAT_CHUNKED_FILE,
  EROFS_FEATURE_INCOMPAT_DEVICE_TABLE, EROFS_ISLOT, EROFS_SUPER_MAGIC_V1, EROFS_SUPER_OFFSET, type ErofsSuperBlock,
  erofsSuperBlock,
} from './super.ts';
import {
  EROFS_CHUNK_FORMAT_BLKBITS_MASK, EROFS_CHUNK_FORMAT_INDEXES, EROFS_INODE_CHUNK_BASED, EROFS_INODE_FLAT_INLINE,
  EROFS_INODE_FLAT_PLAIN, EROFS_INODE_LAYOUT_COMPACT, erofsInodeCompact, erofsInodeExtended, inodeDataLayoutOf,
  inodeLayoutOf, xattrIbodySize,
} from './inode.ts';
import { EROFS_NULL_ADDR, deviceIdMask, erofsInodeChunkIndex } from './chunk.ts';
import { decodeTag, erofsDeviceSlot } from './devtable.ts';
import { type DirEntry, decodeDirBlock } from './dirent.ts';
import { type Xattrs, decodeInlineXattrs } from './xattr.ts';
import {
  RAFS_PREFETCH_ENTRY_SIZE, RAFS_V6_SUPER_EXT_OFFSET, type RafsV6Blob, type RafsV6SuperBlockExt, rafsV6Blob,
  rafsV6SuperBlockExt,
} from './rafs.ts';
import { rafsChunkInfo } from './blobmeta.ts';
import { type Where, named } from './struct.ts';

/**
 * The xattrs of every inode that has none, one map for all: a map per inode was the largest of the
 * allocations of the Debian rootfs bootstrap's validation (6,800 inodes). With the other cuts of that
 * change (decodeNumbers, inline tails as views), its registration plan took 81 against 106 ms (lower
 * quartiles of 8 alternated runs in the daemon's V8 settings, bench host). Never changed: a reader
 * that edits xattrs makes its own map.
 */
const NO_XATTRS: Xattrs = new Map();

const CHUNK_INDEX_SIZE = erofsInodeChunkIndex.size;
const CHUNK_DEVICE_AT = erofsInodeChunkIndex.offsetOf('device_id');
const CHUNK_ADVISE_AT = erofsInodeChunkIndex.offsetOf('advise');
const CHUNK_BLKADDR_AT = erofsInodeChunkIndex.offsetOf('blkaddr');
const CHUNK_INFO_SIZE = rafsChunkInfo.size;
const CI_DIGEST = rafsChunkInfo.offsetOf('block_id');
const CI_DIGEST_SIZE = (rafsChunkInfo.fields.block_id.type as { bytes: number }).bytes;
const CI_BLOB = rafsChunkInfo.offsetOf('blob_index');
const CI_FLAGS = rafsChunkInfo.offsetOf('flags');
const CI_CSIZE = rafsChunkInfo.offsetOf('compressed_size');
const CI_USIZE = rafsChunkInfo.offsetOf('uncompressed_size');
const CI_COFF = rafsChunkInfo.offsetOf('compressed_offset');
const CI_UOFF = rafsChunkInfo.offsetOf('uncompressed_offset');
const CI_INDEX = rafsChunkInfo.offsetOf('index');

export interface DeviceSlot {
  tag: string;
  blocks: number;
  mappedBlkaddr: number;
}

export interface Inode {
  nid: number;
  compact: boolean;
  datalayout: number;
  mode: number;
  nlink: number;
  size: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  ino: number;
  /** The i_u union: raw_blkaddr, rdev or chunk format. */
  iu: number;
  xattrIcount: number;
  /** Byte offset of the inode in the image. */
  offset: number;
  /** Bytes of inode plus inline xattrs. */
  headSize: number;
}

/** A chunk-based inode's chunk as the kernel maps it. */
export interface ChunkMapping {
  deviceId: number;
  /** Block address on the device, or null for a hole. */
  blkaddr: number | null;
}

/** A decoded entry of the bootstrap's chunk table. */
export interface ChunkTableEntry {
  digest: Buffer;
  blobIndex: number;
  flags: number;
  compressedSize: number;
  uncompressedSize: number;
  compressedOffset: number;
  uncompressedOffset: number;
  index: number;
}

/** The S_IFMT values an inode's mode may hold. */
const FILE_TYPES = new Set([C.S_IFREG, C.S_IFDIR, C.S_IFLNK, C.S_IFCHR, C.S_IFBLK, C.S_IFIFO, C.S_IFSOCK]);

export class ErofsImage {
  readonly sb: ErofsSuperBlock;
  /** Present on RAFS v6 bootstraps. */
  readonly ext: RafsV6SuperBlockExt | null;
  readonly devices: DeviceSlot[];
  readonly blobs: RafsV6Blob[];
  readonly chunkSize: number;

  constructor(readonly buf: Buffer, readonly name: string) {
    if (buf.length < EROFS_SUPER_OFFSET + erofsSuperBlock.size) {
      throw new FormatError(`${name}: too small (${buf.length} bytes) to hold an EROFS superblock`);
    }
    const magic = buf.readUInt32LE(EROFS_SUPER_OFFSET + erofsSuperBlock.offsetOf('magic'));
    if (magic !== EROFS_SUPER_MAGIC_V1) {
      throw new FormatError(`${name}: not an EROFS/RAFS v6 image (superblock magic 0x${magic.toString(16)} at offset ${EROFS_SUPER_OFFSET})`);
    }
    this.sb = erofsSuperBlock.decode(buf, EROFS_SUPER_OFFSET, name);
    if (this.sb.blkszbits !== EROFS_BLKSIZ_BITS) {
      throw new FormatError(`${name}: unsupported block size bits ${this.sb.blkszbits} in the superblock`);
    }
    const known = EROFS_FEATURE_INCOMPAT_CHUNKED_FILE | EROFS_FEATURE_INCOMPAT_DEVICE_TABLE | 0x1;
    if (this.sb.feature_incompat & ~known) {
      throw new FormatError(`${name}: unsupported incompatible features 0x${this.sb.feature_incompat.toString(16)}`);
    }
    this.devices = [];
    const devtOff = this.sb.devt_slotoff * erofsDeviceSlot.size;
    for (let i = 0; i < this.sb.extra_devices; i++) {
      const d = erofsDeviceSlot.decode(buf, devtOff + i * erofsDeviceSlot.size, `${name}: device slot ${i}`);
      this.devices.push({ tag: decodeTag(d.tag), blocks: d.blocks, mappedBlkaddr: d.mapped_blkaddr });
    }
    this.ext = null;
    this.blobs = [];
    this.chunkSize = 0;
    if (this.sb.feature_compat & EROFS_FEATURE_COMPAT_RAFS_V6) {
      if (buf.length % EROFS_BLKSIZ !== 0) {
        throw new FormatError(`${name}: truncated RAFS v6 bootstrap (${buf.length} bytes is not a whole number of ${EROFS_BLKSIZ}-byte blocks)`);
      }
      const ext = rafsV6SuperBlockExt.decode(buf, RAFS_V6_SUPER_EXT_OFFSET, `${name}: RAFS v6 extended superblock`);
      this.ext = ext;
      const cs = ext.s_chunk_size;
      if (cs < EROFS_BLKSIZ || (cs & (cs - 1)) !== 0 || cs > 1 << 30) {
        throw new FormatError(`${name}: invalid chunk size 0x${cs.toString(16)} in the RAFS v6 extended superblock`);
      }
      this.chunkSize = cs;
      if (ext.s_blob_table_size % rafsV6Blob.size !== 0) {
        throw new FormatError(`${name}: blob table size ${ext.s_blob_table_size} is not a multiple of ${rafsV6Blob.size}`);
      }
      this.checkRange('blob table', ext.s_blob_table_offset, ext.s_blob_table_size);
      for (let i = 0; i < ext.s_blob_table_size / rafsV6Blob.size; i++) {
        const b = rafsV6Blob.decode(buf, ext.s_blob_table_offset + i * rafsV6Blob.size, `${name}: blob table entry ${i}`);
        if (b.blob_index !== i) throw new FormatError(`${name}: blob table entry ${i} says it is blob ${b.blob_index}`);
        this.blobs.push(b);
      }
      if (ext.s_chunk_table_size % rafsChunkInfo.size !== 0) {
        throw new FormatError(`${name}: chunk table size ${ext.s_chunk_table_size} is not a multiple of ${rafsChunkInfo.size}`);
      }
      this.checkRange('chunk table', ext.s_chunk_table_offset, ext.s_chunk_table_size);
      if (ext.s_prefetch_table_size % RAFS_PREFETCH_ENTRY_SIZE !== 0) {
        throw new FormatError(`${name}: prefetch table size ${ext.s_prefetch_table_size} is not a multiple of 4`);
      }
      if (ext.s_prefetch_table_size) this.checkRange('prefetch table', ext.s_prefetch_table_offset, ext.s_prefetch_table_size);
      if (this.blobs.length !== this.devices.length) {
        throw new FormatError(`${name}: ${this.blobs.length} blobs in the blob table but ${this.devices.length} device slots`);
      }
    }
  }

  get isRafs(): boolean {
    return this.ext !== null;
  }

  blobId(i: number): string {
    const id = this.blobs[i]?.blob_id;
    return id ? decodeTag(id) : this.devices[i]?.tag ?? '';
  }

  /** `what` names the bytes for an error: a function where naming them costs (validation reads every inode's). */
  private checkRange(what: Where, offset: number, size: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || size < 0) throw new FormatError(`${this.name}: ${named(what)} at invalid offset ${offset}`);
    if (offset + size > this.buf.length) {
      throw new FormatError(`${this.name}: ${named(what)} [${offset}, ${offset + size}) lies beyond the end of the image (${this.buf.length} bytes)`);
    }
  }

  private slice(what: Where, offset: number, size: number): Buffer {
    this.checkRange(what, offset, size);
    return this.buf.subarray(offset, offset + size);
  }

  get rootNid(): number {
    return this.sb.root_nid;
  }

  inode(nid: number): Inode {
    const offset = this.sb.meta_blkaddr * EROFS_BLKSIZ + nid * EROFS_ISLOT;
    // (Named only for an error: validation reads every inode.)
    const where = () => `${this.name}: inode ${nid}`;
    if (offset + erofsInodeCompact.size > this.buf.length) throw new FormatError(`${where()} at offset ${offset} lies beyond the end of the image`);
    const format = this.buf.readUInt16LE(offset);
    const layout = inodeLayoutOf(format);
    const datalayout = inodeDataLayoutOf(format);
    let ino: Inode;
    if (layout === EROFS_INODE_LAYOUT_COMPACT) {
      const d = erofsInodeCompact.decodeNumbers(this.buf, offset, where);
      ino = {
        nid, compact: true, datalayout, mode: d.i_mode, nlink: d.i_nlink, size: d.i_size, uid: d.i_uid, gid: d.i_gid,
        mtimeSec: this.sb.build_time, mtimeNsec: this.sb.build_time_nsec, ino: d.i_ino, iu: d.i_u,
        xattrIcount: d.i_xattr_icount, offset, headSize: erofsInodeCompact.size + xattrIbodySize(d.i_xattr_icount),
      };
    } else {
      const d = erofsInodeExtended.decodeNumbers(this.buf, offset, where);
      ino = {
        nid, compact: false, datalayout, mode: d.i_mode, nlink: d.i_nlink, size: d.i_size, uid: d.i_uid, gid: d.i_gid,
        mtimeSec: d.i_mtime, mtimeNsec: d.i_mtime_nsec, ino: d.i_ino, iu: d.i_u,
        xattrIcount: d.i_xattr_icount, offset, headSize: erofsInodeExtended.size + xattrIbodySize(d.i_xattr_icount),
      };
    }
    if (datalayout !== EROFS_INODE_FLAT_PLAIN && datalayout !== EROFS_INODE_FLAT_INLINE && datalayout !== EROFS_INODE_CHUNK_BASED) {
      throw new FormatError(`${where()}: unsupported data layout ${datalayout}`);
    }
    const type = ino.mode & C.S_IFMT;
    if (!FILE_TYPES.has(type)) {
      throw new FormatError(`${where()}: invalid file type in mode 0${ino.mode.toString(8)}`);
    }
    if (ino.mtimeNsec >= 1e9) throw new FormatError(`${where()}: invalid mtime nanoseconds ${ino.mtimeNsec}`);
    return ino;
  }

  /** The inode's xattrs; for one without, the shared empty map (NO_XATTRS): not to be changed. */
  xattrs(ino: Inode): Xattrs {
    // Most inodes have none: no names made for errors that cannot happen.
    if (ino.xattrIcount === 0) return NO_XATTRS;
    const size = xattrIbodySize(ino.xattrIcount);
    const head = ino.compact ? erofsInodeCompact.size : erofsInodeExtended.size;
    return decodeInlineXattrs(this.slice(`inode ${ino.nid} xattrs`, ino.offset + head, size), `${this.name}: inode ${ino.nid} xattrs`);
  }

  /** The bytes of a flat (plain or inline) inode: directory blocks, symlink target. */
  flatData(ino: Inode): Buffer {
    const where = () => `inode ${ino.nid} data`;
    if (ino.datalayout === EROFS_INODE_FLAT_PLAIN) {
      return this.slice(where, ino.iu * EROFS_BLKSIZ, ino.size);
    }
    if (ino.datalayout === EROFS_INODE_FLAT_INLINE) {
      const full = Math.floor(ino.size / EROFS_BLKSIZ) * EROFS_BLKSIZ;
      const tail = ino.size - full;
      const tailOff = ino.offset + ino.headSize;
      if ((tailOff % EROFS_BLKSIZ) + tail > EROFS_BLKSIZ) throw new FormatError(`${this.name}: ${where()}: inline data crosses a block boundary`);
      // Most are a tail alone (a small directory, a symlink): a view, where a copy would join nothing.
      if (!full) return this.slice(where, tailOff, tail);
      return Buffer.concat([this.slice(where, ino.iu * EROFS_BLKSIZ, full), this.slice(where, tailOff, tail)]);
    }
    throw new FormatError(`${this.name}: ${where()}: inode is not flat`);
  }

  dirEntries(ino: Inode): DirEntry[] {
    if ((ino.mode & C.S_IFMT) !== C.S_IFDIR) throw new FormatError(`${this.name}: inode ${ino.nid} is not a directory`);
    const data = this.flatData(ino);
    // Most directories are one block (or an inline tail): its entries as they are decoded.
    if (data.length <= EROFS_BLKSIZ) return decodeDirBlock(data, () => `${this.name}: directory inode ${ino.nid} block 0`);
    const out: DirEntry[] = [];
    for (let off = 0; off < data.length; off += EROFS_BLKSIZ) {
      const block = data.subarray(off, Math.min(off + EROFS_BLKSIZ, data.length));
      for (const e of decodeDirBlock(block, () => `${this.name}: directory inode ${ino.nid} block ${off / EROFS_BLKSIZ}`)) out.push(e);
    }
    return out;
  }

  /** Chunk size of a chunk-based inode. */
  inodeChunkSize(ino: Inode): number {
    return EROFS_BLKSIZ << (ino.iu & EROFS_CHUNK_FORMAT_BLKBITS_MASK);
  }

  /** Where every chunk of a chunk-based inode lives: the one mapping step shared by all readers. */
  chunkMappings(ino: Inode): ChunkMapping[] {
    return this.mapChunks(ino, (_, deviceId, blkaddr) => ({ deviceId, blkaddr }));
  }

  /**
   * chunkMappings() as `visit` takes each chunk (index, device masked as the kernel masks it, block
   * address or null for a hole, and the two u16s as stored: nydus's blob and chunk index, by which
   * nydusd finds the chunk, nydusChunkAddr), into an array of what it returns: no mapping object per
   * chunk on the way (validation maps every chunk of every file once, and keeps only what it resolves
   * them to).
   */
  mapChunks<T>(ino: Inode, visit: (i: number, deviceId: number, blkaddr: number | null, advise: number, deviceIdRaw: number) => T): T[] {
    if (ino.datalayout !== EROFS_INODE_CHUNK_BASED) throw new FormatError(`${this.name}: inode ${ino.nid}: not a chunk-based inode`);
    if (!(ino.iu & EROFS_CHUNK_FORMAT_INDEXES)) throw new FormatError(`${this.name}: inode ${ino.nid}: block-map chunk format is not supported`);
    const bits = ino.iu & EROFS_CHUNK_FORMAT_BLKBITS_MASK;
    if (bits > 18) throw new FormatError(`${this.name}: inode ${ino.nid}: chunk size bits ${bits} out of range`);
    const chunkSize = this.inodeChunkSize(ino);
    const count = Math.ceil(ino.size / chunkSize);
    const start = Math.ceil((ino.offset + ino.headSize) / CHUNK_INDEX_SIZE) * CHUNK_INDEX_SIZE;
    this.checkRange(() => `inode ${ino.nid} chunk indexes (${count})`, start, count * CHUNK_INDEX_SIZE);
    const out: T[] = new Array(count);
    const mask = deviceIdMask(this.devices.length);
    const b = this.buf;
    // The hot loop of big files: two fields read in place (the checked range bounds them).
    for (let i = 0; i < count; i++) {
      const at = start + i * CHUNK_INDEX_SIZE;
      const blkaddr = (b[at + CHUNK_BLKADDR_AT] | b[at + CHUNK_BLKADDR_AT + 1] << 8 | b[at + CHUNK_BLKADDR_AT + 2] << 16) + b[at + CHUNK_BLKADDR_AT + 3] * 0x1000000;
      const deviceIdRaw = b[at + CHUNK_DEVICE_AT] | b[at + CHUNK_DEVICE_AT + 1] << 8;
      const advise = b[at + CHUNK_ADVISE_AT] | b[at + CHUNK_ADVISE_AT + 1] << 8;
      if (blkaddr === EROFS_NULL_ADDR) {
        out[i] = visit(i, deviceIdRaw, null, advise, deviceIdRaw);
        continue;
      }
      const deviceId = deviceIdRaw & mask;
      if (deviceId > this.devices.length) throw new FormatError(`${this.name}: inode ${ino.nid}: chunk ${i} names device ${deviceId}, the image has ${this.devices.length}`);
      out[i] = visit(i, deviceId, blkaddr, advise, deviceIdRaw);
    }
    return out;
  }

  chunkTable(): ChunkTableEntry[] {
    return this.mapChunkTable((e) => ({ ...e }));
  }

  /**
   * The chunk table's entries, each as `make` turns it into what the caller keeps. The entry it is
   * given is one object, refilled for each (its digest a view of the image buffer, the entry's own):
   * validation keeps every chunk, as a ChunkRef, and a decoded entry apiece beside it was as many
   * objects again.
   */
  mapChunkTable<T>(make: (e: Readonly<ChunkTableEntry>, i: number) => T): T[] {
    if (!this.ext || !this.ext.s_chunk_table_size) return [];
    const n = this.ext.s_chunk_table_size / CHUNK_INFO_SIZE;
    const out: T[] = new Array(n);
    const b = this.buf;
    const u32 = (at: number) => (b[at] | b[at + 1] << 8 | b[at + 2] << 16) + b[at + 3] * 0x1000000;
    const e: ChunkTableEntry = {
      digest: b, blobIndex: 0, flags: 0, compressedSize: 0, uncompressedSize: 0, compressedOffset: 0, uncompressedOffset: 0, index: 0,
    };
    // The hot loop of big images: fields read in place (the constructor checked the table's range);
    // an entry is named only for its error (chunkEntry).
    for (let i = 0; i < n; i++) {
      const at = this.ext.s_chunk_table_offset + i * CHUNK_INFO_SIZE;
      const blobIndex = u32(at + CI_BLOB);
      if (blobIndex >= this.blobs.length) throw new FormatError(`${this.chunkEntry(i)} names blob ${blobIndex}, the image has ${this.blobs.length}`);
      e.digest = b.subarray(at + CI_DIGEST, at + CI_DIGEST + CI_DIGEST_SIZE);
      e.blobIndex = blobIndex;
      e.flags = u32(at + CI_FLAGS);
      e.compressedSize = u32(at + CI_CSIZE);
      e.uncompressedSize = u32(at + CI_USIZE);
      e.compressedOffset = this.u64(at + CI_COFF, i, 'compressed_offset');
      e.uncompressedOffset = this.u64(at + CI_UOFF, i, 'uncompressed_offset');
      e.index = u32(at + CI_INDEX);
      out[i] = make(e, i);
    }
    return out;
  }

  /** Chunk table entry `i`, as an error names it. */
  private chunkEntry(i: number): string {
    return `${this.name}: chunk table entry ${i}`;
  }

  /** A little-endian u64 of chunk table entry `entry` that must be a safe integer. */
  private u64(at: number, entry: number, field: string): number {
    const b = this.buf;
    const hi = (b[at + 4] | b[at + 5] << 8 | b[at + 6] << 16) + b[at + 7] * 0x1000000;
    if (hi >= 0x200000) throw new FormatError(`${this.chunkEntry(entry)} (rafs_v5_chunk_info.${field}): out of range (high word 0x${hi.toString(16)})`);
    return hi * 0x1_0000_0000 + ((b[at] | b[at + 1] << 8 | b[at + 2] << 16) + b[at + 3] * 0x1000000);
  }

  prefetchTable(): number[] {
    if (!this.ext || !this.ext.s_prefetch_table_size) return [];
    const t = this.slice('prefetch table', this.ext.s_prefetch_table_offset, this.ext.s_prefetch_table_size);
    const out: number[] = [];
    for (let i = 0; i < t.length; i += RAFS_PREFETCH_ENTRY_SIZE) out.push(t.readUInt32LE(i));
    return out;
  }
}
