/**
 * `nydus-image export --block`: one self-contained EROFS image, metadata followed by the uncompressed
 * data of every blob, chunk indexes pointing at the primary device (holes stay holes). Mounts with
 * `mount -o loop`.
 */
import fs from 'node:fs';
import { NydusError } from '../../erofs/errors.ts';
import { EROFS_BLKSIZ } from '../../erofs/super.ts';
import { layoutTree } from '../builder/layout.ts';
import { writeImage } from '../builder/writer.ts';
import { walkTree, type ChunkRef } from '../builder/tree.ts';
import { openImage } from './open.ts';
import { treeFromImage } from './tree-from-image.ts';

export interface ExportOptions {
  bootstrap: string;
  blobDir?: string;
  blobPaths?: string[];
  output: string;
}

export function exportBlock(opts: ExportOptions): { blocks: number } {
  if (fs.existsSync(opts.output)) throw new NydusError(`output ${opts.output} already exists; remove it first`);
  const opened = openImage(opts.bootstrap, opts);
  const { image } = opened;
  const blobs = opened.blobs!;
  try {
    const { root } = treeFromImage(image, blobs);
    const layout = layoutTree(root, 0);
    // Each blob's data takes the blocks its chunks reach, not what the blob table claims.
    const used = image.blobs.map(() => 0);
    for (const n of walkTree(root)) {
      for (const c of n.chunks ?? []) if (c) used[c.blobIndex] = Math.max(used[c.blobIndex], Math.ceil((c.uncompressedOffset + c.uncompressedSize) / EROFS_BLKSIZ));
    }
    const first = image.blobs[0];
    const { meta, blobBaseBlk } = writeImage(layout, {
      chunkSize: image.chunkSize, compressor: first?.compressor ?? 'none', digester: first?.digester ?? 'blake3',
      buildTime: image.image.sb.build_time,
      // Block mode only reads each blob's size (for the superblock's block count).
      blobs: used.map((u, i) => ({
        blobId: image.blobs[i].id, compressedSize: 0, uncompressedSize: u * EROFS_BLKSIZ, chunkCount: 0, features: 0,
        ciCompressor: 0, ciOffset: 0, ciCompressedSize: 0, ciUncompressedSize: 0,
      })),
      blockMode: {
        blobBaseBlk: (metaBlocks) => {
          const bases: number[] = [];
          let blk = metaBlocks;
          for (const u of used) {
            bases.push(blk);
            blk += u;
          }
          return bases;
        },
      },
    });
    const total = meta.length / EROFS_BLKSIZ + used.reduce((s, u) => s + u, 0);
    const tmp = `${opts.output}.tmp-${process.pid}`;
    const fd = fs.openSync(tmp, 'wx');
    try {
      fs.writeSync(fd, meta, 0, meta.length, 0);
      const written = new Set<ChunkRef>();
      for (const node of walkTree(root)) {
        for (const c of node.chunks ?? []) {
          if (!c || written.has(c)) continue;
          written.add(c);
          const data = blobs[c.blobIndex].readChunk(c);
          fs.writeSync(fd, data, 0, data.length, blobBaseBlk[c.blobIndex] * EROFS_BLKSIZ + c.uncompressedOffset);
        }
      }
      fs.ftruncateSync(fd, total * EROFS_BLKSIZ);
      fs.fsyncSync(fd);
    } catch (e) {
      fs.closeSync(fd);
      fs.rmSync(tmp, { force: true });
      throw e;
    }
    fs.closeSync(fd);
    fs.renameSync(tmp, opts.output);
    return { blocks: total };
  } finally {
    opened.close();
  }
}
