/**
 * The heavy part of registering an image, run on a registration worker thread (registration-pool.ts):
 * the bootstrap read and passed through the validation gate, each blob's chunks packed for its blob
 * map, and the prefetch order walked. The result is a few typed arrays per blob, moved back to the
 * daemon's thread without copies.
 */
import crypto from 'node:crypto';
import { openImage } from '../image/open.ts';
import type { ValidatedImage } from '../image/validate.ts';
import { type RafsSuperMeta, rafsSuperMeta } from '../image/super-meta.ts';
import type { CompressorName } from '../blob/compress.ts';
import type { Digester } from '../blob/digest.ts';
import type { ChunkRef } from '../builder/tree.ts';
import { type PackedChunks, packChunks } from './blob-map.ts';

export interface RegistrationRequest {
  metadataPath: string;
  /** Prefetch enabled (with `all`: the whole blobs after the prefetch table's files). */
  prefetch: { enable: boolean; all: boolean };
}

export interface PlannedBlob {
  id: string;
  index: number;
  uncompressedSize: number;
  compressor: CompressorName;
  digester: Digester;
  chunks: PackedChunks;
  /** Positions (into `chunks`) to prefetch in order, the prefetch table's files' `listed` first; null when prefetch is off. */
  prefetch: PrefetchOrder | null;
}

/** A blob's prefetch order: positions in its chunk list, the first `listed` the prefetch table's files'. */
export interface PrefetchOrder {
  order: Uint32Array;
  listed: number;
}

export interface RegistrationPlan {
  bootstrapSize: number;
  /** SHA-256 (hex) of the bootstrap's bytes this plan was made from: what PlanCache keeps it by. */
  digest: string;
  blobs: PlannedBlob[];
  /** What nydusd answers for GET /api/v1/daemon/backend of a mount of the image. */
  superMeta: RafsSuperMeta;
}

export function planRegistration(req: RegistrationRequest): RegistrationPlan {
  // The same validation gate as check: blob ids, chunk ranges and sizes, every inode once.
  const { image } = openImage(req.metadataPath);
  // (The bytes validated, not a later stat of the file: size and digest describe the same bytes.)
  const bootstrapSize = image.image.buf.length;
  const order = req.prefetch.enable ? prefetchOrder(image, req.prefetch.all) : null;
  return {
    bootstrapSize,
    digest: crypto.createHash('sha256').update(image.image.buf).digest('hex'),
    superMeta: rafsSuperMeta(image),
    blobs: image.blobs.map((b) => ({
      id: b.id, index: b.index, uncompressedSize: b.uncompressedSize, compressor: b.compressor, digester: b.digester,
      chunks: packChunks(b.chunks), prefetch: order ? order[b.index] : null,
    })),
  };
}

/** The buffers of a plan, to move rather than copy between threads. */
export function planBuffers(plan: RegistrationPlan): ArrayBuffer[] {
  return plan.blobs.flatMap((b) => [b.chunks.numbers.buffer, b.chunks.digests.buffer, ...(b.prefetch ? [b.prefetch.order.buffer] : [])] as ArrayBuffer[]);
}

/**
 * What to prefetch, per blob as positions in its chunk list: the chunks of the files the bootstrap's
 * prefetch table lists (directories with everything below them), in that order; without a prefetch
 * table, or with `all`, the whole blob (after those files). `listed`: how many positions are the files'.
 */
function prefetchOrder(image: ValidatedImage, all: boolean): PrefetchOrder[] {
  const position = new Map<ChunkRef, number>();
  for (const b of image.blobs) b.chunks.forEach((c, i) => position.set(c, i));
  const listed = prefetchTableChunks(image, position);
  return image.blobs.map((b, i) => {
    const first = listed?.[i] ?? [];
    if (listed && !all) return { order: Uint32Array.from(first), listed: first.length };
    const seen = new Uint8Array(b.chunks.length);
    for (const p of first) seen[p] = 1;
    const out = new Uint32Array(b.chunks.length);
    out.set(first);
    let n = first.length;
    for (let p = 0; p < b.chunks.length; p++) if (!seen[p]) out[n++] = p;
    return { order: out, listed: first.length };
  });
}

/** The chunk positions of the prefetch table's files, per blob in table order; null without a table. */
function prefetchTableChunks(image: ValidatedImage, position: Map<ChunkRef, number>): number[][] | null {
  if (image.image.prefetchTable().length === 0) return null;
  const out: number[][] = image.blobs.map(() => []);
  // Over the decoded-once inodes: each inode (a hardlink or a directory named twice in the table)
  // is visited once, so the walk costs at most the image's own size.
  const visited = new Set<number>();
  const seen = new Set<ChunkRef>();
  for (const start of image.prefetchNids) {
    const stack = [start];
    while (stack.length) {
      const nid = stack.pop()!;
      if (visited.has(nid)) continue;
      visited.add(nid);
      const v = image.inodes.get(nid)!;
      for (let i = (v.entries?.length ?? 0) - 1; i >= 0; i--) stack.push(v.entries![i].nid);
      for (const c of v.chunks ?? []) {
        if (!c || seen.has(c)) continue;
        seen.add(c);
        out[c.blobIndex].push(position.get(c)!);
      }
    }
  }
  return out;
}
