/** `nydus-image unpack`: the tree of a bootstrap and its blobs as a tar file. */
import { NydusError } from '../../erofs/errors.ts';
import { type Digester, zeroChunkDigest } from '../blob/digest.ts';
import { decodeDev } from '../../erofs/inode.ts';
import { type ChunkRef, type TreeNode, walkTree } from '../builder/tree.ts';
import { openImage } from './open.ts';
import { treeFromImage } from './tree-from-image.ts';
import { outputError, outputFile } from './output-file.ts';
import { TarWriter } from './tar-writer.ts';

const TAR_TYPE: Record<string, string> = { file: '0', symlink: '2', chrdev: '3', blkdev: '4', dir: '5', fifo: '6' };

/**
 * The data runs of a chunk-based file with holes (chunks at EROFS_NULL_ADDR, and chunks of zeros), as
 * [offset, length]; null when it has none. Holes go into the tar as holes (GNU sparse), never as zeros.
 * Zeros are known by their digest: the builder stores a hole of a sparse file as the one zero chunk of
 * its size (as any run of zeros), so without this a file of a 4 GiB hole went into the tar as 4 GiB of
 * zeros. A digest only says what the stored chunk must hold: each stored chunk taken for zeros is read
 * and verified once (`verifyStored`, the file's chunk at index i), so a chunk whose bytes do not match
 * fails the unpack as it fails every other reader; the one zero chunk of a blob costs one read.
 */
function dataRuns(chunks: ReadonlyArray<ChunkRef | null>, chunkSize: number, size: number, digesterOf: (blobIndex: number) => Digester,
  verifyStored: (i: number, c: ChunkRef) => void): Array<[number, number]> | null {
  const hole = chunks.map((c) => c === null || c.digest.equals(zeroChunkDigest(digesterOf(c.blobIndex), c.uncompressedSize)));
  if (!hole.includes(true)) return null;
  chunks.forEach((c, i) => {
    if (c && hole[i]) verifyStored(i, c);
  });
  const runs: Array<[number, number]> = [];
  for (let i = 0; i < chunks.length; i++) {
    if (hole[i]) continue;
    const start = i * chunkSize;
    const end = Math.min(size, (i + 1) * chunkSize);
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === start) last[1] += end - start;
    else runs.push([start, end - start]);
  }
  return runs;
}

export function unpackToTar(opts: { bootstrap: string; blobDir?: string; blobPaths?: string[]; output: string }): { entries: number; skipped: string[] } {
  const out = outputFile(opts.output);
  const opened = openImage(opts.bootstrap, opts);
  let tar: TarWriter;
  let root: TreeNode;
  try {
    root = treeFromImage(opened.image, opened.blobs).root;
    try {
      tar = new TarWriter(out.path, out.into);
    } catch (e) {
      throw outputError(opts.output, e);
    }
  } catch (e) {
    opened.close();
    throw e;
  }
  const linkFirst = new Map<string, Buffer>();
  const skipped: string[] = [];
  let entries = 0;
  const buf = Buffer.allocUnsafe(1 << 20);
  const digesterOf = (blobIndex: number) => opened.image.blobs[blobIndex].digester;
  /** The stored chunks of zeros read and verified, by where they are stored. */
  const zerosVerified = new Set<string>();
  try {
    // Walk with raw-byte paths so names that are not UTF-8 survive.
    const paths = new Map([[root, Buffer.from('.')]]);
    for (const n of walkTree(root)) {
      const p = paths.get(n)!;
      for (const c of n.children ?? []) paths.set(c, Buffer.concat([p, Buffer.from('/'), c.name]));
      if (n.kind === 'socket') {
        skipped.push(n.path);
        continue;
      }
      const dev = decodeDev(n.rdev);
      const base = {
        path: n.kind === 'dir' ? Buffer.concat([p, Buffer.from('/')]) : p, mode: n.mode & 0o7777, uid: n.uid, gid: n.gid,
        mtimeSec: n.mtimeSec, mtimeNsec: n.mtimeNsec, xattrs: n.xattrs, devmajor: dev.major, devminor: dev.minor,
      };
      if (n.hardlinkKey && linkFirst.has(n.hardlinkKey)) {
        tar.add({ ...base, type: '1', size: 0, linkname: linkFirst.get(n.hardlinkKey) });
        entries++;
        continue;
      }
      if (n.hardlinkKey) linkFirst.set(n.hardlinkKey, p);
      const verifyStored = (i: number, c: ChunkRef) => {
        const key = `${c.blobIndex}:${c.compressedOffset}:${c.compressedSize}:${c.uncompressedSize}`;
        if (zerosVerified.has(key)) return;
        const at = i * opened.image.chunkSize;
        const want = Math.min(opened.image.chunkSize, n.size - at);
        if (n.data!.read(buf, want, at) !== want) throw new NydusError(`${n.path}: short read from the image`);
        zerosVerified.add(key);
      };
      const runs = n.kind === 'file' && n.chunks ? dataRuns(n.chunks, opened.image.chunkSize, n.size, digesterOf, verifyStored) : null;
      tar.add({ ...base, type: TAR_TYPE[n.kind], size: n.kind === 'file' ? n.size : 0, linkname: n.target, sparse: runs ?? undefined });
      if (n.kind === 'file') {
        let stored = 0;
        for (const [start, length] of runs ?? [[0, n.size]]) {
          for (let off = start; off < start + length; off += buf.length) {
            const want = Math.min(buf.length, start + length - off);
            const got = n.data!.read(buf, want, off);
            if (got !== want) throw new NydusError(`${n.path}: short read from the image`);
            tar.data(buf.subarray(0, want));
          }
          stored += length;
        }
        tar.endFile(stored);
      }
      entries++;
    }
    tar.close();
    out.commit();
  } catch (e) {
    tar.abort();
    out.discard();
    throw outputError(opts.output, e);
  } finally {
    opened.close();
  }
  return { entries, skipped };
}
