/** On-disk inodes (erofs_fs.h: erofs_inode_compact, erofs_inode_extended) and their i_format bits. */
import { Struct } from './struct.ts';

export const EROFS_INODE_FLAT_PLAIN = 0;
export const EROFS_INODE_FLAT_INLINE = 2;
export const EROFS_INODE_CHUNK_BASED = 4;

export const EROFS_INODE_LAYOUT_COMPACT = 0;
export const EROFS_INODE_LAYOUT_EXTENDED = 1;
export const EROFS_I_VERSION_MASK = 0x01;
export const EROFS_I_DATALAYOUT_BIT = 1;
export const EROFS_I_DATALAYOUT_MASK = 0x07;

/** i_u.c.format of chunk-based inodes: chunk size = block size << blkbits. */
export const EROFS_CHUNK_FORMAT_BLKBITS_MASK = 0x001f;
/** With 8-byte chunk indexes (device id + blkaddr) rather than a 4-byte blkaddr array. */
export const EROFS_CHUNK_FORMAT_INDEXES = 0x0020;

export const erofsInodeCompact = new Struct('erofs_inode_compact', 32, {
  i_format: { offset: 0, type: 'u16' },
  i_xattr_icount: { offset: 2, type: 'u16' }, // 1 header + (n-1) * 4 bytes of inline xattrs
  i_mode: { offset: 4, type: 'u16' },
  i_nlink: { offset: 6, type: 'u16' },
  i_size: { offset: 8, type: 'u32' },
  i_reserved: { offset: 12, type: 'u32' },
  i_u: { offset: 16, type: 'u32' }, // raw_blkaddr / rdev / chunk format
  i_ino: { offset: 20, type: 'u32' },
  i_uid: { offset: 24, type: 'u16' },
  i_gid: { offset: 26, type: 'u16' },
  i_reserved2: { offset: 28, type: 'u32' },
});

export const erofsInodeExtended = new Struct('erofs_inode_extended', 64, {
  i_format: { offset: 0, type: 'u16' },
  i_xattr_icount: { offset: 2, type: 'u16' },
  i_mode: { offset: 4, type: 'u16' },
  i_reserved: { offset: 6, type: 'u16' },
  i_size: { offset: 8, type: 'u64' },
  i_u: { offset: 16, type: 'u32' },
  i_ino: { offset: 20, type: 'u32' },
  i_uid: { offset: 24, type: 'u32' },
  i_gid: { offset: 28, type: 'u32' },
  i_mtime: { offset: 32, type: 'i64' }, // seconds, signed as the kernel reads it (le64 into time64_t)
  i_mtime_nsec: { offset: 40, type: 'u32' },
  i_nlink: { offset: 44, type: 'u32' },
  i_reserved2: { offset: 48, type: { bytes: 16 } },
});

export function inodeFormat(layout: number, datalayout: number): number {
  return (layout & EROFS_I_VERSION_MASK) | ((datalayout & EROFS_I_DATALAYOUT_MASK) << EROFS_I_DATALAYOUT_BIT);
}

export function inodeLayoutOf(format: number): number {
  return format & EROFS_I_VERSION_MASK;
}

export function inodeDataLayoutOf(format: number): number {
  return (format >> EROFS_I_DATALAYOUT_BIT) & EROFS_I_DATALAYOUT_MASK;
}

/** Inline xattr area size for a given i_xattr_icount (erofs_xattr_ibody_size). */
export function xattrIbodySize(icount: number): number {
  return icount === 0 ? 0 : 12 + 4 * (icount - 1);
}

/** Old/new encoding of device numbers as Linux stores them (new_encode_dev / new_decode_dev). */
export function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

export function decodeDev(dev: number): { major: number; minor: number } {
  return { major: (dev & 0xfff00) >>> 8, minor: (dev & 0xff) | ((dev >>> 12) & 0xfff00) };
}
