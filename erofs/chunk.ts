/** Chunk indexes of chunk-based inodes (erofs_fs.h: erofs_inode_chunk_index). */
import { Struct } from './struct.ts';

export const erofsInodeChunkIndex = new Struct('erofs_inode_chunk_index', 8, {
  advise: { offset: 0, type: 'u16' }, // nydus: chunk index in the blob, bits 0..15 (the kernel ignores it)
  device_id: { offset: 2, type: 'u16' }, // 0 = primary device, n = device slot n-1; nydus: bits 8..15 = chunk index bits 16..23
  blkaddr: { offset: 4, type: 'u32' }, // start block of the chunk on that device
});

/**
 * The kernel masks device_id with roundup_pow_of_two(extra_devices + 1) - 1, which lets nydus keep
 * the chunk's index in its blob in the upper bits (RafsV6InodeChunkAddr).
 */
export function deviceIdMask(extraDevices: number): number {
  let p = 1;
  while (p < extraDevices + 1) p <<= 1;
  return p - 1;
}

/** Chunk index fields as nydus writes them: blob index + 1 as device, chunk index spread over both u16s. */
export function nydusChunkAddr(blobIndex: number, indexInBlob: number): { advise: number; device_id: number } {
  return { advise: indexInBlob & 0xffff, device_id: (blobIndex + 1) | (((indexInBlob >>> 16) & 0xff) << 8) };
}

/** A hole: the chunk reads as zeros. */
export const EROFS_NULL_ADDR = 0xffffffff;
