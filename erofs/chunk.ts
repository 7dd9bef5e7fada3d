/** Chunk indexes of chunk-based inodes (erofs_fs.h: erofs_inode_chunk_index). */
import { Struct } from './struct.ts';

export const erofsInodeChunkIndex = new Struct('erofs_inode_chunk_index', 8, {
  advise: { offset: 0, type: 'u16' }, // nydus keeps 0
  device_id: { offset: 2, type: 'u16' }, // 0 = primary device, n = device table slot n-1
  blkaddr: { offset: 4, type: 'u32' }, // start block of the chunk on that device
});

/** A hole: the chunk reads as zeros. */
export const EROFS_NULL_ADDR = 0xffffffff;
