/**
 * Decodes an image back into a TreeNode tree (the same model the builder writes from), so that export,
 * unpack and check reuse the builder's pipeline and one walk of the image.
 */
import { constants as C } from 'node:fs';
import { FormatError, NydusError } from '../../erofs/errors.ts';
import { EROFS_BLKSIZ } from '../../erofs/super.ts';
import { EROFS_INODE_CHUNK_BASED } from '../../erofs/inode.ts';
import { EROFS_NAME_LEN } from '../../erofs/dirent.ts';
import { BLOB_CHUNK_FLAG_COMPRESSED } from '../../erofs/blobmeta.ts';
import type { ErofsImage, Inode } from '../../erofs/image.ts';
import type { LocalBlobReader } from '../blob/blob-reader.ts';
import { type ChunkRef, type DataSource, type TreeNode, joinPath, kindFromMode } from '../builder/tree.ts';

/** Resolves the chunk at a blob's uncompressed offset, from the bootstrap's chunk table or the blob meta. */
export class ChunkResolver {
  private readonly table = new Map<string, ChunkRef>();
  private readonly fromBlobMeta = new Map<number, Map<number, ChunkRef>>();

  constructor(image: ErofsImage, private readonly blobs?: LocalBlobReader[]) {
    for (const c of image.chunkTable()) {
      this.table.set(`${c.blobIndex}:${c.uncompressedOffset}`, {
        blobIndex: c.blobIndex, indexInBlob: c.index, digest: c.digest, uncompressedOffset: c.uncompressedOffset,
        uncompressedSize: c.uncompressedSize, compressedOffset: c.compressedOffset, compressedSize: c.compressedSize,
        compressed: (c.flags & BLOB_CHUNK_FLAG_COMPRESSED) !== 0,
      });
    }
  }

  resolve(blobIndex: number, uncompressedOffset: number, where: string): ChunkRef {
    const hit = this.table.get(`${blobIndex}:${uncompressedOffset}`);
    if (hit) return hit;
    const reader = this.blobs?.[blobIndex];
    if (!reader) throw new FormatError(`${where}: no chunk at offset ${uncompressedOffset} of blob ${blobIndex} in the chunk table`);
    let byOffset = this.fromBlobMeta.get(blobIndex);
    if (!byOffset) {
      byOffset = new Map();
      reader.readChunkInfos().forEach((ci, i) => byOffset!.set(ci.uncompressedOffset, {
        blobIndex, indexInBlob: i, digest: Buffer.alloc(0), ...ci, compressed: ci.compressedSize !== ci.uncompressedSize,
      }));
      this.fromBlobMeta.set(blobIndex, byOffset);
    }
    const ref = byOffset.get(uncompressedOffset);
    if (!ref) throw new FormatError(`${where}: no chunk at offset ${uncompressedOffset} of blob ${reader.path}`);
    return ref;
  }
}

/** File data read through the blobs, one verified chunk at a time. */
class ImageFileData implements DataSource {
  private cached: { index: number; data: Buffer } | null = null;
  constructor(
    private readonly chunks: Array<ChunkRef | null>, private readonly chunkSize: number,
    private readonly blobs: LocalBlobReader[] | undefined, private readonly shown: string,
  ) {}
  describe(): string {
    return this.shown;
  }
  private chunk(i: number): Buffer {
    if (this.cached?.index === i) return this.cached.data;
    const ref = this.chunks[i];
    let data: Buffer;
    if (!ref) data = Buffer.alloc(this.chunkSize);
    else {
      const blob = this.blobs?.[ref.blobIndex];
      if (!blob) throw new NydusError(`${this.shown}: blob ${ref.blobIndex} is not available`);
      data = blob.readChunk(ref);
    }
    this.cached = { index: i, data };
    return data;
  }
  read(buf: Buffer, length: number, offset: number): number {
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      const i = Math.floor(pos / this.chunkSize);
      if (i >= this.chunks.length) break;
      const data = this.chunk(i);
      const inChunk = pos - i * this.chunkSize;
      if (inChunk >= data.length) break;
      done += data.copy(buf, done, inChunk, Math.min(data.length, inChunk + length - done));
    }
    return done;
  }
}

function checkName(name: Buffer, where: string): void {
  if (name.length === 0 || name.length > EROFS_NAME_LEN || name.includes(0x2f) || name.includes(0)) {
    throw new FormatError(`${where}: invalid file name ${JSON.stringify(name.toString('latin1'))}`);
  }
}

export interface ImageTree {
  root: TreeNode;
  /** Inode of each node, for inspection. */
  inodeOf: Map<TreeNode, Inode>;
}

