/**
 * `nydus-image merge`: per-layer bootstraps -> one bootstrap of the flattened image, as nydus's
 * builder/src/merge.rs does it. Each layer is read back into a tree, its chunks re-pointed at the merged
 * blob table, the layers laid over each other with whiteouts applied (overlay.ts), then the usual layout
 * and writer stages write the bootstrap. No blob is read or written: chunks stay in the layer blobs.
 */
import path from 'node:path';
import { NydusError } from '../../erofs/errors.ts';
import { ErofsImage } from '../../erofs/image.ts';
import { validateImage } from '../image/validate.ts';
import { scopeHardlinks, overlayLayer } from './overlay.ts';
import type { WhiteoutSpec } from './whiteout.ts';
import {
  BlobTable, type BuildConfig, blobDescriptorOf, buildConfigOf, checkCompatible, openRafsBootstrap, treeWithTableChunks,
} from './layer-image.ts';
import { layoutTree } from './layout.ts';
import { type BlobDescriptor, writeImage } from './writer.ts';
import { BLOB_FEATURE_SEPARATE } from '../../erofs/blobmeta.ts';
import { INLINED_BLOB_ID_PLACEHOLDER } from '../../erofs/blob-toc.ts';
import { prefetchNids } from './create.ts';
import { writeOutput } from '../image/output-file.ts';
import { type TreeNode, walkTree } from './tree.ts';

export interface MergeOptions {
  /** Layer bootstraps, lowest first. */
  sources: string[];
  /** Output bootstrap. */
  bootstrap: string;
  /** A flattened image the layers go on top of; its blobs come first in the blob table. */
  parentBootstrap?: string;
  /** The chunk dictionary the layers were built with: its blobs may appear in any layer. */
  chunkDict?: string;
  /** Per layer: the id of the layer's own blob in the merged image (sha256 hex, nydus's --blob-digests). */
  blobDigests?: string[];
  /** Per layer: the blob id to use for the layer's own blob (nydus's --original-blob-ids). */
  originalBlobIds?: string[];
  /** Per layer: the size of the layer's own blob (nydus's --blob-sizes). */
  blobSizes?: number[];
  /** Per layer: sha256 hex of the layer blob's TOC (nydus's --blob-toc-digests). */
  blobTocDigests?: string[];
  /** Per layer: size of the layer blob's TOC (nydus's --blob-toc-sizes). */
  blobTocSizes?: number[];
  /** Which whiteouts to apply; nydus's merge always uses oci. */
  whiteoutSpec?: WhiteoutSpec;
  /** Paths of the merged tree whose inodes go into the prefetch table, in order. */
  prefetchPaths?: string[];
  /**
   * Per layer: the directories it only implies (CreateResult.impliedDirs), which keep the attributes
   * of the lower layers' directories they lie over. Without it, every directory of a layer is its own.
   */
  impliedDirs?: ReadonlyArray<readonly string[]>;
}

export interface MergeResult {
  bootstrap: string;
  /** Blob ids of the merged image, in blob table order. */
  blobs: string[];
  inodes: number;
  config: BuildConfig;
  /** Paths of the prefetch list the merged image does not hold (left out of its prefetch table). */
  prefetchMissing: string[];
}

function checkListLength(list: ReadonlyArray<unknown> | undefined, sources: number, what: string): void {
  if (list && list.length !== sources) throw new NydusError(`number of ${what} entries ${list.length} doesn't match number of sources ${sources}`);
}

function sha256Hex(v: string, what: string, layer: number): Buffer {
  if (!/^[0-9a-f]{64}$/.test(v)) throw new NydusError(`${what} ${JSON.stringify(v)} of layer ${layer} is not 64 lowercase hex digits`);
  return Buffer.from(v, 'hex');
}

/**
 * The per-layer overrides, on the layer's own blob, as nydus applies them: a digest or size names the
 * blob itself, or its blob meta when that is kept in a separate file (SEPARATE).
 */
function applyLayerOverrides(blob: BlobDescriptor, opts: MergeOptions, layer: number, file: string): void {
  const separate = (blob.features & BLOB_FEATURE_SEPARATE) !== 0;
  if (opts.originalBlobIds) blob.blobId = opts.originalBlobIds[layer];
  else {
    // As nydus-image merge: a layer's blob is named by its bootstrap's file name (up to the first dot),
    // as nydus-snapshotter and nydusify name each layer's bootstrap (its blob's digest). A name that
    // is no digest leaves the id the bootstrap holds.
    const prefix = path.basename(file).split('.')[0];
    if (/^[0-9a-f]{64}$/.test(prefix)) blob.blobId = prefix;
  }
  const digest = opts.blobDigests?.[layer];
  if (digest !== undefined) {
    const d = sha256Hex(digest, 'blob digest', layer);
    if (separate) blob.metaDigest = d;
    else blob.blobId = digest;
  }
  const size = opts.blobSizes?.[layer];
  if (size !== undefined) {
    if (separate) blob.metaSize = size;
    else blob.compressedSize = size;
  }
  if (opts.blobTocDigests) blob.tocDigest = sha256Hex(opts.blobTocDigests[layer], 'blob TOC digest', layer);
  if (opts.blobTocSizes) blob.tocSize = opts.blobTocSizes[layer];
  if (blob.blobId === INLINED_BLOB_ID_PLACEHOLDER) {
    throw new NydusError(`layer ${layer} (${file}): its bootstrap was inlined in its blob and names it by a placeholder: name the bootstrap file by the blob's digest, or give --blob-digests or --original-blob-ids`);
  }
  if (Buffer.byteLength(blob.blobId) > 64 || blob.blobId.length === 0) throw new NydusError(`blob id ${JSON.stringify(blob.blobId)} of layer ${layer} must be 1 to 64 bytes`);
}

