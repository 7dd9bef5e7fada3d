/**
 * Source stage for a layer tar: one pass over the stream builds the TreeNode tree, and each regular
 * file's content goes to the chunker while the stream is at it (chunked, compressed and appended to
 * the blob in entry order), so only metadata stays in memory and the layer is never stored whole.
 *
 * Tree rules, as tar extraction (and nydus) apply them: a leading `/` is dropped, `.` components and
 * repeated slashes ignored; missing parents are created (0755, root, mtime 0, as nydus does); a later
 * entry replaces an earlier one of the same path (a directory over a directory keeps the contents);
 * a hardlink names an earlier entry. Entries with `..`, or whose path goes through a symlink of the
 * layer, are refused, and so is what the format cannot hold (limits.ts), before any data is read.
 * Whiteouts are ordinary entries here: they stay in the layer's bootstrap.
 */
import { constants as C } from 'node:fs';
import { NydusError } from '../../erofs/errors.ts';
import { encodeDev } from '../../erofs/inode.ts';
import { EROFS_PATH_MAX, devNumberProblem } from '../../erofs/limits.ts';
import type { Chunker } from './chunker.ts';
import { nameProblem, nodeProblem, pathTooLong, shownPath } from './limits.ts';
import { type ChunkRef, type NodeKind, type TreeNode, joinPath } from './tree.ts';
import { type TarEntry, TarReader } from './tar-reader.ts';
import { HeapRoom } from '../heap-room.ts';

const TYPE_BITS: Record<Exclude<TarEntry['type'], 'hardlink'>, number> = {
  file: C.S_IFREG, dir: C.S_IFDIR, symlink: C.S_IFLNK, chrdev: C.S_IFCHR, blkdev: C.S_IFBLK, fifo: C.S_IFIFO,
};

class LayerTree {
  readonly root: TreeNode;
  private readonly children = new Map<TreeNode, Map<string, TreeNode>>();
  private nextLinkKey = 0;

  /** `made` is told of every node the tree makes itself (a directory a path implies), as of each entry. */
  constructor(private readonly layer: string, private readonly made: () => void = () => undefined) {
    this.root = this.implicitDir(Buffer.alloc(0), '/');
  }

  private implicitDir(name: Buffer, path: string): TreeNode {
    const dir: TreeNode = {
      name, kind: 'dir', mode: C.S_IFDIR | 0o755, uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, size: 0, rdev: 0,
      xattrs: new Map(), path, implied: true,
    };
    this.children.set(dir, new Map());
    return dir;
  }

  fail(entry: Buffer, what: string): NydusError {
    return new NydusError(`layer ${this.layer}: entry ${shownPath(entry)}: ${what}`);
  }

  /** Path components of an entry or hardlink target path. */
  components(entry: Buffer, p: Buffer): Buffer[] {
    const out: Buffer[] = [];
    // '/' and each component with the '/' after it: the path from the root, bounded as the VFS bounds it.
    let length = 0;
    let start = 0;
    for (let i = 0; i <= p.length; i++) {
      if (i < p.length && p[i] !== 0x2f) continue;
      const c = p.subarray(start, i);
      start = i + 1;
      if (c.length === 0 || (c.length === 1 && c[0] === 0x2e)) continue;
      if (c.length === 2 && c[0] === 0x2e && c[1] === 0x2e) throw this.fail(entry, `path ${JSON.stringify(p.toString('utf8'))} has a '..' component`);
      const problem = nameProblem(c);
      if (problem) throw this.fail(entry, p === entry ? problem : `path ${JSON.stringify(p.toString('utf8'))}: ${problem}`);
      length += 1 + c.length;
      if (length > EROFS_PATH_MAX) throw this.fail(entry, `${p === entry ? 'its path' : `path ${shownPath(p)}`} ${pathTooLong}`);
      out.push(Buffer.from(c));
    }
    return out;
  }

  /** The directory holding `parts`' last component; missing ones are created unless `lookupOnly`. */
  parentDir(entry: Buffer, parts: Buffer[], lookupOnly: boolean): TreeNode | undefined {
    let dir = this.root;
    for (const name of parts.slice(0, -1)) {
      const map = this.children.get(dir)!;
      let next = map.get(name.toString('latin1'));
      if (!next) {
        if (lookupOnly) return undefined;
        this.made();
        next = this.implicitDir(name, joinPath(dir.path, name));
        map.set(name.toString('latin1'), next);
      } else if (next.kind === 'symlink') {
        throw this.fail(entry, `path goes through ${next.path}, a symlink of the same layer`);
      } else if (next.kind !== 'dir') {
        throw this.fail(entry, `path goes through ${next.path}, which is not a directory`);
      }
      dir = next;
    }
    return dir;
  }

  lookup(dir: TreeNode, name: Buffer): TreeNode | undefined {
    return this.children.get(dir)!.get(name.toString('latin1'));
  }