export function treeFromImage(image: ErofsImage, blobs?: LocalBlobReader[]): ImageTree {
  const resolver = new ChunkResolver(image, blobs);
  const inodeOf = new Map<TreeNode, Inode>();
  const dirsSeen = new Set<number>();
  const nodeFor = (nid: number, name: Buffer, path: string): TreeNode => {
    const ino = image.inode(nid);
    const where = `${image.name}: ${path} (inode ${nid})`;
    const kind = kindFromMode(ino.mode);
    const node: TreeNode = {
      name, kind, mode: ino.mode, uid: ino.uid, gid: ino.gid, mtimeSec: ino.mtimeSec, mtimeNsec: ino.mtimeNsec,
      size: 0, rdev: 0, xattrs: image.xattrs(ino), path,
    };
    inodeOf.set(node, ino);
    if (kind !== 'dir' && ino.nlink > 1) node.hardlinkKey = `nid:${nid}`;
    if (kind === 'chrdev' || kind === 'blkdev') node.rdev = ino.iu;
    if (kind === 'symlink') {
      node.target = Buffer.from(image.flatData(ino));
      if (node.target.length === 0 || node.target.length > 4095) throw new FormatError(`${where}: symlink target of ${node.target.length} bytes`);
      node.size = node.target.length;
    }
    if (kind === 'file') {
      node.size = ino.size;
      if (ino.datalayout !== EROFS_INODE_CHUNK_BASED) {
        // Flat regular files (plain EROFS images): data in the metadata image itself.
        const data = image.flatData(ino);
        node.data = { describe: () => where, read: (buf, len, off) => data.copy(buf, 0, off, Math.min(data.length, off + len)) };
      } else {
        const chunkSize = image.inodeChunkSize(ino);
        const refs = image.chunkMappings(ino).map((m, i) => {
          if (m.blkaddr === null) return null;
          if (m.deviceId === 0) throw new FormatError(`${where}: chunk ${i} is on the primary device, which a bootstrap does not hold`);
          const ref = resolver.resolve(m.deviceId - 1, m.blkaddr * EROFS_BLKSIZ, `${where} chunk ${i}`);
          const expect = Math.min(chunkSize, ino.size - i * chunkSize);
          if (ref.uncompressedSize !== expect) throw new FormatError(`${where}: chunk ${i} holds ${ref.uncompressedSize} bytes, the file needs ${expect}`);
          return ref;
        });
        if (refs.every((r) => r !== null)) node.chunks = refs as ChunkRef[];
        node.data = new ImageFileData(refs, chunkSize, blobs, `${path} in ${image.name}`);
      }
    }
    return node;
  };

  const root = nodeFor(image.rootNid, Buffer.alloc(0), '/');
  if (root.kind !== 'dir') throw new FormatError(`${image.name}: root inode ${image.rootNid} is not a directory`);
  const stack: Array<[TreeNode, number, number]> = [[root, image.rootNid, image.rootNid]];
  while (stack.length) {
    const [dir, nid, parentNid] = stack.pop()!;
    if (dirsSeen.has(nid)) throw new FormatError(`${image.name}: directory inode ${nid} is reachable twice (a cycle)`);
    dirsSeen.add(nid);
    const entries = image.dirEntries(inodeOf.get(dir)!);
    dir.children = [];
    let prev: Buffer | null = null;
    let dots = 0;
    for (const e of entries) {
      const where = `${image.name}: directory ${dir.path}`;
      if (prev && Buffer.compare(prev, e.name) >= 0) throw new FormatError(`${where}: entries are not sorted`);
      prev = e.name;
      const n = e.name.toString('latin1');
      if (n === '.' || n === '..') {
        const want = n === '.' ? nid : parentNid;
        if (e.nid !== want) throw new FormatError(`${where}: "${n}" points to inode ${e.nid}, expected ${want}`);
        dots++;
        continue;
      }
      checkName(e.name, where);
      const childPath = joinPath(dir.path, e.name);
      const child = nodeFor(e.nid, e.name, childPath);
      const ft = [0, C.S_IFREG, C.S_IFDIR, C.S_IFCHR, C.S_IFBLK, C.S_IFIFO, C.S_IFSOCK, C.S_IFLNK][e.fileType];
      if (ft !== (child.mode & C.S_IFMT)) throw new FormatError(`${where}: entry ${JSON.stringify(n)} has file type ${e.fileType}, its inode says mode 0${child.mode.toString(8)}`);
      dir.children.push(child);
      if (child.kind === 'dir') stack.push([child, e.nid, nid]);
    }
    if (dots !== 2) throw new FormatError(`${image.name}: directory ${dir.path} lacks "." or ".."`);
  }
  return { root, inodeOf };
}
