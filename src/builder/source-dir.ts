/** Source stage: a directory on disk becomes a TreeNode tree (names and paths as raw bytes). */
import fs from 'node:fs';
import path from 'node:path';
import { readXattrs } from '../../native/xattr/index.ts';
import { dataRangesOf, inHole } from '../../native/fscache/index.ts';
import { NydusError } from '../../erofs/errors.ts';
import { type DataSource, type TreeNode, kindFromMode, joinPath, sortChildren } from './tree.ts';
import { nodeProblem } from './limits.ts';
import { type WhiteoutSpec, droppedFromLowestLayer } from './whiteout.ts';
import { HeapRoom } from '../heap-room.ts';

class FileData implements DataSource {
  private fd: number | null = null;
  /** A sparse file's data ranges (SEEK_DATA/SEEK_HOLE), asked once; null for a file with no holes. */
  private ranges: Array<[number, number]> | null | undefined;

  /** `sparse`: the file takes fewer blocks than its size (it has holes). */
  constructor(private readonly file: Buffer, private readonly shown: string, private readonly size: number, sparse: boolean) {
    if (!sparse) this.ranges = null;
  }

  describe(): string {
    return this.shown;
  }

  /**
   * A hole's chunks are the zero chunk without their zeros being read: ext4 reads a hole by filling
   * the page cache with zeros (a 4 GiB sparse file took 14 s to build, its 5 KB of data aside).
   */
  inHole(offset: number, length: number): boolean {
    if (this.ranges === undefined) {
      try {
        this.ranges = dataRangesOf(this.open(), 0, this.size);
      } catch {
        this.ranges = null;  // a file system without SEEK_DATA: every byte is read
      }
    }
    return this.ranges !== null && inHole(this.ranges, offset, offset + length);
  }

  private open(): number {
    if (this.fd === null) {
      try {
        this.fd = fs.openSync(this.file, 'r');
      } catch (e) {
        throw new NydusError(`cannot read ${this.shown}: ${(e as Error).message}`);
      }
    }
    return this.fd;
  }

  read(buf: Buffer, length: number, offset: number): number {
    this.open();
    let done = 0;
    while (done < length) {
      const n = fs.readSync(this.fd!, buf, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return done;
  }
  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }
}

function concatPath(dir: Buffer, name: Buffer): Buffer {
  return Buffer.concat([dir, Buffer.from('/'), name]);
}

function statNode(file: Buffer, name: Buffer, treePath: string, shown: string): TreeNode {
  let st: fs.BigIntStats;
  try {
    st = fs.lstatSync(file, { bigint: true });
  } catch (e) {
    throw new NydusError(`cannot stat ${shown}: ${(e as Error).message}`);
  }
  const mode = Number(st.mode);
  const kind = kindFromMode(mode);
  let xattrs: Map<string, Buffer>;
  try {
    xattrs = readXattrs(file);
  } catch (e) {
    throw new NydusError(`cannot read xattrs of ${shown}: ${(e as Error).message}`);
  }
  const node: TreeNode = {
    name,
    kind,
    mode,
    uid: Number(st.uid),
    gid: Number(st.gid),
    // Floor division: before 1970 the kernel shows (seconds - 1, 1e9 - ns), never a negative ns.
    mtimeSec: Number(floorDiv(st.mtimeNs, 1_000_000_000n)),
    mtimeNsec: Number(st.mtimeNs - floorDiv(st.mtimeNs, 1_000_000_000n) * 1_000_000_000n),
    size: 0,
    rdev: kind === 'chrdev' || kind === 'blkdev' ? Number(st.rdev) : 0,
    xattrs,
    path: treePath,
  };
  if (kind === 'file') {
    node.size = Number(st.size);
    node.data = new FileData(file, shown, node.size, st.blocks * 512n < st.size);
  } else if (kind === 'symlink') {
    node.target = fs.readlinkSync(file, { encoding: 'buffer' });
    node.size = node.target.length;
  }
  // Every inode but a directory can have several names (a symlink too: link(2) without following it).
  if (kind !== 'dir' && st.nlink > 1n) node.hardlinkKey = `${st.dev}:${st.ino}`;
  const problem = nodeProblem(node);
  if (problem) throw new NydusError(`${shown}: ${problem}`);
  return node;
}

function floorDiv(a: bigint, b: bigint): bigint {
  const q = a / b;
  return a % b < 0n ? q - 1n : q;
}

/**
 * Reads a whole directory tree's metadata. Errors name the offending path. With `lowestLayer`, the
 * whiteouts of that spec are left out, as nydus does for a directory built without a parent.
 */
export function treeFromDirectory(root: string, lowestLayer?: { whiteoutSpec: WhiteoutSpec }): TreeNode {
  let st: fs.Stats;
  try {
    st = fs.statSync(root);
  } catch (e) {
    throw new NydusError(`source directory ${root}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : (e as Error).message}`);
  }
  if (!st.isDirectory()) throw new NydusError(`source ${root} is not a directory`);
  // The root through its symlinks (as `tar -C <link>` does): lstat of a link would make the image's
  // root a symlink, an image no reader takes.
  const rootBuf = Buffer.from(fs.realpathSync(root));
  const top = statNode(rootBuf, Buffer.alloc(0), '/', root);
  const stack: Array<[TreeNode, Buffer]> = [[top, rootBuf]];
  const room = new HeapRoom(`source directory ${root}`);
  while (stack.length) {
    const [dir, dirPath] = stack.pop()!;
    let names: Buffer[];
    try {
      names = fs.readdirSync(dirPath, { encoding: 'buffer' });
    } catch (e) {
      throw new NydusError(`cannot list ${path.join(root, dir.path)}: ${(e as Error).message}`);
    }
    dir.children = [];
    for (const name of names) {
      room.tick();
      const full = concatPath(dirPath, name);
      const treePath = joinPath(dir.path, name);
      const child = statNode(full, name, treePath, path.join(root, treePath));
      if (lowestLayer && droppedFromLowestLayer(child, lowestLayer.whiteoutSpec)) continue;
      dir.children.push(child);
      if (child.kind === 'dir') stack.push([child, full]);
    }
    sortChildren(dir);
  }
  return top;
}
