/** The format module: structure sizes, bit layouts and checksums against known values. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { erofsSuperBlock, crc32c } from '../erofs/super.ts';
import { erofsInodeCompact, erofsInodeExtended, encodeDev, decodeDev } from '../erofs/inode.ts';
import { erofsDirent, packDirBlocks, decodeDirBlock } from '../erofs/dirent.ts';
import { erofsInodeChunkIndex } from '../erofs/chunk.ts';
import { erofsDeviceSlot } from '../erofs/devtable.ts';
import { erofsXattrEntry, erofsXattrIbodyHeader, encodeInlineXattrs, decodeInlineXattrs } from '../erofs/xattr.ts';
import { rafsV6Blob, rafsV6SuperBlockExt } from '../erofs/rafs.ts';
import { blobCompressionContextHeader, decodeChunkInfoV1, encodeChunkInfoV1, rafsChunkInfo } from '../erofs/blobmeta.ts';
import { FormatError } from '../erofs/errors.ts';

test('every on-disk structure has the size the kernel and nydus define', () => {
  const sizes: Array<[{ size: number; name: string }, number]> = [
    [erofsSuperBlock, 128], [erofsInodeCompact, 32], [erofsInodeExtended, 64], [erofsDirent, 12],
    [erofsInodeChunkIndex, 8], [erofsDeviceSlot, 128], [erofsXattrIbodyHeader, 12], [erofsXattrEntry, 4],
    [rafsV6SuperBlockExt, 256], [rafsV6Blob, 256], [blobCompressionContextHeader, 4096], [rafsChunkInfo, 80],
  ];
  for (const [s, n] of sizes) assert.equal(s.size, n, s.name);
});

test('crc32c matches the standard check value', () => {
  assert.equal((crc32c(0xffffffff, Buffer.from('123456789')) ^ 0xffffffff) >>> 0, 0xe3069283);
});

test('chunk info v1 decodes nydus reference values and round-trips', () => {
  // Values from nydus storage/src/meta/chunk_info_v1.rs tests.
  const buf = Buffer.alloc(16);
  buf.writeBigUInt64LE(0xffff_ffff_f100_0000n, 0);
  buf.writeBigUInt64LE(0xffff_f0ff_ffff_ffffn, 8);
  const c = decodeChunkInfoV1(buf, 0);
  assert.equal(c.uncompressedSize, 0x000f_ffff + 1);
  assert.equal(c.uncompressedOffset, 0xffff_1000 * 0x1000);
  assert.equal(c.compressedSize, 0x000f_ffff + 1);
  assert.equal(c.compressedOffset, 0x00ff_ffff_ffff);
  for (const v of [
    { compressedOffset: 0xffffffffff, compressedSize: 0x1000000, uncompressedOffset: 0xffffffff000, uncompressedSize: 0x1000000 },
    { compressedOffset: 12345, compressedSize: 777, uncompressedOffset: 0x100000, uncompressedSize: 0x100000 },
  ]) {
    const b = Buffer.alloc(16);
    encodeChunkInfoV1(v, b, 0);
    assert.deepEqual(decodeChunkInfoV1(b, 0), v);
  }
});

test('device numbers use the kernel encoding', () => {
  const dev = encodeDev(259, 70000);
  assert.deepEqual(decodeDev(dev), { major: 259, minor: 70000 });
  assert.equal(encodeDev(1, 3), 0x103);
});

test('directory blocks round-trip and never split a name', () => {
  const entries = Array.from({ length: 700 }, (_, i) => ({ name: Buffer.from(`name-${i}`.padEnd(20 + (i % 30), 'x')), nid: i * 3, fileType: 1 }));
  entries.sort((a, b) => Buffer.compare(a.name, b.name));
  const blocks = packDirBlocks(entries);
  assert.ok(blocks.length > 1);
  const back = blocks.flatMap((b, i) => decodeDirBlock(b, `block ${i}`));
  assert.deepEqual(back, entries);
});

test('inline xattrs round-trip, binary values included', () => {
  const x = new Map([
    ['user.a', Buffer.from('1')],
    ['security.capability', Buffer.from([1, 0, 0, 2, 0xff, 0])],
    ['trusted.overlay.opaque', Buffer.from('y')],
    ['system.posix_acl_access', Buffer.from([2, 0, 0, 0])],
  ]);
  const { body, icount } = encodeInlineXattrs(x);
  assert.equal(body.length, 12 + 4 * (icount - 1));
  assert.deepEqual(decodeInlineXattrs(body, 'test'), x);
});

test('a truncated structure is a FormatError naming it', () => {
  assert.throws(() => erofsSuperBlock.decode(Buffer.alloc(100), 0, 'img'), (e: Error) => e instanceof FormatError && /truncated erofs_super_block/.test(e.message));
});

test('64-bit fields decode to the edges of the safe integers; past them a FormatError names the field and the value', () => {
  const b = Buffer.alloc(erofsInodeExtended.size);
  const at = (field: 'i_size' | 'i_mtime') => erofsInodeExtended.offsetOf(field);
  b.writeBigUInt64LE(2n ** 53n - 1n, at('i_size'));
  b.writeBigInt64LE(-(2n ** 53n) + 1n, at('i_mtime'));
  const d = erofsInodeExtended.decode(b, 0, 'img');
  assert.equal(d.i_size, Number.MAX_SAFE_INTEGER);
  assert.equal(d.i_mtime, Number.MIN_SAFE_INTEGER);
  b.writeBigInt64LE(-1n, at('i_mtime'));
  assert.equal(erofsInodeExtended.decode(b, 0).i_mtime, -1, 'before 1970 is negative');
  for (const [field, v] of [['i_size', 2n ** 53n], ['i_size', 2n ** 64n - 1n], ['i_mtime', -(2n ** 53n)], ['i_mtime', 2n ** 63n - 1n]] as const) {
    const c = Buffer.from(b);
    if (field === 'i_size') c.writeBigUInt64LE(v, at(field));
    else c.writeBigInt64LE(v, at(field));
    assert.throws(() => erofsInodeExtended.decode(c, 0, 'img'), (e: Error) => e instanceof FormatError
      && e.message === `img: erofs_inode_extended.${field} at offset ${at(field)} is out of range (${v})`);
  }
  // Every field is read where it is declared: a round trip through encode.
  const value = { i_format: 1, i_xattr_icount: 2, i_mode: 0o100644, i_size: 2 ** 40 + 3, i_u: 0xfedcba98, i_ino: 7, i_uid: 0xffffffff, i_gid: 9, i_mtime: -5, i_mtime_nsec: 999_999_999, i_nlink: 3 };
  assert.deepEqual({ ...erofsInodeExtended.decode(erofsInodeExtended.encode(value)), i_reserved: undefined, i_reserved2: undefined }, { ...value, i_reserved: undefined, i_reserved2: undefined });
  // decodeNumbers: the same number fields, checked the same way, and no byte-array field.
  const numbers = erofsInodeExtended.decodeNumbers(erofsInodeExtended.encode(value));
  assert.deepEqual({ ...numbers }, { ...value, i_reserved: 0 });
  assert.equal('i_reserved2' in numbers, false);
  assert.throws(() => erofsInodeExtended.decodeNumbers(b.subarray(0, 63), 0, () => 'img'), (e: Error) => e instanceof FormatError && /^img: truncated erofs_inode_extended/.test(e.message));
  const far = Buffer.from(b);
  far.writeBigUInt64LE(2n ** 53n, at('i_size'));
  assert.throws(() => erofsInodeExtended.decodeNumbers(far, 0, 'img'), (e: Error) => e instanceof FormatError && /i_size at offset .* is out of range/.test(e.message));
});
