/**
 * nydus's RafsSuperMeta of a RAFS v6 bootstrap, as nydusd serializes it for
 * `GET /api/v1/daemon/backend?mountpoint=` (rafs/src/metadata/mod.rs, filled by try_load_v6 in
 * md_v6.rs): the fields in its order, the ones a v6 image does not set at their defaults.
 */
import { erofsDeviceSlot } from '../../erofs/devtable.ts';
import { RAFS_PREFETCH_ENTRY_SIZE } from '../../erofs/rafs.ts';
import type { ValidatedImage } from './validate.ts';

/** RAFS_SUPER_VERSION_V6. */
const RAFS_SUPER_VERSION_V6 = 0x600;
/** RAFS_DEFAULT_ATTR_TIMEOUT and RAFS_DEFAULT_ENTRY_TIMEOUT, in seconds (a Duration serializes as secs and nanos). */
const RAFS_DEFAULT_TIMEOUT = { secs: 2 ** 32, nanos: 0 };

export interface RafsSuperMeta {
  magic: number;
  version: number;
  sb_size: number;
  root_inode: number;
  chunk_size: number;
  batch_size: number;
  inodes_count: number;
  /** RafsSuperFlags (bitflags 1.x serializes its bits). */
  flags: { bits: number };
  inode_table_entries: number;
  inode_table_offset: number;
  blob_table_size: number;
  blob_table_offset: number;
  extended_blob_table_offset: number;
  extended_blob_table_entries: number;
  blob_device_table_count: number;
  blob_device_table_offset: number;
  prefetch_table_offset: number;
  prefetch_table_entries: number;
  attr_timeout: { secs: number; nanos: number };
  entry_timeout: { secs: number; nanos: number };
  is_chunk_dict: boolean;
  meta_blkaddr: number;
  root_nid: number;
  chunk_table_offset: number;
  chunk_table_size: number;
}

export function rafsSuperMeta({ image }: ValidatedImage): RafsSuperMeta {
  const { sb, ext } = image;
  return {
    magic: sb.magic,
    version: RAFS_SUPER_VERSION_V6,
    sb_size: 0,
    root_inode: 0,
    chunk_size: ext?.s_chunk_size ?? 0,
    batch_size: 0,
    inodes_count: sb.inos,
    flags: { bits: ext?.s_flags ?? 0 },
    inode_table_entries: 0,
    inode_table_offset: 0,
    blob_table_size: ext?.s_blob_table_size ?? 0,
    blob_table_offset: ext?.s_blob_table_offset ?? 0,
    extended_blob_table_offset: 0,
    extended_blob_table_entries: 0,
    blob_device_table_count: sb.extra_devices,
    blob_device_table_offset: sb.devt_slotoff * erofsDeviceSlot.size,
    prefetch_table_offset: ext?.s_prefetch_table_offset ?? 0,
    prefetch_table_entries: (ext?.s_prefetch_table_size ?? 0) / RAFS_PREFETCH_ENTRY_SIZE,
    attr_timeout: { ...RAFS_DEFAULT_TIMEOUT },
    entry_timeout: { ...RAFS_DEFAULT_TIMEOUT },
    is_chunk_dict: false,
    meta_blkaddr: sb.meta_blkaddr,
    root_nid: sb.root_nid,
    chunk_table_offset: ext?.s_chunk_table_offset ?? 0,
    chunk_table_size: ext?.s_chunk_table_size ?? 0,
  };
}
