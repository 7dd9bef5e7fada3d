/**
 * The in-memory file tree every builder stage works on: metadata only, file data stays in its source
 * (a path on disk, a range of a tar stream) and is read when the chunker gets to it.
 */
import { constants as C } from 'node:fs';

/** One chunk of a file as stored in a blob; shared by every file that holds the same bytes. */
export interface ChunkRef {
  /** Index of the blob in the image's blob table. */
  blobIndex: number;
  /** Index of the chunk in its blob's chunk-info array. */
  indexInBlob: number;
  /** Digest of the uncompressed bytes. */
  digest: Buffer;
  /** Offset in the blob's uncompressed address space (4096-aligned). */
  uncompressedOffset: number;
  uncompressedSize: number;
  /** Offset and size of the stored bytes in the blob file. */
  compressedOffset: number;
  compressedSize: number;
  /** False when the chunk is stored raw (compressor none, or compression did not help). */
  compressed: boolean;
}

export type NodeKind = 'file' | 'dir' | 'symlink' | 'chrdev' | 'blkdev' | 'fifo' | 'socket';

/** Where a regular file's bytes come from. */
export interface DataSource {
  /** Human-readable origin for error messages. */
  describe(): string;
  /** Reads up to `length` bytes at `offset` into `buf`; returns bytes read. */
  read(buf: Buffer, length: number, offset: number): number;
  /** Whether [offset, offset + length) lies wholly in a hole of a sparse file (its zeros need no reading). */
  inHole?(offset: number, length: number): boolean;
  close?(): void;
}

export interface TreeNode {
  /** Raw name bytes; empty for the root. */
  name: Buffer;
  kind: NodeKind;
  /** Full st_mode (type and permission bits). */
  mode: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  /** Regular files: data size; symlinks: target length. */
  size: number;
  /** Device number (Linux new encoding) of character and block devices. */
  rdev: number;
  /** Extended attributes by full name (latin1 keeps the raw bytes). */
  xattrs: Map<string, Buffer>;
  target?: Buffer;
  children?: TreeNode[];
  data?: DataSource;
  /**
   * Regular files: where each chunk of the data lives (set by the chunker or decoded from an image);
   * null is a hole, a chunk that reads as zeros (only images decoded from a bootstrap have them).
   */
  chunks?: Array<ChunkRef | null>;
  /** Nodes with the same key are hardlinks of one inode. */
  hardlinkKey?: string;
  /**
   * A directory a layer only implies (a path under it, no entry of its own): laid over a lower
   * layer's directory, it keeps that one's attributes, as extraction onto the lower layer does
   * (containerd's mkparent, umoci).
   */
  implied?: true;
  /** Path from the root, for messages. */
  path: string;
}

export function kindFromMode(mode: number): NodeKind {
  switch (mode & C.S_IFMT) {
    case C.S_IFREG: return 'file';
    case C.S_IFDIR: return 'dir';
    case C.S_IFLNK: return 'symlink';
    case C.S_IFCHR: return 'chrdev';
    case C.S_IFBLK: return 'blkdev';
    case C.S_IFIFO: return 'fifo';
    case C.S_IFSOCK: return 'socket';
    default: throw new Error(`unknown file type in mode 0${mode.toString(8)}`);
  }
}

export function sortChildren(dir: TreeNode): void {
  dir.children?.sort((a, b) => Buffer.compare(a.name, b.name));
}

/** Depth-first, parents before children, children in name order. */
export function* walkTree(root: TreeNode): Generator<TreeNode> {
  const stack: TreeNode[] = [root];
  while (stack.length) {
    const n = stack.pop()!;
    yield n;
    if (n.children) for (let i = n.children.length - 1; i >= 0; i--) stack.push(n.children[i]);
  }
}

export function joinPath(parent: string, name: Buffer): string {
  const n = name.toString('utf8');
  return parent === '/' ? `/${n}` : `${parent}/${n}`;
}