  /** A hardlink's inode: the earlier entry it names, shared under one hardlink key. */
  linkTarget(entry: TarEntry): TreeNode {
    const parts = this.components(entry.path, entry.linkname);
    const dir = parts.length ? this.parentDir(entry.path, parts, true) : undefined;
    const target = dir && this.lookup(dir, parts[parts.length - 1]);
    // `t/` names a directory: GNU tar refuses to link it where t is a file ("Not a directory").
    if (target && target.kind !== 'dir' && entry.linkname[entry.linkname.length - 1] === 0x2f) {
      throw this.fail(entry.path, `hardlink target ${JSON.stringify(entry.linkname.toString('utf8'))} ends in '/', but ${target.path} is not a directory`);
    }
    if (!target) throw this.fail(entry.path, `hardlink target ${JSON.stringify(entry.linkname.toString('utf8'))} is not an earlier entry of the layer`);
    if (target.kind === 'dir') throw this.fail(entry.path, `hardlink target ${target.path} is a directory`);
    target.hardlinkKey ??= `tar:${this.nextLinkKey++}`;
    return target;
  }

  /** Puts `node` at its place; the same path again replaces what was there, as extraction does. */
  insert(dir: TreeNode, node: TreeNode): void {
    const map = this.children.get(dir)!;
    const key = node.name.toString('latin1');
    const old = map.get(key);
    if (node.kind === 'dir') this.children.set(node, old?.kind === 'dir' ? this.children.get(old)! : new Map());
    if (old?.kind === 'dir') this.children.delete(old);
    map.set(key, node);
  }

  /** A directory entry for the root changes the root's attributes; its contents stay. */
  setRoot(node: TreeNode): void {
    const { name, path, ...attrs } = node;
    void name;
    void path;
    Object.assign(this.root, attrs);
    delete this.root.implied;
  }

  /** The finished tree: children lists in name order. */
  finish(): TreeNode {
    for (const [dir, map] of this.children) {
      dir.children = [...map.values()].sort((a, b) => Buffer.compare(a.name, b.name));
    }
    return this.root;
  }
}

/**
 * Reads a plain tar stream to its end: returns the layer's tree, every regular file's chunks already
 * added to `chunker`. `layer` names the archive in error messages.
 */
export async function treeFromTar(source: AsyncIterable<Buffer>, layer: string, chunker: Chunker): Promise<TreeNode> {
  const tar = new TarReader(source, layer);
  const room = new HeapRoom(`layer ${layer}`);
  // (A directory a path implies is a node as an entry is: a path of thousands of them costs as much.)
  const tree = new LayerTree(layer, () => room.tick());
  const { chunkSize, buffer } = chunker;
  for (let entry = await tar.next(); entry; entry = await tar.next()) {
    room.tick();
    const parts = tree.components(entry.path, entry.path);
    // A path ending in '/' names a directory: extraction could make no other kind there.
    if (entry.type !== 'dir' && entry.path[entry.path.length - 1] === 0x2f) throw tree.fail(entry.path, `its path ends in '/', which only a directory's may, but it is a ${entry.type}`);
    const isRoot = parts.length === 0;
    if (isRoot && entry.type !== 'dir') throw tree.fail(entry.path, `the layer's root must be a directory, not a ${entry.type}`);
    const dir = isRoot ? tree.root : tree.parentDir(entry.path, parts, false)!;
    const name = isRoot ? Buffer.alloc(0) : parts[parts.length - 1];
    const path = isRoot ? '/' : joinPath(dir.path, name);

    let node: TreeNode;
    if (entry.type === 'hardlink') {
      const target = tree.linkTarget(entry);
      node = { ...target, name, path, children: undefined };
    } else {
      const device = entry.type === 'chrdev' || entry.type === 'blkdev';
      const devProblem = device ? devNumberProblem(entry.devmajor, entry.devminor) : null;
      if (devProblem) throw tree.fail(entry.path, devProblem);
      node = {
        // A symlink's permission bits are 0777 whatever the header says: symlink(2), which extraction
        // makes it with, has no mode, and the kernel never checks them.
        name, kind: entry.type satisfies NodeKind, mode: TYPE_BITS[entry.type] | (entry.type === 'symlink' ? 0o777 : entry.mode), uid: entry.uid, gid: entry.gid,
        mtimeSec: entry.mtimeSec, mtimeNsec: entry.mtimeNsec, size: 0,
        rdev: device ? encodeDev(entry.devmajor, entry.devminor) : 0,
        xattrs: entry.xattrs, path,
      };
      if (entry.type === 'symlink') {
        node.target = entry.linkname;
        node.size = entry.linkname.length;
      } else if (entry.type === 'file') {
        node.size = entry.size;
      }
      // Before any data is read: a file the format cannot hold is refused at no cost.
      const problem = nodeProblem(node, { chunkSize, refsBefore: chunker.stats.chunks });
      if (problem) throw tree.fail(entry.path, problem);
      if (entry.type === 'file') {
        // Chunks wholly inside a hole of a sparse file are zero chunks, added without reading or
        // hashing their zeros: a huge sparse file costs what its data and its chunk count cost.
        const chunks: ChunkRef[] = [];
        for (let off = 0; off < entry.size; off += chunkSize) {
          const want = Math.min(chunkSize, entry.size - off);
          if (tar.holeAhead(want)) {
            tar.skipHole(want);
            chunks.push(chunker.addZeroChunk(want));
          } else {
            await tar.readContent(buffer, want);
            chunks.push(chunker.addChunk(buffer.subarray(0, want)));
          }
          // (A chunk reference is held as an entry is: a sparse file makes millions for a few bytes.)
          room.tick();
        }
        node.chunks = chunks;
        chunker.fileDone();
      }
    }
    if (isRoot) tree.setRoot(node);
    else tree.insert(dir, node);
  }
  return tree.finish();
}
