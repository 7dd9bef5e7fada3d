/**
 * Layout stage: gives every inode of the tree its place in the metadata area (its nid) and every
 * directory or symlink block its block address, before a byte is written. Sizes only depend on names,
 * xattrs and chunk counts, so one pass decides all positions; the writer then encodes them.
 *
 * Placement rules (the kernel's): an inode with inline data keeps inode, xattrs and tail in one block;
 * chunk indexes start 8-byte aligned right after inode and xattrs; nid = byte offset / 32.
 */
import {
  EROFS_BLKSIZ, EROFS_ISLOT, EROFS_SUPER_OFFSET,
} from '../../erofs/super.ts';
import { EROFS_DEVT_SLOT_SIZE } from '../../erofs/devtable.ts';
import { RAFS_V6_DEVTABLE_OFFSET } from '../../erofs/rafs.ts';
import { EROFS_INODE_CHUNK_BASED, EROFS_INODE_FLAT_INLINE, EROFS_INODE_FLAT_PLAIN, erofsInodeExtended } from '../../erofs/inode.ts';
import { encodeInlineXattrs } from '../../erofs/xattr.ts';
import { type DirEntry, packDirBlocks } from '../../erofs/dirent.ts';
import { erofsInodeChunkIndex } from '../../erofs/chunk.ts';
import { NydusError } from '../../erofs/errors.ts';
import type { TreeNode } from './tree.ts';
import { HeapRoom } from '../heap-room.ts';

export interface LaidOutInode {
  /** The first tree node of this inode (hardlinks share one inode). */
  node: TreeNode;
  nid: number;
  ino: number;
  nlink: number;
  datalayout: number;
  xattrBody: Buffer;
  xattrIcount: number;
  /** Byte size of the inode's data (dirent bytes for directories, target length for symlinks). */
  dataSize: number;
  /** Directory: entries in name order, "." and ".." first; children nids resolved at write time. */
  dirEntries?: Array<{ name: Buffer; node: TreeNode }>;
  /** Full data blocks kept outside the metadata area (directories, long symlinks). */
  blockCount: number;
  rawBlkaddr: number;
  /** Bytes of the inline tail after inode and xattrs. */
  inlineSize: number;
  /** Offset of the record in the bootstrap. */
  offset: number;
  recordSize: number;
}

export interface Layout {
  inodes: LaidOutInode[];
  /** Inode of each tree node (hardlinks map to one). */
  inodeOf: Map<TreeNode, LaidOutInode>;
  root: LaidOutInode;
  /** First byte after the metadata records. */
  metaEnd: number;
  /** First block after the directory and symlink data blocks. */
  dataEndBlk: number;
}

const EXT_INODE_SIZE = erofsInodeExtended.size;
const CHUNK_INDEX_SIZE = erofsInodeChunkIndex.size;

const align = (n: number, a: number) => Math.ceil(n / a) * a;

/** Bytes the dirents and names of a directory take, block by block, as the writer will pack them. */
function dirDataSize(entries: Array<{ name: Buffer }>): number {
  const placeholder: DirEntry[] = entries.map((e) => ({ name: e.name, nid: 0, fileType: 0 }));
  const blocks = packDirBlocks(placeholder);
  // Every block but the last is a full block; the last may be short.
  return (blocks.length - 1) * EROFS_BLKSIZ + blocks[blocks.length - 1].length;
}

