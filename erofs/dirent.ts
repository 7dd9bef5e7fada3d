/** Directory entries (erofs_fs.h: erofs_dirent) and the packing of directory blocks. */
import { Struct } from './struct.ts';
import { FormatError } from './errors.ts';
import { EROFS_BLKSIZ } from './super.ts';

export const EROFS_NAME_LEN = 255;
export const EROFS_DIRENT_SIZE = 12;

export const EROFS_FT_UNKNOWN = 0;
export const EROFS_FT_REG_FILE = 1;
export const EROFS_FT_DIR = 2;
export const EROFS_FT_CHRDEV = 3;
export const EROFS_FT_BLKDEV = 4;
export const EROFS_FT_FIFO = 5;
export const EROFS_FT_SOCK = 6;
export const EROFS_FT_SYMLINK = 7;

export const erofsDirent = new Struct('erofs_dirent', EROFS_DIRENT_SIZE, {
  nid: { offset: 0, type: 'u64' },
  nameoff: { offset: 8, type: 'u16' }, // name start, from the start of this directory block
  file_type: { offset: 10, type: 'u8' },
  reserved: { offset: 11, type: 'u8' },
});

export interface DirEntry {
  name: Buffer;
  nid: number;
  fileType: number;
}

/** Names sort as raw bytes: the kernel binary-searches them with memcmp semantics. */
export function compareNames(a: Buffer, b: Buffer): number {
  return Buffer.compare(a, b);
}

/**
 * Splits sorted entries (including "." and "..") into directory blocks: each block holds dirents
 * followed by their names; a name never crosses a block. Returns the blocks' byte lengths, the last
 * one possibly short (it may be inlined after the inode).
 */
export function packDirBlocks(entries: DirEntry[], blockSize = EROFS_BLKSIZ): Buffer[] {
  const blocks: Buffer[] = [];
  let i = 0;
  while (i < entries.length) {
    let used = 0;
    let j = i;
    while (j < entries.length && used + EROFS_DIRENT_SIZE + entries[j].name.length <= blockSize) {
      used += EROFS_DIRENT_SIZE + entries[j].name.length;
      j++;
    }
    if (j === i) throw new Error('directory entry larger than a block');
    const block = Buffer.alloc(used);
    let nameoff = (j - i) * EROFS_DIRENT_SIZE;
    for (let k = i; k < j; k++) {
      const e = entries[k];
      erofsDirent.encodeInto(block, (k - i) * EROFS_DIRENT_SIZE, { nid: e.nid, nameoff, file_type: e.fileType });
      e.name.copy(block, nameoff);
      nameoff += e.name.length;
    }
    blocks.push(block);
    i = j;
  }
  return blocks;
}

/** Decodes one directory block (or the inline tail) of `len` bytes; `where` names it in errors. */
export function decodeDirBlock(block: Buffer, where: string): DirEntry[] {
  if (block.length < EROFS_DIRENT_SIZE) throw new FormatError(`${where}: directory block of ${block.length} bytes is too short`);
  const first = erofsDirent.decode(block, 0, where);
  const count = first.nameoff / EROFS_DIRENT_SIZE;
  if (first.nameoff % EROFS_DIRENT_SIZE !== 0 || count === 0 || first.nameoff > block.length) {
    throw new FormatError(`${where}: bad first name offset ${first.nameoff}`);
  }
  const out: DirEntry[] = [];
  for (let k = 0; k < count; k++) {
    const d = k === 0 ? first : erofsDirent.decode(block, k * EROFS_DIRENT_SIZE, where);
    let end: number;
    if (k + 1 < count) {
      end = block.readUInt16LE((k + 1) * EROFS_DIRENT_SIZE + erofsDirent.offsetOf('nameoff'));
    } else {
      // The last name runs to the end of the block or to the first NUL padding byte; longer than
      // EROFS_NAME_LEN it is corrupt (the kernel's "bogus dirent"), never cut short.
      const nul = block.indexOf(0, d.nameoff);
      end = nul < 0 ? block.length : nul;
    }
    if (end <= d.nameoff || end > block.length || end - d.nameoff > EROFS_NAME_LEN) {
      throw new FormatError(`${where}: bad name bounds [${d.nameoff}, ${end}) of entry ${k}`);
    }
    out.push({ name: Buffer.from(block.subarray(d.nameoff, end)), nid: d.nid, fileType: d.file_type });
  }
  return out;
}
