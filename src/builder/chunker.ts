/**
 * Chunker stage: cuts every regular file into chunk-size pieces, identifies each by its digest and
 * stores each distinct chunk once in the blob. Data is pushed to it one chunk at a time, by whichever
 * source has the bytes at hand (a file on disk read by `chunkTree`, or a tar stream as it passes by):
 * memory does not grow with file or tree size.
 */
import { type Digester, chunkDigest, zeroChunkDigest } from '../blob/digest.ts';
import type { BlobWriter } from '../blob/blob-writer.ts';
import { NydusError } from '../../erofs/errors.ts';
import { type ChunkRef, type TreeNode, walkTree } from './tree.ts';
import { fileChunksProblem } from './limits.ts';

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

export interface ChunkerOptions {
  chunkSize: number;
  digester: Digester;
  blob: BlobWriter;
  index: ChunkIndex;
}

export class Chunker {
  readonly stats: ChunkStats = { files: 0, chunks: 0, uniqueChunks: 0, bytes: 0 };
  readonly chunkSize: number;
  /** Scratch buffer of one chunk, for sources that copy into it. */
  readonly buffer: Buffer;

  constructor(private readonly opts: ChunkerOptions) {
    this.chunkSize = opts.chunkSize;
    this.buffer = Buffer.allocUnsafe(opts.chunkSize);
  }

  /**
   * One chunk of a file: chunkSize bytes, shorter only at the end of the file. Stored unless the
   * same bytes are already in the blob; `data` may be reused by the caller afterwards.
   */
  addChunk(data: Buffer): ChunkRef {
    return this.add(data.length, chunkDigest(this.opts.digester, data), () => data);
  }

  /**
   * A chunk of `size` zero bytes, a hole of a sparse file: the very chunk addChunk makes of those
   * bytes (stored once, shared by every hole and zero chunk of that size), without the zeros being
   * made or hashed again, so a hole costs the same whatever its size.
   */
  addZeroChunk(size: number): ChunkRef {
    return this.add(size, zeroChunkDigest(this.opts.digester, size), () => Buffer.alloc(size));
  }

  private add(size: number, digest: Buffer, data: () => Buffer): ChunkRef {
    let ref = this.opts.index.get(digest);
    if (!ref) {
      ref = this.opts.blob.addChunk(data(), digest);
      this.opts.index.add(ref);
      this.stats.uniqueChunks++;
    }
    this.stats.chunks++;
    this.stats.bytes += size;
    return ref;
  }

  /** Counts a file whose chunks have all been added. */
  fileDone(): void {
    this.stats.files++;
  }
}

/**
 * Chunks every regular file of a tree whose data sources can be read at any offset (a directory):
 * `first` (a prefetch list's files) before the rest, which follow in directory order.
 */
export function chunkTree(root: TreeNode, chunker: Chunker, first: readonly TreeNode[] = []): ChunkStats {
  const { chunkSize, buffer: buf } = chunker;
  const seenLinks = new Map<string, ChunkRef[]>();
  const done = new Set<TreeNode>(first);
  const chunkFile = (node: TreeNode) => {
    if (node.hardlinkKey && seenLinks.has(node.hardlinkKey)) {
      node.chunks = seenLinks.get(node.hardlinkKey);
      return;
    }
    const chunks: ChunkRef[] = [];
    const src = node.data!;
    const tooMany = fileChunksProblem(node.size, chunkSize, chunker.stats.chunks);
    if (tooMany) {
      src.close?.();
      throw new NydusError(`${src.describe()}: ${tooMany}`);
    }
    try {
      for (let off = 0; off < node.size; off += chunkSize) {
        const want = Math.min(chunkSize, node.size - off);
        if (src.inHole?.(off, want)) {
          chunks.push(chunker.addZeroChunk(want));
          continue;
        }
        const got = src.read(buf, want, off);
        if (got !== want) throw new NydusError(`${src.describe()}: file shrank while reading (expected ${node.size} bytes)`);
        chunks.push(chunker.addChunk(buf.subarray(0, want)));
      }
    } finally {
      src.close?.();
    }
    node.chunks = chunks;
    chunker.fileDone();
    if (node.hardlinkKey) seenLinks.set(node.hardlinkKey, chunks);
  };
  for (const node of first) chunkFile(node);
  for (const node of walkTree(root)) if (node.kind === 'file' && !done.has(node)) chunkFile(node);
  return chunker.stats;
}
