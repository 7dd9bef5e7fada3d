/** `nydus-image create`: source -> tree -> chunker -> layout -> writer, top to bottom. */
import fs from 'node:fs';
import path from 'node:path';
import { NydusError } from '../../erofs/errors.ts';
import { BLOB_CHUNK_MAX_SIZE } from '../../erofs/blobmeta.ts';
import { RAFS_COMPRESS_NONE } from '../../erofs/rafs.ts';
import { BlobWriter, type FinishedBlob } from '../blob/blob-writer.ts';
import type { CompressorName } from '../blob/compress.ts';
import type { Digester } from '../blob/digest.ts';
import { treeFromDirectory } from './source-dir.ts';
import { ChunkIndex, chunkTree, type ChunkStats } from './chunker.ts';
import { type Layout, layoutTree } from './layout.ts';
import { type BlobDescriptor, writeImage } from './writer.ts';
import { finishLayeredBuild, openLayeredBuild } from './layered-build.ts';
import type { WhiteoutSpec } from './overlay.ts';

export interface CreateOptions {
  source: string;
  bootstrap: string;
  /** Directory for the blob, named by its sha256. */
  blobDir?: string;
  /** Exact path for the blob instead. */
  blobPath?: string;
  chunkSize: number;
  compressor: CompressorName;
  digester: Digester;
  /** Paths (from the image root) whose inodes go into the prefetch table, in order. */
  prefetchPaths?: string[];
  /** Reproducible output: build time 0. */
  repeatable?: boolean;
  /** Build on top of this image: the result is the parent with the source laid over it. */
  parentBootstrap?: string;
  /** Chunks of this bootstrap are referenced instead of stored again. */
  chunkDict?: string;
  /** Whiteouts of the source applied over the parent. */
  whiteoutSpec?: WhiteoutSpec;
}

export interface CreateResult {
  bootstrap: string;
  blob: FinishedBlob | null;
  /** Ids of every blob the image references, in blob table order. */
  blobIds: string[];
  stats: ChunkStats;
  inodes: number;
}

export function validateChunkSize(chunkSize: number): void {
  if (!Number.isInteger(chunkSize) || chunkSize < 4096 || chunkSize > BLOB_CHUNK_MAX_SIZE || (chunkSize & (chunkSize - 1)) !== 0) {
    throw new NydusError(`invalid chunk size ${chunkSize}: must be a power of two between 0x1000 and 0x1000000`);
  }
}

export function blobDescriptor(b: FinishedBlob): BlobDescriptor {
  return {
    blobId: b.blobId, compressedSize: b.fileSize, uncompressedSize: b.uncompressedSize, chunkCount: b.chunkCount,
    features: b.features, ciCompressor: RAFS_COMPRESS_NONE, ciOffset: b.ciOffset, ciCompressedSize: b.ciSize,
    ciUncompressedSize: b.ciSize,
  };
}

export function prefetchNids(layout: Layout, paths: string[]): number[] {
  const byPath = new Map([...layout.inodeOf].map(([node, ino]) => [node.path, ino.nid]));
  return paths.map((p) => {
    const norm = '/' + p.split('/').filter(Boolean).join('/');
    const nid = byPath.get(norm);
    if (nid === undefined) throw new NydusError(`prefetch path ${p} is not in the source tree`);
    return nid;
  });
}

export function refuseExisting(file: string, what: string): void {
  if (fs.existsSync(file)) throw new NydusError(`${what} ${file} already exists; remove it first`);
}

export function createImage(opts: CreateOptions): CreateResult {
  validateChunkSize(opts.chunkSize);
  refuseExisting(opts.bootstrap, 'bootstrap');
  if (opts.blobPath) refuseExisting(opts.blobPath, 'blob');
  const blobDir = opts.blobDir ?? (opts.blobPath ? path.dirname(path.resolve(opts.blobPath)) : undefined);
  if (!blobDir) throw new NydusError('either a blob directory (--blob-dir/-D) or a blob path (--blob) is needed');
  fs.mkdirSync(blobDir, { recursive: true });

  const tree = treeFromDirectory(opts.source);
  const layered = opts.parentBootstrap || opts.chunkDict ? openLayeredBuild({ ...opts, config: opts }) : null;
  const writer = new BlobWriter(blobDir, layered?.newBlobIndex ?? 0, opts.compressor);
  let blob: FinishedBlob | null;
  let stats: ChunkStats;
  try {
    stats = chunkTree(tree, { chunkSize: opts.chunkSize, digester: opts.digester, blob: writer, index: layered?.index ?? new ChunkIndex() });
    blob = writer.finish();
  } catch (e) {
    writer.abort();
    throw e;
  }
  if (blob && opts.blobPath) {
    fs.renameSync(blob.path, opts.blobPath);
    blob.path = opts.blobPath;
  }
  const own = blob ? blobDescriptor(blob) : null;
  const { blobs, root } = layered
    ? finishLayeredBuild(layered, own, tree, opts.whiteoutSpec ?? 'oci')
    : { blobs: own ? [own] : [], root: tree };
  const layout = layoutTree(root, blobs.length);
  const { meta } = writeImage(layout, {
    chunkSize: opts.chunkSize, compressor: opts.compressor, digester: opts.digester, blobs,
    buildTime: opts.repeatable ? 0 : Math.floor(Date.now() / 1000),
    prefetch: opts.prefetchPaths ? prefetchNids(layout, opts.prefetchPaths) : undefined,
  });
  fs.writeFileSync(opts.bootstrap, meta, { flag: 'wx' });
  return { bootstrap: opts.bootstrap, blob, blobIds: blobs.map((b) => b.blobId), stats, inodes: layout.inodes.length };
}