export function mergeImages(opts: MergeOptions): MergeResult {
  const spec = opts.whiteoutSpec ?? 'oci';
  if (opts.sources.length === 0) throw new NydusError('source bootstrap list is empty, at least one bootstrap is required');
  checkListLength(opts.blobDigests, opts.sources.length, 'blob digest');
  checkListLength(opts.originalBlobIds, opts.sources.length, 'original blob id');
  checkListLength(opts.blobSizes, opts.sources.length, 'blob size');
  checkListLength(opts.blobTocDigests, opts.sources.length, 'toc digest');
  checkListLength(opts.blobTocSizes, opts.sources.length, 'toc size');
  checkListLength(opts.impliedDirs, opts.sources.length, 'implied directory list');

  const table = new BlobTable();
  // The first image read sets the chunk size and digester every other one must share; the superblock
  // names the last layer's compressor, as nydus's does (each blob keeps its own in the blob table).
  const first: { config?: BuildConfig; what?: string } = {};
  let last: BuildConfig | null = null;
  const agree = (image: ErofsImage, what: string) => {
    if (first.config) checkCompatible(image, what, first.config, first.what!);
    else Object.assign(first, { config: buildConfigOf(image), what: `${what} ${image.name}` });
    last = buildConfigOf(image);
  };
  let merged: TreeNode | null = null;

  if (opts.parentBootstrap) {
    const parent = openRafsBootstrap(opts.parentBootstrap, 'parent bootstrap');
    agree(parent, 'parent bootstrap');
    const indexes = parent.blobs.map((_, i) => table.add(blobDescriptorOf(parent, i)));
    merged = treeWithTableChunks(parent, table, indexes);
    scopeHardlinks(merged, 'parent');
  }

  const dictBlobIds = new Set<string>();
  if (opts.chunkDict) {
    const dict = openRafsBootstrap(opts.chunkDict, 'chunk dictionary');
    agree(dict, 'chunk dictionary');
    dict.blobs.forEach((_, i) => dictBlobIds.add(dict.blobId(i)));
  }

  /** Each layer's own blob by the id it has in the merged image: its id in its layer, and that layer. */
  const ownBlobs = new Map<string, { original: string; layer: number }>();
  for (const [layer, file] of opts.sources.entries()) {
    const image = openRafsBootstrap(file, 'layer bootstrap');
    agree(image, 'layer bootstrap');
    let ownSeen = false;
    const indexes = image.blobs.map((_, i) => {
      const blob = blobDescriptorOf(image, i);
      if (!dictBlobIds.has(blob.blobId)) {
        // A layer stores its new chunks in one blob; any other blob must come from the chunk dictionary.
        if (ownSeen) throw new NydusError(`invalid layer bootstrap ${file}: it has more than one data blob of its own (give the chunk dictionary it was built with, --chunk-dict)`);
        ownSeen = true;
        const original = blob.blobId;
        applyLayerOverrides(blob, opts, layer, file);
        // Two layers' blobs under one id would be one blob table entry: each layer's chunks read from the other's blob.
        const other = ownBlobs.get(blob.blobId);
        if (other && other.original !== original) {
          throw new NydusError(`layers ${other.layer} and ${layer} (blobs ${other.original} and ${original}) would both have blob id ${blob.blobId} in the merged image: give each layer its own (--blob-digests, --original-blob-ids)`);
        }
        ownBlobs.set(blob.blobId, { original, layer });
      }
      return table.add(blob);
    });
    const tree = treeWithTableChunks(image, table, indexes, { inlinedBlobId: true });
    scopeHardlinks(tree, `layer${layer}`);
    const implied = new Set(opts.impliedDirs?.[layer] ?? []);
    if (implied.size) for (const n of walkTree(tree)) if (n.kind === 'dir' && implied.has(n.path)) n.implied = true;
    merged = overlayLayer(merged, tree, spec);
  }

  const root = merged!;
  table.dropUnused(root);
  const layout = layoutTree(root, table.blobs.length);
  const cfg: BuildConfig = { ...first.config!, compressor: (last as BuildConfig | null)!.compressor };
  const prefetch = opts.prefetchPaths ? prefetchNids(layout, opts.prefetchPaths) : undefined;
  const { meta } = writeImage(layout, {
    chunkSize: cfg.chunkSize, compressor: cfg.compressor, digester: cfg.digester, blobs: table.blobs,
    buildTime: 0,
    explicitUidGid: cfg.explicitUidGid,
    prefetch: prefetch?.nids,
  });
  // What --blob-digests, --original-blob-ids and --blob-sizes say is written as given: the bootstrap
  // goes through the gate every reader of it will, so a merge never writes one they refuse.
  try {
    validateImage(new ErofsImage(Buffer.from(meta.buffer, meta.byteOffset, meta.byteLength), opts.bootstrap));
  } catch (e) {
    throw new NydusError(`merge would write a bootstrap its readers refuse (check the blob ids, digests and sizes given): ${(e as Error).message}; ${opts.bootstrap} was not written`);
  }
  writeOutput(opts.bootstrap, meta);
  return { bootstrap: opts.bootstrap, blobs: table.blobs.map((b) => b.blobId), inodes: layout.inodes.length, config: cfg, prefetchMissing: prefetch?.missing ?? [] };
}
