/** The device table (erofs_fs.h: erofs_deviceslot): one slot per extra device (a Nydus blob). */
import { Struct } from './struct.ts';

export const EROFS_DEVT_SLOT_SIZE = 128;
export const EROFS_DEVICE_TAG_SIZE = 64;

export const erofsDeviceSlot = new Struct('erofs_deviceslot', EROFS_DEVT_SLOT_SIZE, {
  tag: { offset: 0, type: { bytes: EROFS_DEVICE_TAG_SIZE } }, // the blob id; fscache cookie key
  blocks: { offset: 64, type: 'u32' }, // blocks of the device (uncompressed blob size / 4096)
  mapped_blkaddr: { offset: 68, type: 'u32' },
  reserved: { offset: 72, type: { bytes: 56 } },
});

/** A tag is NUL-padded text. */
export function decodeTag(tag: Buffer): string {
  const end = tag.indexOf(0);
  return tag.subarray(0, end < 0 ? tag.length : end).toString('latin1');
}
