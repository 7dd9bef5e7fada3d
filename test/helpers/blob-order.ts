/** Where a built image put each file's chunks in its blob, from `nydus-image inspect -R chunks`. */
import assert from 'node:assert/strict';
import { mustRun } from './cli.ts';

export interface InspectedChunk {
  blob_id: string;
  chunk_index: number;
  digest: string;
  compressed_offset: number;
  uncompressed_offset: number;
}

/** Every regular file's chunks (holes left out), by path. */
export function chunksByPath(boot: string): Map<string, InspectedChunk[]> {
  const files = JSON.parse(mustRun('nydus-image', ['inspect', '-B', boot, '-R', 'chunks']).stdout) as Array<{ path: string; chunks: Array<InspectedChunk | { hole: true }> }>;
  return new Map(files.map((f) => [f.path, f.chunks.filter((c): c is InspectedChunk => !('hole' in c))]));
}

/**
 * Asserts that the chunks of `files` (in that order, each distinct chunk once) are the first of the
 * blob, back to back in that order: the lowest chunk indexes and compressed offsets. Returns them.
 */
export function assertChunksFirst(boot: string, files: readonly string[]): InspectedChunk[] {
  const byPath = chunksByPath(boot);
  const listed: InspectedChunk[] = [];
  const seen = new Set<string>();
  for (const f of files) {
    const chunks = byPath.get(f);
    assert.ok(chunks, `${boot}: no file ${f}`);
    for (const c of chunks) if (!seen.has(c.digest)) (seen.add(c.digest), listed.push(c));
  }
  assert.deepEqual(listed.map((c) => c.chunk_index), listed.map((_, i) => i), `${boot}: the listed files' chunks are the blob's first, in list order`);
  const offsets = listed.map((c) => c.compressed_offset);
  assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b), `${boot}: their compressed offsets grow in list order`);
  const rest = [...byPath.values()].flat().filter((c) => !seen.has(c.digest));
  const lastListed = Math.max(-1, ...offsets);
  for (const c of rest) assert.ok(c.compressed_offset > lastListed, `${boot}: chunk ${c.chunk_index} of an unlisted file lies at ${c.compressed_offset}, before a listed one (${lastListed})`);
  return listed;
}
