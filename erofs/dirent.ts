/** Directory entries (erofs_fs.h: erofs_dirent) and the packing of directory blocks. */
import { Struct, type Where, named } from './struct.ts';
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

/** Where erofs_dirent's fields lie (the decode loop reads them in place). */
const NID_AT = erofsDirent.offsetOf('nid');
const NAMEOFF_AT = erofsDirent.offsetOf('nameoff');
const FILE_TYPE_AT = erofsDirent.offsetOf('file_type');

/**
 * Decodes one directory block (or the inline tail) of `len` bytes; `where` names it in errors (a
 * function where naming it costs: validation decodes every directory's blocks).
 *
 * Each name is a view of the block, not a copy: a reader that keeps names beyond the image copies
 * them itself (tree-from-image.ts). A copy per entry was a second Buffer, and the dirent a decoded
 * object, per name: of the Debian rootfs bootstrap's validation (6,700 entries) the largest part of
 * the objects that survived to be copied by the garbage collector.
 */
export function decodeDirBlock(block: Buffer, where: Where): DirEntry[] {
  if (block.length < EROFS_DIRENT_SIZE) throw new FormatError(`${named(where)}: directory block of ${block.length} bytes is too short`);
  const first = block[NAMEOFF_AT] | block[NAMEOFF_AT + 1] << 8;
  const count = first / EROFS_DIRENT_SIZE;
  if (first % EROFS_DIRENT_SIZE !== 0 || count === 0 || first > block.length) {
    throw new FormatError(`${named(where)}: bad first name offset ${first}`);
  }
  const out: DirEntry[] = new Array(count);
  for (let k = 0; k < count; k++) {
    const at = k * EROFS_DIRENT_SIZE;
    const nameoff = block[at + NAMEOFF_AT] | block[at + NAMEOFF_AT + 1] << 8;
    let end: number;
    if (k + 1 < count) {
      end = block[at + EROFS_DIRENT_SIZE + NAMEOFF_AT] | block[at + EROFS_DIRENT_SIZE + NAMEOFF_AT + 1] << 8;
    } else {
      // The last name runs to the end of the block or to the first NUL padding byte; longer than
      // EROFS_NAME_LEN it is corrupt (the kernel's "bogus dirent"), never cut short.
      const nul = block.indexOf(0, nameoff);
      end = nul < 0 ? block.length : nul;
    }
    if (end <= nameoff || end > block.length || end - nameoff > EROFS_NAME_LEN) {
      throw new FormatError(`${named(where)}: bad name bounds [${nameoff}, ${end}) of entry ${k}`);
    }
    // (The u64 nid as two words: beyond the safe integers it is refused, as the struct's reader does.)
    const low = (block[at + NID_AT] | block[at + NID_AT + 1] << 8 | block[at + NID_AT + 2] << 16) + block[at + NID_AT + 3] * 0x1000000;
    const high = (block[at + NID_AT + 4] | block[at + NID_AT + 5] << 8 | block[at + NID_AT + 6] << 16) + block[at + NID_AT + 7] * 0x1000000;
    if (high >= 0x200000) throw new FormatError(`${named(where)}: erofs_dirent.nid of entry ${k} is out of range (high word 0x${high.toString(16)})`);
    out[k] = { name: block.subarray(nameoff, end), nid: high * 0x1_0000_0000 + low, fileType: block[at + FILE_TYPE_AT] };
  }
  return out;
}
