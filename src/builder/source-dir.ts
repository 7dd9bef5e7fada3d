/** Source stage: a directory on disk becomes a TreeNode tree (names and paths as raw bytes). */
import fs from 'node:fs';
import path from 'node:path';
import { readXattrs } from '../../native/xattr/index.ts';
import { dataRangesOf, inHole } from '../../native/fscache/index.ts';
import { NydusError } from '../../erofs/errors.ts';
import { type DataSource, type TreeNode, kindFromMode, joinPath, sortChildren } from './tree.ts';
import { nodeProblem, pathTooLong, shownPath } from './limits.ts';
import { EROFS_PATH_MAX } from '../../erofs/limits.ts';
import { type WhiteoutSpec, droppedFromLowestLayer } from './whiteout.ts';
import { HeapRoom } from '../heap-room.ts';

/** Which inode the walk found at a path (lstat's device and inode numbers). */
interface Identity {
  dev: bigint;
  ino: bigint;
}

/**
 * Opens what the walk found at `file` (its last component never followed, a FIFO never waited on),
 * or throws naming it when that is no longer there: another inode (a file renamed over it, a path
 * through a directory swapped for a symlink, which could name a file outside the source), or one of
 * another type (`directory`: a directory is expected, else a regular file).
 */
function openFound(file: Buffer, shown: string, found: Identity, directory: boolean): number {
  const changed = () => new NydusError(`${shown} changed during the build: it is no longer the ${directory ? 'directory' : 'file'} the walk found`);
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK | (directory ? fs.constants.O_DIRECTORY : 0));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ELOOP' || code === 'ENOTDIR') throw changed();
    throw new NydusError(`cannot ${directory ? 'list' : 'read'} ${shown}: ${(e as Error).message}`);
  }
  const st = fs.fstatSync(fd, { bigint: true });
  if (st.dev !== found.dev || st.ino !== found.ino || (directory ? !st.isDirectory() : !st.isFile())) {
    fs.closeSync(fd);
    throw changed();
  }
  return fd;
}

class FileData implements DataSource {
  private fd: number | null = null;
  /** A sparse file's data ranges (SEEK_DATA/SEEK_HOLE), asked once; null for a file with no holes. */
  private ranges: Array<[number, number]> | null | undefined;

  /** `sparse`: the file takes fewer blocks than its size (it has holes). */
  constructor(private readonly file: Buffer, private readonly shown: string, private readonly size: number, sparse: boolean, private readonly found: Identity) {
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
    this.fd ??= openFound(this.file, this.shown, this.found, false);
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

/**
 * A node of what is at `at` (a path through its parent directory's fd: /proc/self/fd/<fd>/<name>,
 * which no swap of a directory above it can redirect); `file` is its path for reading it later.
 */
function statNode(at: Buffer, file: Buffer, name: Buffer, treePath: string, shown: string): { node: TreeNode; found: Identity } {
  let st: fs.BigIntStats;
  try {
    st = fs.lstatSync(at, { bigint: true });
  } catch (e) {
    throw new NydusError(`cannot stat ${shown}: ${(e as Error).message}`);
  }
  const mode = Number(st.mode);
  const kind = kindFromMode(mode);
  let xattrs: Map<string, Buffer>;
  try {
    xattrs = readXattrs(at);
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
  const found = { dev: st.dev, ino: st.ino };
  if (kind === 'file') {
    node.size = Number(st.size);
    node.data = new FileData(file, shown, node.size, st.blocks * 512n < st.size, found);
  } else if (kind === 'symlink') {
    try {
      node.target = fs.readlinkSync(at, { encoding: 'buffer' });
    } catch (e) {
      throw new NydusError(`cannot read the symlink ${shown}: ${(e as Error).message}`);
    }
    node.size = node.target.length;
  }
  // Every inode but a directory can have several names (a symlink too: link(2) without following it).
  if (kind !== 'dir' && st.nlink > 1n) node.hardlinkKey = `${st.dev}:${st.ino}`;
  const problem = nodeProblem(node);
  if (problem) throw new NydusError(`${shown}: ${problem}`);
  return { node, found };
}

/**
 * The names of one inode must agree on what it is: a file changed between the stats of two of its
 * names would be one inode of two sizes, whose chunks (read through one name) another name's size
 * outruns.
 */
function sameInode(first: TreeNode, later: TreeNode, shown: string): void {
  const fields = ['kind', 'size', 'mode', 'uid', 'gid', 'mtimeSec', 'mtimeNsec', 'rdev'] as const;
  const changed = fields.filter((f) => first[f] !== later[f]);
  if (changed.length) throw new NydusError(`${shown} changed during the build: a hardlink of ${first.path}, its ${changed.join(', ')} differ between the two names`);
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
  const { node: top, found: topFound } = statNode(rootBuf, rootBuf, Buffer.alloc(0), '/', root);
  const stack: Array<[TreeNode, Buffer, Identity]> = [[top, rootBuf, topFound]];
  const room = new HeapRoom(`source directory ${root}`);
  const inodes = new Map<string, TreeNode>();
  while (stack.length) {
    const [dir, dirPath, dirFound] = stack.pop()!;
    const shownDir = path.join(root, dir.path);
    // Listed and stat'ed through an fd of the directory the walk found: a directory swapped for a
    // symlink meanwhile is refused, never walked (it could lead out of the source).
    const fd = openFound(dirPath, shownDir, dirFound, true);
    const at = Buffer.from(`/proc/self/fd/${fd}/`);
    try {
      let names: Buffer[];
      try {
        names = fs.readdirSync(at, { encoding: 'buffer' });
      } catch (e) {
        throw new NydusError(`cannot list ${shownDir}: ${(e as Error).message}`);
      }
      dir.children = [];
      for (const name of names) {
        room.tick();
        const treePath = joinPath(dir.path, name);
        const full = concatPath(dirPath, name);
        // As a layer tar's: no process could name it in the mounted image (nor open it here).
        if (full.length - rootBuf.length > EROFS_PATH_MAX) throw new NydusError(`source directory ${root}: the entry ${shownPath(full.subarray(rootBuf.length))} ${pathTooLong}`);
        const shown = path.join(root, treePath);
        const { node: child, found } = statNode(Buffer.concat([at, name]), full, name, treePath, shown);
        if (lowestLayer && droppedFromLowestLayer(child, lowestLayer.whiteoutSpec)) continue;
        if (child.hardlinkKey) {
          const first = inodes.get(child.hardlinkKey);
          if (first) sameInode(first, child, shown);
          else inodes.set(child.hardlinkKey, child);
        }
        dir.children.push(child);
        if (child.kind === 'dir') stack.push([child, full, found]);
      }
    } finally {
      fs.closeSync(fd);
    }
    sortChildren(dir);
  }
  return top;
}
