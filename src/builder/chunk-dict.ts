/**
 * Chunk deduplication against existing images at build time (nydus builder/src/core/chunk_dict.rs):
 * a chunk whose digest is already in the chunk dictionary or in the parent bootstrap is referenced
 * where it lives, its blob joins this image's blob table, and it is not stored in the new blob.
 * nydus asks the dictionary first, then the parent's and this build's own chunks; so does this index.
 */
import { NydusError } from '../../erofs/errors.ts';
import type { ErofsImage } from '../../erofs/image.ts';
import { BLOB_CHUNK_FLAG_COMPRESSED } from '../../erofs/blobmeta.ts';
import { INLINED_BLOB_ID_PLACEHOLDER } from '../../erofs/blob-toc.ts';
import { ChunkIndex } from './chunker.ts';
import { type BlobTable, blobDescriptorOf } from './layer-image.ts';
import type { ChunkRef } from './tree.ts';

/** `--chunk-dict` takes `bootstrap=<file>` or a bare file (nydus's parse_chunk_dict_arg). */
export function parseChunkDictArg(arg: string): string {
  const eq = arg.indexOf('=');
  const [type, file] = eq < 0 ? ['bootstrap', arg] : [arg.slice(0, eq), arg.slice(eq + 1)];
  if (type !== 'bootstrap') throw new NydusError(`invalid chunk dict type ${JSON.stringify(type)} in --chunk-dict ${arg}; supported: bootstrap=<file>`);
  if (!file) throw new NydusError(`--chunk-dict ${arg} names no file`);
  return file;
}

/** A chunk of the dictionary and the dictionary blob it lives in. */
export interface DictChunk {
  ref: ChunkRef;
  image: ErofsImage;
}

/** The dictionary's chunks by digest, from its chunk table (every chunk its blobs hold). */
export function loadDictionary(image: ErofsImage): Map<string, DictChunk> {
  // Its blobs are referenced by id from the new image: a placeholder (a layer bootstrap taken out of its blob) names none.
  image.blobs.forEach((_, i) => {
    if (image.blobId(i) === INLINED_BLOB_ID_PLACEHOLDER) throw new NydusError(`chunk dictionary ${image.name}: blob ${i} is named by the placeholder of a bootstrap inlined in its blob; use a merged bootstrap, whose blobs have their ids`);
  });
  const out = new Map<string, DictChunk>();
  for (const c of image.chunkTable()) {
    const key = c.digest.toString('latin1');
    if (out.has(key)) continue;
    out.set(key, {
      image,
      ref: {
        blobIndex: c.blobIndex, indexInBlob: c.index, digest: c.digest, uncompressedOffset: c.uncompressedOffset,
        uncompressedSize: c.uncompressedSize, compressedOffset: c.compressedOffset, compressedSize: c.compressedSize,
        compressed: (c.flags & BLOB_CHUNK_FLAG_COMPRESSED) !== 0,
      },
    });
  }
  return out;
}

/** The chunker's index when building on a parent bootstrap or with a chunk dictionary. */
export class LayeredChunkIndex extends ChunkIndex {
  constructor(private readonly table: BlobTable, private readonly dict: Map<string, DictChunk>) {
    super();
  }

  override get(digest: Buffer): ChunkRef | undefined {
    const d = this.dict.get(digest.toString('latin1'));
    if (!d) return super.get(digest);
    return this.table.chunk(d.ref, this.table.add(blobDescriptorOf(d.image, d.ref.blobIndex)));
  }
}
