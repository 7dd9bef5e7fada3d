/**
 * Existing bootstraps as inputs of a build (merge layers, a parent bootstrap, a chunk dictionary):
 * their build settings, their blobs as entries of the new image's blob table, and their trees with
 * every chunk re-pointed at that table. Only the bootstraps are read: no blob is needed.
 */
import { NydusError } from '../../erofs/errors.ts';
import type { ErofsImage } from '../../erofs/image.ts';
import { BLOB_FEATURE_INLINED_FS_META } from '../../erofs/blobmeta.ts';
import {
  RAFS_FLAG_EXPLICIT_UID_GID, RAFS_FLAG_HASH_BLAKE3, RAFS_FLAG_HASH_SHA256, RAFS_FLAG_TARFS_MODE, rafsFlagsCompressor,
} from '../../erofs/rafs.ts';
import { type CompressorName, isCompressorName } from '../blob/compress.ts';
import type { Digester } from '../blob/digest.ts';
import { openBootstrap } from '../image/open.ts';
import { validateImage } from '../image/validate.ts';
import { treeFromImage } from '../image/tree-from-image.ts';
import { type ChunkRef, type TreeNode, walkTree } from './tree.ts';
import type { BlobDescriptor } from './writer.ts';

/**
 * The settings of a build. Images whose chunks end up in one image must agree on chunk size and
 * digester; each blob keeps its own compressor in the blob table.
 */
export interface BuildConfig {
  chunkSize: number;
  compressor: CompressorName;
  digester: Digester;
  /** Whether the inodes carry their owners (RAFS's EXPLICIT_UID_GID; not with `create --repeatable`). */
  explicitUidGid?: boolean;
}

/**
 * Layers that cannot make one image (nydus's MergeError::InconsistentFilesystem): `nydus-image merge`
 * exits 2 on it, which acceleration-service takes as "convert again without the cache".
 */
export class InconsistentFilesystemError extends NydusError {
  exitCode?: number;
}

export function openRafsBootstrap(file: string, what: string): ErofsImage {
  const image = openBootstrap(file);
  if (!image.isRafs) throw new NydusError(`${what} ${file} is not a RAFS v6 bootstrap`);
  return image;
}

export function buildConfigOf(image: ErofsImage): BuildConfig {
  const flags = image.ext!.s_flags;
  if (flags & RAFS_FLAG_TARFS_MODE) throw new NydusError(`${image.name}: tarfs-mode bootstraps are not supported by nydus-ts`);
  // Read as check's report reads it (rafsFlagsCompressor); of nydus's compressors, nydus-ts has all but gzip.
  const named = rafsFlagsCompressor(flags);
  const compressor = isCompressorName(named) ? named : null;
  const digester = flags & RAFS_FLAG_HASH_BLAKE3 ? 'blake3' : flags & RAFS_FLAG_HASH_SHA256 ? 'sha256' : null;
  if (!compressor) throw new NydusError(`${image.name}: its compressor (flags 0x${flags.toString(16)}) is not supported by nydus-ts`);
  if (!digester) throw new NydusError(`${image.name}: its digester (flags 0x${flags.toString(16)}) is not supported by nydus-ts`);
  return { chunkSize: image.chunkSize, compressor, digester, explicitUidGid: (flags & RAFS_FLAG_EXPLICIT_UID_GID) !== 0 };
}

/** Refuses an image whose chunks cannot live in one image with `expected`'s. */
export function checkCompatible(image: ErofsImage, what: string, expected: BuildConfig, against: string): void {
  const got = buildConfigOf(image);
  for (const k of ['chunkSize', 'digester'] as const) {
    if (got[k] !== expected[k]) {
      const show = (v: string | number) => (typeof v === 'number' ? `0x${v.toString(16)}` : v);
      throw new InconsistentFilesystemError(`${what} ${image.name} uses ${k === 'chunkSize' ? 'chunk size' : k} ${show(got[k])}, ${against} uses ${show(expected[k])}`);
    }
  }
  // (A chunk dictionary lends chunks only: its owners' setting does not matter; it has none given.)
  if (expected.explicitUidGid !== undefined && got.explicitUidGid !== expected.explicitUidGid) {
    const show = (v: boolean | undefined) => (v ? 'records file owners' : 'records no file owners (built with --repeatable)');
    throw new InconsistentFilesystemError(`${what} ${image.name} ${show(got.explicitUidGid)}, ${against} ${show(expected.explicitUidGid)}`);
  }
}

/**
 * A blob of `image` as another image's blob table holds it. Its bootstrap is not inlined in it for that
 * image: INLINED_FS_META is dropped, as nydus drops it for the blobs it carries over (nydusd names a
 * blob with that bit by the file its bootstrap is read from).
 */
