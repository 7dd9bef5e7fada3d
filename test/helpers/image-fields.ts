/**
 * Where every field of every structure of a bootstrap lives, from the format's own declarations
 * (erofs/*.ts), so that tests and the fuzzer can set each one to a chosen value: zero, the maximum,
 * maximum - 1, a value pointing past the end of the image or back at the structure itself.
 */
import { type FieldSpec, Struct } from '../../erofs/struct.ts';
import { ErofsImage, type Inode } from '../../erofs/image.ts';
import { EROFS_BLKSIZ, EROFS_ISLOT, EROFS_SUPER_OFFSET, erofsSuperBlock } from '../../erofs/super.ts';
import { RAFS_V6_SUPER_EXT_OFFSET, rafsV6Blob, rafsV6SuperBlockExt } from '../../erofs/rafs.ts';
import { erofsDeviceSlot } from '../../erofs/devtable.ts';
import { rafsChunkInfo } from '../../erofs/blobmeta.ts';
import { erofsInodeChunkIndex } from '../../erofs/chunk.ts';
import { erofsInodeCompact, erofsInodeExtended } from '../../erofs/inode.ts';
import { erofsDirent } from '../../erofs/dirent.ts';
import { erofsXattrEntry, erofsXattrIbodyHeader } from '../../erofs/xattr.ts';
import { validateImage } from '../../src/image/validate.ts';

export interface FieldSite {
  /** "erofs_super_block.root_nid", "inode 37 erofs_inode_extended.i_size", ... */
  label: string;
  /** Byte offset in the bootstrap. */
  offset: number;
  /** Bytes; 1, 2, 4 or 8 for integers. */
  size: number;
  integer: boolean;
  /** The structure's own position in this field's unit (a nid, a block, a byte offset). */
  self: number;
}

function sitesOf(s: Struct<Record<string, FieldSpec>>, at: number, prefix: string, self: number): FieldSite[] {
  return Object.entries(s.fields).map(([field, spec]) => {
    const t = spec.type;
    const size = typeof t === 'object' ? t.bytes : { u8: 1, u16: 2, u32: 4, u64: 8, i64: 8 }[t];
    return { label: `${prefix}${s.name}.${field}`, offset: at + spec.offset, size, integer: typeof t !== 'object', self };
  });
}

/** Every field site of a valid bootstrap (its structures found through the validated image). */
export function fieldSites(boot: Buffer): FieldSite[] {
  const raw = new ErofsImage(boot, 'seed');
  const v = validateImage(raw);
  const ext = raw.ext!;
  const out: FieldSite[] = [
    ...sitesOf(erofsSuperBlock, EROFS_SUPER_OFFSET, '', EROFS_SUPER_OFFSET),
    ...sitesOf(rafsV6SuperBlockExt, RAFS_V6_SUPER_EXT_OFFSET, '', RAFS_V6_SUPER_EXT_OFFSET),
  ];
  raw.devices.forEach((_, i) => out.push(...sitesOf(erofsDeviceSlot, raw.sb.devt_slotoff * 128 + i * 128, `device ${i} `, i)));
  raw.blobs.forEach((_, i) => out.push(...sitesOf(rafsV6Blob, ext.s_blob_table_offset + i * rafsV6Blob.size, `blob ${i} `, i)));
  const chunks = ext.s_chunk_table_size / rafsChunkInfo.size;
  for (const i of new Set([0, 1, chunks - 1].filter((k) => k >= 0 && k < chunks))) {
    out.push(...sitesOf(rafsChunkInfo, ext.s_chunk_table_offset + i * rafsChunkInfo.size, `chunk ${i} `, i));
  }
  for (const [nid, vi] of v.inodes) {
    const ino = vi.inode;
    const s: Struct<Record<string, FieldSpec>> = ino.compact ? erofsInodeCompact : erofsInodeExtended;
    out.push(...sitesOf(s, ino.offset, `inode ${nid} `, nid));
    const head = ino.offset + s.size;
    if (ino.xattrIcount) {
      out.push(...sitesOf(erofsXattrIbodyHeader, head, `inode ${nid} `, nid));
      out.push(...sitesOf(erofsXattrEntry, head + erofsXattrIbodyHeader.size, `inode ${nid} `, nid));
    }
    if (vi.chunks?.length) {
      const start = Math.ceil((ino.offset + ino.headSize) / 8) * 8;
      for (const k of new Set([0, vi.chunks.length - 1])) {
        out.push(...sitesOf(erofsInodeChunkIndex, start + k * 8, `inode ${nid} chunk ${k} `, Math.floor(start / EROFS_BLKSIZ)));
      }
    }
    if (vi.entries) {
      // Dirents of the directory's first block or inline tail: "." / ".." and the first entries.
      const at = ino.datalayout === 2 && ino.size < EROFS_BLKSIZ ? ino.offset + ino.headSize : ino.iu * EROFS_BLKSIZ;
      const count = Math.min(4, boot.readUInt16LE(at + 8) / 12);
      for (let k = 0; k < count; k++) out.push(...sitesOf(erofsDirent, at + k * 12, `dir ${nid} dirent ${k} `, nid));
    }
  }
  return out;
}