export function layoutTree(root: TreeNode, deviceCount: number): Layout {
  const inodes: LaidOutInode[] = [];
  const inodeOf = new Map<TreeNode, LaidOutInode>();
  const byLink = new Map<string, LaidOutInode>();
  const parentOf = new Map<TreeNode, TreeNode>();

  // Breadth-first: a directory's children sit next to each other, as `ls -l` reads them.
  const queue: TreeNode[] = [root];
  const room = new HeapRoom('the layout of the image');
  for (let qi = 0; qi < queue.length; qi++) {
    room.tick();
    const node = queue[qi];
    if (node.hardlinkKey) {
      const existing = byLink.get(node.hardlinkKey);
      if (existing) {
        existing.nlink++;
        inodeOf.set(node, existing);
        continue;
      }
    }
    let xattr: { body: Buffer; icount: number };
    try {
      xattr = encodeInlineXattrs(node.xattrs);
    } catch (e) {
      throw new NydusError(`${node.path}: ${(e as Error).message}`);
    }
    const ino: LaidOutInode = {
      node, nid: 0, ino: inodes.length + 1, nlink: 1, datalayout: EROFS_INODE_FLAT_PLAIN,
      xattrBody: xattr.body, xattrIcount: xattr.icount, dataSize: 0, blockCount: 0, rawBlkaddr: 0,
      inlineSize: 0, offset: 0, recordSize: 0,
    };
    inodes.push(ino);
    inodeOf.set(node, ino);
    if (node.hardlinkKey) byLink.set(node.hardlinkKey, ino);
    if (node.kind === 'dir') {
      const children = node.children ?? [];
      ino.nlink = 2 + children.filter((c) => c.kind === 'dir').length;
      ino.dirEntries = [
        { name: Buffer.from('.'), node },
        { name: Buffer.from('..'), node: parentOf.get(node) ?? node },
        ...children.map((c) => ({ name: c.name, node: c })),
      ];
      ino.dirEntries.sort((a, b) => Buffer.compare(a.name, b.name));
      ino.dataSize = dirDataSize(ino.dirEntries);
      for (const c of children) {
        parentOf.set(c, node);
        queue.push(c);
      }
    } else if (node.kind === 'symlink') {
      ino.dataSize = node.target!.length;
    } else if (node.kind === 'file') {
      ino.datalayout = EROFS_INODE_CHUNK_BASED;
      ino.dataSize = node.size;
    }
  }

  // Place the records. The device table ends the first block's fixed part.
  let cursor = align(RAFS_V6_DEVTABLE_OFFSET + deviceCount * EROFS_DEVT_SLOT_SIZE, EROFS_ISLOT);
  if (cursor < EROFS_SUPER_OFFSET) cursor = EROFS_SUPER_OFFSET;
  for (const ino of inodes) {
    const head = EXT_INODE_SIZE + ino.xattrBody.length;
    let record: number;
    if (ino.datalayout === EROFS_INODE_CHUNK_BASED) {
      const n = ino.node.chunks?.length ?? 0;
      record = n ? align(head, CHUNK_INDEX_SIZE) + n * CHUNK_INDEX_SIZE : head;
    } else if (ino.node.kind === 'dir' || ino.node.kind === 'symlink') {
      const tail = ino.dataSize % EROFS_BLKSIZ;
      ino.blockCount = Math.floor(ino.dataSize / EROFS_BLKSIZ);
      if (tail > 0 && head + tail <= EROFS_BLKSIZ) {
        ino.datalayout = EROFS_INODE_FLAT_INLINE;
        ino.inlineSize = tail;
      } else {
        ino.datalayout = EROFS_INODE_FLAT_PLAIN;
        ino.blockCount = Math.ceil(ino.dataSize / EROFS_BLKSIZ);
      }
      record = head + ino.inlineSize;
    } else {
      record = head;
    }
    // Records that fit a block never straddle one (inline data must not, the rest reads faster).
    if (record <= EROFS_BLKSIZ && (cursor % EROFS_BLKSIZ) + record > EROFS_BLKSIZ) cursor = align(cursor, EROFS_BLKSIZ);
    ino.offset = cursor;
    ino.nid = cursor / EROFS_ISLOT;
    ino.recordSize = record;
    cursor = align(cursor + record, EROFS_ISLOT);
  }
  const rootIno = inodeOf.get(root)!;
  if (rootIno.nid > 0xffff) throw new Error('root inode does not fit a 16-bit nid');

  let blk = Math.ceil(cursor / EROFS_BLKSIZ);
  for (const ino of inodes) {
    if (ino.blockCount > 0) {
      ino.rawBlkaddr = blk;
      blk += ino.blockCount;
    }
  }
  return { inodes, inodeOf, root: rootIno, metaEnd: cursor, dataEndBlk: blk };
}
