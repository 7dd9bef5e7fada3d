/**
 * Chunker stage: cuts every regular file into chunk-size pieces, identifies each by its digest and
 * stores each distinct chunk once in the blob. Reads one chunk at a time: memory does not grow with
 * file or tree size.
 */
import { type Digester, chunkDigest } from '../blob/digest.ts';
import type { BlobWriter } from '../blob/blob-writer.ts';
import { NydusError } from '../../erofs/errors.ts';
import { type ChunkRef, type TreeNode, walkTree } from './tree.ts';

/** Content-addressed index of the chunks stored so far: digest -> where it lives. */
export class ChunkIndex {
  private readonly byDigest = new Map<string, ChunkRef>();
  get(digest: Buffer): ChunkRef | undefined {
    return this.byDigest.get(digest.toString('latin1'));
  }
  add(ref: ChunkRef): void {
    this.byDigest.set(ref.digest.toString('latin1'), ref);
  }
  get size(): number {
    return this.byDigest.size;
  }
}

export interface ChunkStats {
  files: number;
  chunks: number;
  uniqueChunks: number;
  bytes: number;
}

export function chunkTree(root: TreeNode, opts: { chunkSize: number; digester: Digester; blob: BlobWriter; index: ChunkIndex }): ChunkStats {
  const stats: ChunkStats = { files: 0, chunks: 0, uniqueChunks: 0, bytes: 0 };
  const buf = Buffer.allocUnsafe(opts.chunkSize);
  const seenLinks = new Map<string, ChunkRef[]>();
  for (const node of walkTree(root)) {
    if (node.kind !== 'file') continue;
    if (node.hardlinkKey && seenLinks.has(node.hardlinkKey)) {
      node.chunks = seenLinks.get(node.hardlinkKey);
      continue;
    }
    const chunks: ChunkRef[] = [];
    const src = node.data!;
    try {
      for (let off = 0; off < node.size; off += opts.chunkSize) {
        const want = Math.min(opts.chunkSize, node.size - off);
        const got = src.read(buf, want, off);
        if (got !== want) throw new NydusError(`${src.describe()}: file shrank while reading (expected ${node.size} bytes)`);
        const data = buf.subarray(0, want);
        const digest = chunkDigest(opts.digester, data);
        let ref = opts.index.get(digest);
        if (!ref) {
          ref = opts.blob.addChunk(data, digest);
          opts.index.add(ref);
          stats.uniqueChunks++;
        }
        chunks.push(ref);
        stats.chunks++;
        stats.bytes += want;
      }
    } finally {
      src.close?.();
    }
    node.chunks = chunks;
    stats.files++;
    if (node.hardlinkKey) seenLinks.set(node.hardlinkKey, chunks);
  }
  return stats;
}