/** The interesting values of a field: 0, max, max - 1, past the image's end, itself, and neighbours. */
export function interestingValues(site: FieldSite, imageSize: number): Buffer[] {
  const enc = (v: bigint) => {
    const b = Buffer.alloc(site.size);
    let x = BigInt.asUintN(site.size * 8, v);
    for (let i = 0; i < site.size; i++, x >>= 8n) b[i] = Number(x & 0xffn);
    return b;
  };
  if (!site.integer) {
    return [Buffer.alloc(site.size, 0), Buffer.alloc(site.size, 0xff), Buffer.alloc(site.size, 0x2f), Buffer.alloc(site.size, 0x61)];
  }
  const max = (1n << BigInt(site.size * 8)) - 1n;
  const vals = new Set<bigint>([0n, 1n, max, max - 1n, max >> 1n, BigInt(imageSize), BigInt(imageSize / EROFS_ISLOT),
    BigInt(imageSize / EROFS_BLKSIZ), BigInt(site.self), BigInt(site.self) + 1n]);
  return [...vals].map(enc);
}

/** A copy of `boot` with `value` written at the site. */
export function mutate(boot: Buffer, site: FieldSite, value: Buffer): Buffer {
  const out = Buffer.from(boot);
  value.copy(out, site.offset, 0, site.size);
  return out;
}

/** The decoded inode at `path` (e.g. "/dir/sub") of a valid bootstrap. */
export function inodeAt(boot: Buffer, path: string): Inode {
  const v = validateImage(new ErofsImage(boot, 'seed'));
  let nid = v.rootNid;
  for (const part of path.split('/').filter(Boolean)) {
    const e = v.inodes.get(nid)!.entries!.find((d) => d.name.toString() === part);
    if (!e) throw new Error(`${path}: no ${part}`);
    nid = e.nid;
  }
  return v.inodes.get(nid)!.inode;
}

/** Byte offset of chunk index `k` of the regular file at `path` (e.g. "/big") in a valid bootstrap. */
export function chunkIndexOffset(boot: Buffer, path: string, k: number): number {
  const ino = inodeAt(boot, path);
  return Math.ceil((ino.offset + ino.headSize) / 8) * 8 + k * 8;
}

/** Byte offset of the dirent named `name` in the first block (or inline tail) of directory `dir`. */
export function direntOffset(boot: Buffer, dir: string, name: string): number {
  const ino = inodeAt(boot, dir);
  const at = ino.datalayout === 2 && ino.size < EROFS_BLKSIZ ? ino.offset + ino.headSize : ino.iu * EROFS_BLKSIZ;
  const count = boot.readUInt16LE(at + 8) / 12;
  for (let k = 0; k < count; k++) {
    const off = boot.readUInt16LE(at + k * 12 + 8);
    // A name ends where the next one starts (the last: at the block's or the inline data's end, or a NUL).
    const end = k + 1 < count ? boot.readUInt16LE(at + (k + 1) * 12 + 8) : off + name.length;
    if (end - off === name.length && boot.subarray(at + off, at + off + name.length).toString() === name) return at + k * 12;
  }
  throw new Error(`${dir}: no entry ${name} in its first block`);
}