export function blobDescriptorOf(image: ErofsImage, i: number): BlobDescriptor {
  const b = image.blobs[i];
  return {
    blobId: image.blobId(i), compressedSize: b.compressed_size, uncompressedSize: b.uncompressed_size,
    chunkCount: b.chunk_count, features: b.features & ~BLOB_FEATURE_INLINED_FS_META, ciCompressor: b.ci_compressor, ciOffset: b.ci_offset,
    ciCompressedSize: b.ci_compressed_size, ciUncompressedSize: b.ci_uncompressed_size, compressionAlgo: b.compression_algo,
    tocDigest: b.blob_toc_digest, tocSize: b.blob_toc_size, metaDigest: b.blob_meta_digest, metaSize: b.blob_meta_size,
  };
}

const EMPTY_SLOT: BlobDescriptor = {
  blobId: '', compressedSize: 0, uncompressedSize: 0, chunkCount: 0, features: 0, ciCompressor: 0, ciOffset: 0,
  ciCompressedSize: 0, ciUncompressedSize: 0,
};

/**
 * The blob table of the image being built: one entry per blob id, in the order blobs are added, and
 * one ChunkRef per stored chunk, so the chunk table lists each chunk once.
 */
export class BlobTable {
  readonly blobs: BlobDescriptor[] = [];
  private readonly byId = new Map<string, number>();
  private readonly chunks = new Map<string, ChunkRef>();

  indexOf(blobId: string): number | undefined {
    return this.byId.get(blobId);
  }

  /** Index of the blob, added at the end when new. */
  add(blob: BlobDescriptor): number {
    const known = this.byId.get(blob.blobId);
    if (known !== undefined) return known;
    this.blobs.push(blob);
    this.byId.set(blob.blobId, this.blobs.length - 1);
    return this.blobs.length - 1;
  }

  /** The table's one ChunkRef for `ref`'s chunk, which lives in blob `blobIndex` of this table. */
  chunk(ref: ChunkRef, blobIndex: number): ChunkRef {
    const k = `${blobIndex}:${ref.indexInBlob}`;
    let c = this.chunks.get(k);
    if (!c) {
      c = { ...ref, blobIndex };
      this.chunks.set(k, c);
    }
    return c;
  }

  /** Keeps a slot for a blob whose descriptor is known later (the blob being written). */
  reserve(): number {
    this.blobs.push({ ...EMPTY_SLOT });
    return this.blobs.length - 1;
  }

  fill(index: number, blob: BlobDescriptor): void {
    this.blobs[index] = blob;
    this.byId.set(blob.blobId, index);
  }

  /** Removes blob `index` (no chunk may use it) and renumbers the blobs after it. */
  remove(index: number): void {
    this.keep(this.blobs.map((_, i) => i !== index));
  }

  /** Drops the blobs no chunk of `root` uses (as nydus's merge does) and renumbers the rest in order. */
  dropUnused(root: TreeNode): void {
    const used = new Set<number>();
    for (const n of walkTree(root)) for (const c of n.chunks ?? []) if (c) used.add(c.blobIndex);
    this.keep(this.blobs.map((_, i) => used.has(i)));
  }

  private keep(wanted: boolean[]): void {
    const renumber = new Map<number, number>();
    const kept: BlobDescriptor[] = [];
    this.blobs.forEach((b, i) => {
      if (!wanted[i]) return;
      renumber.set(i, kept.length);
      kept.push(b);
    });
    for (const c of this.chunks.values()) c.blobIndex = renumber.get(c.blobIndex) ?? -1;
    this.blobs.splice(0, this.blobs.length, ...kept);
    this.byId.clear();
    kept.forEach((b, i) => this.byId.set(b.blobId, i));
  }
}

/**
 * The tree of a bootstrap with each chunk pointing at `table`: `blobIndexes[i]` is where the image's
 * blob i sits in the table. Files are refused when their data cannot be carried over (holes, inline data).
 */
export function treeWithTableChunks(image: ErofsImage, table: BlobTable, blobIndexes: number[], opts: { inlinedBlobId?: boolean } = {}): TreeNode {
  // Input bootstraps pass the same validation gate as every other reader; a layer's bootstrap taken
  // out of its blob names that blob by the placeholder, its id given by the merge (`inlinedBlobId`).
  const { root } = treeFromImage(validateImage(image, opts));
  for (const n of walkTree(root)) {
    if (n.kind !== 'file') continue;
    const chunks = n.chunks;
    if (!chunks || chunks.some((c) => c === null)) {
      if (n.size > 0) throw new NydusError(`${image.name}: ${n.path} has data outside the image's blob chunks (holes or inline data), which nydus-ts cannot carry into another image`);
      continue;
    }
    n.chunks = (chunks as ChunkRef[]).map((c) => table.chunk(c, blobIndexes[c.blobIndex]));
    // Data is reached through the chunks; the layer's blobs are not opened.
    delete n.data;
  }
  return root;
}
