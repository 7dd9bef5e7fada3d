/**
 * `nydus-image export --block`: one self-contained EROFS image, metadata followed by the uncompressed
 * data of every blob, chunk indexes pointing at the primary device. Mounts with `mount -o loop`.
 */
import fs from 'node:fs';
import { NydusError } from '../../erofs/errors.ts';
import { EROFS_BLKSIZ } from '../../erofs/super.ts';
import { layoutTree } from '../builder/layout.ts';
import { writeImage } from '../builder/writer.ts';
import { walkTree, type ChunkRef } from '../builder/tree.ts';
import { blobCompressor, blobDigester, openBlobs, openBootstrap } from './open.ts';
import { treeFromImage } from './tree-from-image.ts';

export interface ExportOptions {
  bootstrap: string;
  blobDir?: string;
  blobPaths?: string[];
  output: string;
}

export function exportBlock(opts: ExportOptions): { blocks: number } {
  if (fs.existsSync(opts.output)) throw new NydusError(`output ${opts.output} already exists; remove it first`);
  const image = openBootstrap(opts.bootstrap);
  if (!image.isRafs) throw new NydusError(`${opts.bootstrap} is not a RAFS v6 bootstrap`);
  const blobs = openBlobs(image, opts);
  try {
    const { root } = treeFromImage(image, blobs);
    const layout = layoutTree(root, 0);
    const sizes = image.blobs.map((b) => b.uncompressed_size);
    const { meta, blobBaseBlk } = writeImage(layout, {
      chunkSize: image.chunkSize, compressor: blobCompressor(image, 0), digester: blobDigester(image, 0),
      buildTime: image.sb.build_time,
      blobs: image.blobs.map((b, i) => ({
        blobId: image.blobId(i), compressedSize: b.compressed_size, uncompressedSize: b.uncompressed_size,
        chunkCount: b.chunk_count, features: b.features, ciCompressor: b.ci_compressor, ciOffset: b.ci_offset,
        ciCompressedSize: b.ci_compressed_size, ciUncompressedSize: b.ci_uncompressed_size,
      })),
      blockMode: {
        blobBaseBlk: (metaBlocks) => {
          const bases: number[] = [];
          let blk = metaBlocks;
          for (const s of sizes) {
            bases.push(blk);
            blk += Math.ceil(s / EROFS_BLKSIZ);
          }
          return bases;
        },
      },
    });
    const total = (blobBaseBlk.length ? blobBaseBlk[blobBaseBlk.length - 1] + Math.ceil(sizes[sizes.length - 1] / EROFS_BLKSIZ) : meta.length / EROFS_BLKSIZ);
    const tmp = `${opts.output}.tmp-${process.pid}`;
    const fd = fs.openSync(tmp, 'wx');
    try {
      fs.writeSync(fd, meta, 0, meta.length, 0);
      const written = new Set<ChunkRef>();
      for (const node of walkTree(root)) {
        for (const c of node.chunks ?? []) {
          if (written.has(c)) continue;
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
    for (const b of blobs) b.close();
  }
}
