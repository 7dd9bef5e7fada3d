/**
 * From traced chunks to files, run on a registration worker (the bootstrap is read again through the
 * validation gate; the daemon's thread keeps serving the kernel meanwhile).
 *
 * A chunk belongs to the first file that holds it in directory order (depth first, names sorted: the
 * order a directory build stores them in). A chunk several files share (dedup) thus counts for that
 * first file only: its bytes are the same whichever file is read. A hardlinked file is named by its
 * first path in that order.
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
  /** Per file found, its first (lowest) pair. */
  const found: Array<{ nid: number; path: string; first: number }> = [];
  const visited = new Set<number>();
  const stack: Array<{ nid: number; path: string }> = [{ nid: image.rootNid, path: '/' }];
  while (stack.length && pairOf.size) {
    const { nid, path } = stack.pop()!;
    if (visited.has(nid)) continue;
    visited.add(nid);
    const v = image.inodes.get(nid)!;
    const entries = v.entries ?? [];
    for (let i = entries.length - 1; i >= 0; i--) stack.push({ nid: entries[i].nid, path: joinPath(path, entries[i].name) });
    let file = -1;
    for (const c of v.chunks ?? []) {
      const pair = c ? pairOf.get(c) : undefined;
      if (pair === undefined) continue;
      pairOf.delete(c!);
      if (file < 0) {
        file = found.length;
        found.push({ nid, path, first: pair });
      }
      owner[pair] = file;
      found[file].first = Math.min(found[file].first, pair);
    }
  }
  // Files in the order of their first traced chunk; owners renumbered to match.
  const order = found.map((_, i) => i).sort((a, b) => found[a].first - found[b].first);
  const rank = new Int32Array(found.length);
  order.forEach((f, r) => (rank[f] = r));
  for (let i = 0; i < n; i++) if (owner[i] >= 0) owner[i] = rank[owner[i]];
  return { owner, files: order.map((f) => ({ nid: found[f].nid, path: found[f].path })) };
}
