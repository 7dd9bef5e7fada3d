/**
 * `nydus-image export --block`: one self-contained EROFS image, metadata followed by the uncompressed
 * data of every blob, chunk indexes pointing at the primary device (holes stay holes). Mounts with
 * `mount -o loop`.
 */
import fs from 'node:fs';
import { EIO, NydusError } from '../../erofs/errors.ts';
import { EROFS_BLKSIZ } from '../../erofs/super.ts';
import { layoutTree } from '../builder/layout.ts';
import { writeImage } from '../builder/writer.ts';
import { walkTree, type ChunkRef } from '../builder/tree.ts';
import type { LocalBlobReader } from '../blob/blob-reader.ts';
import { RUN_FIELDS, setRunChunk, verifyBlobRange } from '../blob/verify.ts';
import { mapBounded } from '../concurrency.ts';
import { openImage } from './open.ts';
import { outputError, outputFile, outputTarget } from './output-file.ts';
import type { ValidatedBlob } from './validate.ts';
import { treeFromImage } from './tree-from-image.ts';

export interface ExportOptions {
  bootstrap: string;
  blobDir?: string;
  blobPaths?: string[];
  output: string;
  /** Chunks verified and written at once, each by a job on libuv's pool (nydus-image's --threads; 4 by default). */
  threads?: number;
}

/** nydus-image's bound on --threads. */
const EXPORT_THREADS_MAX = 1024;

export async function exportBlock(opts: ExportOptions): Promise<{ blocks: number }> {
  const threads = opts.threads ?? 4;
  if (!Number.isSafeInteger(threads) || threads < 1 || threads > EXPORT_THREADS_MAX) throw new NydusError(`invalid thread count ${threads}: a whole number from 1 to ${EXPORT_THREADS_MAX}`);
  // The image is written at offsets, then put in place: a file there is replaced, a character device
  // (/dev/null) written into. A pipe cannot take writes at offsets, and on a block device what the
  // image leaves unwritten (holes, padding) would read as the device's old bytes, not zeros.
  const target = outputTarget(opts.output);
  if (target.into && !target.stat?.isCharacterDevice()) {
    throw new NydusError(`output ${opts.output} is ${target.stat?.isFIFO() ? 'a FIFO' : target.stat?.isBlockDevice() ? 'a block device' : 'no regular file'}; `
      + 'a block image is written at offsets, holes left unwritten, and needs a regular file');
  }
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
    const out = outputFile(opts.output);
    let fd: number;
    try {
      fd = fs.openSync(out.path, out.into ? 'r+' : 'wx');
    } catch (e) {
      throw outputError(opts.output, e);
    }
    try {
      fs.writeSync(fd, meta, 0, meta.length, 0);
      // Each chunk once, in blob order: read, verified and written at its place by a pool job of
      // its own, `threads` of them at once (a chunk and its padding end where the next one starts).
      const chunks = new Set<ChunkRef>();
      for (const node of walkTree(root)) for (const c of node.chunks ?? []) if (c) chunks.add(c);
      const ordered = [...chunks].sort((a, b) => a.blobIndex - b.blobIndex || a.compressedOffset - b.compressedOffset);
      await mapBounded(ordered, threads, (c) => exportChunk(blobs[c.blobIndex], image.blobs[c.blobIndex], c, fd, blobBaseBlk[c.blobIndex] * EROFS_BLKSIZ));
      if (!out.into) {
        fs.ftruncateSync(fd, total * EROFS_BLKSIZ);
        fs.fsyncSync(fd);
      }
      fs.closeSync(fd);
      fd = -1;
      out.commit();
    } catch (e) {
      if (fd >= 0) fs.closeSync(fd);
      out.discard();
      throw outputError(opts.output, e);
    }
    return { blocks: total };
  } finally {
    opened.close();
  }
}

/** Reads, verifies and writes one chunk into the image at `base` + its offset; a chunk that fails is an EIO naming it. */
async function exportChunk(reader: LocalBlobReader, blob: ValidatedBlob, c: ChunkRef, fd: number, base: number): Promise<void> {
  const layout = new Float64Array(RUN_FIELDS);
  setRunChunk(layout, 0, { storedOffset: 0, storedSize: c.compressedSize, outOffset: 0, outSize: c.uncompressedSize, compressed: c.compressed });
  const r = await verifyBlobRange({
    blobFd: reader.fd, storedOffset: c.compressedOffset, storedSize: c.compressedSize, compressor: blob.compressor, digester: blob.digester,
    layout, digests: c.digest, digestSize: c.digest.length, where: [`blob ${reader.path} chunk ${c.indexInBlob}`], target: { fd, offset: base + c.uncompressedOffset },
  }).catch((e: Error) => {
    throw new NydusError(`blob ${reader.path} chunk ${c.indexInBlob}: ${e.message}`, EIO);
  });
  if (r.errors[0]) throw new NydusError(r.errors[0], EIO);
  if (r.writeError) throw new NydusError(`cannot write the image: ${r.writeError.message}`);
}
