/**
 * From traced chunks to files, run on a registration worker (the bootstrap is read again through the
 * validation gate; the daemon's thread keeps serving the kernel meanwhile).
 *
 * A chunk several files hold (dedup: above all the one chunk of zeros that every hole and run of zeros
 * of the image shares) counts for the file most likely read: the one of which the trace holds the
 * largest share of its distinct chunks, then the most of them, then the first in directory order
 * (depth first, names sorted: the order a directory build stores them in). Given to the first file
 * alone, a chunk of zeros named a large file never read in place of the sparse file read, and fed
 * back as a prefetch list it had the whole large file fetched first. Files of the very same chunks
 * cannot be told apart: the first is named (its bytes are the other's). A hardlinked file is named by
 * its first path.
 */
import { NydusError } from '../../erofs/errors.ts';
import { openImage } from '../image/open.ts';
import { joinPath, type ChunkRef } from '../builder/tree.ts';

export interface TraceFilesRequest {
  metadataPath: string;
  /** The image as registered: its blob ids and chunk counts (positions are only meaningful for those). */
  blobs: Array<{ id: string; chunkCount: number }>;
  /** Pairs (blob ordinal, chunk position). */
  chunks: Uint32Array;
}

export interface TraceFiles {
  /** Per pair, the index into `files` of the file it belongs to; -1 for a chunk no file holds. */
  owner: Int32Array;
  /** The files owning a traced chunk, in the order of their first traced chunk. */
  files: Array<{ nid: number; path: string }>;
}

export function resolveTraceFiles(req: TraceFilesRequest): TraceFiles {
  const { image } = openImage(req.metadataPath);
  const same = image.blobs.length === req.blobs.length && image.blobs.every((b, i) => b.id === req.blobs[i].id && b.chunks.length === req.blobs[i].chunkCount);
  if (!same) throw new NydusError(`bootstrap ${req.metadataPath} is not the image registered (its blobs changed); its trace cannot be mapped to files`);
  const n = req.chunks.length / 2;
  const pairOf = new Map<ChunkRef, number>();
  for (let i = 0; i < n; i++) pairOf.set(image.blobs[req.chunks[i * 2]].chunks[req.chunks[i * 2 + 1]], i);
  const owner = new Int32Array(n).fill(-1);
  // Every file, in directory order, with the share of its distinct chunks the trace holds; and for
  // each traced chunk, the files that hold it.
  const files: Array<{ nid: number; path: string; share: number; traced: number }> = [];
  const holders = new Map<number, number[]>();
  const visited = new Set<number>();
  const stack: Array<{ nid: number; path: string }> = [{ nid: image.rootNid, path: '/' }];
  while (stack.length && pairOf.size) {
    const { nid, path } = stack.pop()!;
    if (visited.has(nid)) continue;
    visited.add(nid);
    const v = image.inodes.get(nid)!;
    const entries = v.entries ?? [];
    for (let i = entries.length - 1; i >= 0; i--) stack.push({ nid: entries[i].nid, path: joinPath(path, entries[i].name) });
    if (!v.chunks?.length) continue;
    const distinct = new Set<ChunkRef>();
    for (const c of v.chunks) if (c) distinct.add(c);
    const pairs: number[] = [];
    for (const c of distinct) {
      const pair = pairOf.get(c);
      if (pair !== undefined) pairs.push(pair);
    }
    if (!pairs.length) continue;
    const file = files.length;
    files.push({ nid, path, share: pairs.length / distinct.size, traced: pairs.length });
    for (const pair of pairs) {
      const h = holders.get(pair);
      if (h) h.push(file);
      else holders.set(pair, [file]);
    }
  }
  /** Per file that owns a traced chunk, its first (lowest) pair. */
  const firstOf = new Map<number, number>();
  for (const [pair, h] of holders) {
    let best = h[0];
    for (const f of h) {
      const a = files[f];
      const b = files[best];
      if (a.share > b.share || (a.share === b.share && a.traced > b.traced)) best = f;
    }
    owner[pair] = best;
    firstOf.set(best, Math.min(firstOf.get(best) ?? pair, pair));
  }
  const found = [...firstOf].map(([f, first]) => ({ ...files[f], file: f, first }));
  const index = new Map(found.map((x, i) => [x.file, i] as const));
  for (let i = 0; i < n; i++) if (owner[i] >= 0) owner[i] = index.get(owner[i])!;
  // Files in the order of their first traced chunk; owners renumbered to match.
  const order = found.map((_, i) => i).sort((a, b) => found[a].first - found[b].first);
  const rank = new Int32Array(found.length);
  order.forEach((f, r) => (rank[f] = r));
  for (let i = 0; i < n; i++) if (owner[i] >= 0) owner[i] = rank[owner[i]];
  return { owner, files: order.map((f) => ({ nid: found[f].nid, path: found[f].path })) };
}
