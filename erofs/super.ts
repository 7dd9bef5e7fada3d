/** The EROFS superblock (erofs_fs.h: struct erofs_super_block) and block-size facts. */
import { Struct } from './struct.ts';

/** To allow for x86 boot sectors and other oddities the superblock starts at 1024. */
export const EROFS_SUPER_OFFSET = 1024;
export const EROFS_SUPER_MAGIC_V1 = 0xe0f5e1e2;
export const EROFS_BLKSIZ_BITS = 12;
export const EROFS_BLKSIZ = 1 << EROFS_BLKSIZ_BITS;
/** Inodes are addressed by nid = offset / 32 from meta_blkaddr. */
export const EROFS_ISLOTBITS = 5;
export const EROFS_ISLOT = 1 << EROFS_ISLOTBITS;

export const EROFS_FEATURE_COMPAT_SB_CHKSUM = 0x00000001;
export const EROFS_FEATURE_COMPAT_MTIME = 0x00000002;
export const EROFS_FEATURE_COMPAT_XATTR_FILTER = 0x00000004;
/** Nydus marks its RAFS v6 bootstraps with this compat bit. */
export const EROFS_FEATURE_COMPAT_RAFS_V6 = 0x40000000;

export const EROFS_FEATURE_INCOMPAT_ZERO_PADDING = 0x00000001;
export const EROFS_FEATURE_INCOMPAT_CHUNKED_FILE = 0x00000004;
export const EROFS_FEATURE_INCOMPAT_DEVICE_TABLE = 0x00000008;
export const EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES = 0x00000040;

export const erofsSuperBlock = new Struct('erofs_super_block', 128, {
  magic: { offset: 0, type: 'u32' },
  checksum: { offset: 4, type: 'u32' }, // crc32c, only checked with SB_CHKSUM
  feature_compat: { offset: 8, type: 'u32' },
  blkszbits: { offset: 12, type: 'u8' },
  sb_extslots: { offset: 13, type: 'u8' },
  root_nid: { offset: 14, type: 'u16' },
  inos: { offset: 16, type: 'u64' },
  build_time: { offset: 24, type: 'u64' }, // seconds; compact inodes take this mtime
  build_time_nsec: { offset: 32, type: 'u32' },
  blocks: { offset: 36, type: 'u32' }, // total blocks, for statfs
  meta_blkaddr: { offset: 40, type: 'u32' }, // block where nid 0 lives
  xattr_blkaddr: { offset: 44, type: 'u32' }, // shared xattr area
  uuid: { offset: 48, type: { bytes: 16 } },
  volume_name: { offset: 64, type: { bytes: 16 } },
  feature_incompat: { offset: 80, type: 'u32' },
  available_compr_algs: { offset: 84, type: 'u16' },
  extra_devices: { offset: 86, type: 'u16' }, // devices besides the primary one
  devt_slotoff: { offset: 88, type: 'u16' }, // device table at devt_slotoff * 128
  dirblkbits: { offset: 90, type: 'u8' },
  xattr_prefix_count: { offset: 91, type: 'u8' },
  xattr_prefix_start: { offset: 92, type: 'u32' },
  packed_nid: { offset: 96, type: 'u64' },
  xattr_filter_reserved: { offset: 104, type: 'u8' },
  reserved2: { offset: 105, type: { bytes: 23 } },
});
export type ErofsSuperBlock = ReturnType<typeof erofsSuperBlock.decode>;

/** crc32c (Castagnoli), reflected, as the kernel's crc32c(): seed given, no final xor. */
const CRC32C_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32c(seed: number, data: Uint8Array): number {
  let c = seed >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC32C_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return c >>> 0;
}

/**
 * The superblock checksum as the kernel verifies it: crc32c(~0) over [1024, block size) of the first
 * block with the checksum field zeroed.
 */
export function superBlockChecksum(firstBlock: Buffer): number {
  const area = Buffer.from(firstBlock.subarray(EROFS_SUPER_OFFSET, EROFS_BLKSIZ));
  area.writeUInt32LE(0, erofsSuperBlock.offsetOf('checksum'));
  return crc32c(0xffffffff, area);
}
