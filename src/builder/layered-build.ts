/**
 * `create --parent-bootstrap` / `--chunk-dict` (nydus builder/src/lib.rs build_bootstrap and
 * core/bootstrap.rs load_parent_bootstrap): the parent's blobs start the blob table (all of them, as
 * nydus keeps them) and its chunks, with the dictionary's, seed the chunker's index; the new blob
 * comes right after the parent's blobs, the dictionary blobs a chunk is taken from follow it. With a
 * parent, the output is the parent with the new layer laid over it.
 */
import { type DictChunk, LayeredChunkIndex, loadDictionary } from './chunk-dict.ts';
import { BlobTable, type BuildConfig, blobDescriptorOf, checkCompatible, openRafsBootstrap, treeWithTableChunks } from './layer-image.ts';
import { overlayLayer, scopeHardlinks } from './overlay.ts';
import type { WhiteoutSpec } from './whiteout.ts';
import { type ChunkRef, type TreeNode, walkTree } from './tree.ts';
import type { BlobDescriptor } from './writer.ts';

export interface LayeredBuild {
  table: BlobTable;
  index: LayeredChunkIndex;
  /** Blob table slot of the blob this build writes. */
  newBlobIndex: number;
  /** The parent's flattened tree, which the new layer goes on top of. */
  parentTree: TreeNode | null;
}

export function openLayeredBuild(opts: { parentBootstrap?: string; chunkDict?: string; config: BuildConfig }): LayeredBuild {
  const table = new BlobTable();
  let parentTree: TreeNode | null = null;
  const parentRefs: ChunkRef[] = [];
  if (opts.parentBootstrap) {
    const parent = openRafsBootstrap(opts.parentBootstrap, 'parent bootstrap');
    checkCompatible(parent, 'parent bootstrap', opts.config, 'this build');
    const indexes = parent.blobs.map((_, i) => table.add(blobDescriptorOf(parent, i)));
    parentTree = treeWithTableChunks(parent, table, indexes);
    for (const n of walkTree(parentTree)) for (const c of n.chunks ?? []) if (c) parentRefs.push(c);
  }
  let dict = new Map<string, DictChunk>();
  if (opts.chunkDict) {
    const image = openRafsBootstrap(opts.chunkDict, 'chunk dictionary');
    checkCompatible(image, 'chunk dictionary', { ...opts.config, explicitUidGid: undefined }, 'this build');
    dict = loadDictionary(image);
  }
  const index = new LayeredChunkIndex(table, dict);
  for (const r of parentRefs) index.add(r);
  return { table, index, newBlobIndex: table.reserve(), parentTree };
}

/** After chunking: the blob table with the new blob in its slot (none when empty), and the tree to write. */
export function finishLayeredBuild(build: LayeredBuild, newBlob: BlobDescriptor | null, tree: TreeNode, spec: WhiteoutSpec): { blobs: BlobDescriptor[]; root: TreeNode } {
  if (newBlob) build.table.fill(build.newBlobIndex, newBlob);
  else build.table.remove(build.newBlobIndex);
  if (!build.parentTree) return { blobs: build.table.blobs, root: tree };
  scopeHardlinks(build.parentTree, 'parent');
  scopeHardlinks(tree, 'layer');
  return { blobs: build.table.blobs, root: overlayLayer(build.parentTree, tree, spec) };
}
