/**
 * Builds a TreeNode tree (the same model the builder writes from) out of a validated image, so that
 * export, unpack, check and inspect reuse the builder's pipeline and one walk of the image. Nodes of
 * one inode (hardlinks) share its decoded attributes, chunk list and data source.
 */
import { FormatError, NydusError } from '../../erofs/errors.ts';
import type { Inode } from '../../erofs/image.ts';
import type { LocalBlobReader } from '../blob/blob-reader.ts';
import { type ChunkRef, type DataSource, type TreeNode, joinPath, kindFromMode } from '../builder/tree.ts';
import type { ValidatedImage, ValidatedInode } from './validate.ts';
import { HeapRoom } from '../heap-room.ts';

/** File data read through the blobs one verified chunk at a time; holes are zeros, never a buffer. */
class ImageFileData implements DataSource {
  private cached: { index: number; data: Buffer } | null = null;
  constructor(
    private readonly chunks: ReadonlyArray<ChunkRef | null>, private readonly chunkSize: number, private readonly size: number,
    private readonly blobs: LocalBlobReader[] | undefined, private readonly shown: string,
  ) {}
  describe(): string {
    return this.shown;
  }
  private chunk(i: number, ref: ChunkRef): Buffer {
    if (this.cached?.index === i) return this.cached.data;
    const blob = this.blobs?.[ref.blobIndex];
    if (!blob) throw new NydusError(`${this.shown}: blob ${ref.blobIndex} is not available`);
    const data = blob.readChunk(ref);
    this.cached = { index: i, data };
    return data;
  }
  read(buf: Buffer, length: number, offset: number): number {
    const end = Math.min(offset + length, this.size);
    let pos = offset;
    while (pos < end) {
      const i = Math.floor(pos / this.chunkSize);
      const inChunk = pos - i * this.chunkSize;
      const upto = Math.min(end, (i + 1) * this.chunkSize);
      const ref = this.chunks[i];
      if (!ref) buf.fill(0, pos - offset, upto - offset);
      else this.chunk(i, ref).copy(buf, pos - offset, inChunk, inChunk + (upto - pos));
      pos = upto;
    }
    return Math.max(0, end - offset);
  }
}

export interface ImageTree {
  root: TreeNode;
  /** Inode of each node, for inspection. */
  inodeOf: Map<TreeNode, Inode>;
}

export function treeFromImage(image: ValidatedImage, blobs?: LocalBlobReader[]): ImageTree {
  const inodeOf = new Map<TreeNode, Inode>();
  const dataOf = new Map<number, DataSource>();
  const room = new HeapRoom(`the tree of ${image.name}`);
  const nodeFor = (v: ValidatedInode, name: Buffer, path: string): TreeNode => {
    room.tick();
    const ino = v.inode;
    const kind = kindFromMode(ino.mode);
    const node: TreeNode = {
      name, kind, mode: ino.mode, uid: ino.uid, gid: ino.gid, mtimeSec: ino.mtimeSec, mtimeNsec: ino.mtimeNsec,
      size: 0, rdev: 0, xattrs: v.xattrs.size ? v.xattrs : new Map(), path, // (a node's own map: the builder edits them)
    };
    inodeOf.set(node, ino);
    if (kind !== 'dir' && v.names > 1) node.hardlinkKey = `nid:${ino.nid}`;
    if (kind === 'chrdev' || kind === 'blkdev') node.rdev = ino.iu;
    if (kind === 'symlink') {
      node.target = v.target!;
      node.size = node.target.length;
    }
    if (kind === 'file') {
      node.size = ino.size;
      let data = dataOf.get(ino.nid);
      if (!data) {
        const flat = v.flatData;
        data = flat
          ? { describe: () => `${path} in ${image.name}`, read: (buf, len, off) => flat.copy(buf, 0, off, Math.min(flat.length, off + len)) }
          : new ImageFileData(v.chunks!, image.chunkSize, ino.size, blobs, `${path} in ${image.name}`);
        dataOf.set(ino.nid, data);
      }
      node.data = data;
      if (v.chunks) node.chunks = v.chunks;
    }
    return node;
  };

  const rootInode = image.inodes.get(image.rootNid)!;
  const root = nodeFor(rootInode, Buffer.alloc(0), '/');
  const stack: Array<[TreeNode, ValidatedInode]> = [[root, rootInode]];
  while (stack.length) {
    const [dir, v] = stack.pop()!;
    dir.children = [];
    for (const e of v.entries!) {
      const child = image.inodes.get(e.nid);
      if (!child) throw new FormatError(`${image.name}: directory ${dir.path}: inode ${e.nid} was not validated`);
      // (A copy: the validated entry's name is a view of the bootstrap, which the tree outlives.)
      const node = nodeFor(child, Buffer.from(e.name), joinPath(dir.path, e.name));
      dir.children.push(node);
      if (node.kind === 'dir') stack.push([node, child]);
    }
  }
  return { root, inodeOf };
}
