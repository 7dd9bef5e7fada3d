/** `nydus-image create`: source -> tree -> chunker -> layout -> writer, top to bottom. */
import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { NydusError } from '../../erofs/errors.ts';
import { BLOB_CHUNK_MAX_SIZE } from '../../erofs/blobmeta.ts';
import { INLINED_BLOB_ID_PLACEHOLDER } from '../../erofs/blob-toc.ts';
import { RAFS_COMPRESS_NONE } from '../../erofs/rafs.ts';
import { BlobWriter, type FinishedBlob } from '../blob/blob-writer.ts';
import { placeOutput, stageOutput } from '../image/output-file.ts';
import type { CompressorName } from '../blob/compress.ts';
import type { Digester } from '../blob/digest.ts';
import { treeFromDirectory } from './source-dir.ts';
import { treeFromTar } from './source-tar.ts';
import { openLayerSource, tarBytes } from './layer-stream.ts';
import { ChunkIndex, Chunker, chunkTree, type ChunkStats } from './chunker.ts';
import { type TreeNode, walkTree } from './tree.ts';
import type { WhiteoutSpec } from './whiteout.ts';
import { type Layout, layoutTree } from './layout.ts';
import { type BlobDescriptor, writeImage } from './writer.ts';
import { normalizePrefetchPath, prefetchChunks, prefetchFiles } from './prefetch-layout.ts';
import { finishLayeredBuild, type LayeredBuild, openLayeredBuild } from './layered-build.ts';

export interface CreateOptions {
  source: string;
  /** Where the bootstrap goes; with `blobInlineMeta` it may be left out (it is in the blob). */
  bootstrap?: string;
  /** The bootstrap inside the blob too, after the blob meta, each section followed by a tar header (erofs/blob-toc.ts). */
  blobInlineMeta?: boolean;
  /** A TOC at the blob's end listing its sections, and the chunk digest array (nydus's `--features blob-toc`). */
  blobToc?: boolean;
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
  /**
   * Whiteout rules (default oci). A directory built as the lowest layer leaves that spec's whiteouts
   * out, as nydus does; a tar layer keeps every entry; over a parent, the source's whiteouts apply.
   */
  whiteoutSpec?: WhiteoutSpec;
}

export interface CreateResult {
  /** The bootstrap file, if one was written besides the blob. */
  bootstrap: string | null;
  blob: FinishedBlob | null;
  /** Ids of every blob the image references, in blob table order. */
  blobIds: string[];
  stats: ChunkStats;
  inodes: number;
  /** Paths of the prefetch list the image does not hold (left out of its prefetch table). */
  prefetchMissing: string[];
  /**
   * The directories the layer only implies (TreeNode.implied): a bootstrap cannot tell them from
   * directories of their own, so a merge of this layer over others is told (MergeOptions.impliedDirs).
   */
  impliedDirs: string[];
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
    ciUncompressedSize: b.ciSize, tocDigest: b.tocDigest, tocSize: b.tocSize,
  };
}

/**
 * The prefetch table of a prefetch list: the nid of each path the image holds, in list order, and
 * the paths it does not hold (left out, as nydus-image does: a list traced on one image version
 * names files another may lack, and a path may be in a layer below).
 */
export function prefetchNids(layout: Layout, paths: string[]): { nids: number[]; missing: string[] } {
  const byPath = new Map([...layout.inodeOf].map(([node, ino]) => [node.path, ino.nid]));
  // (Two names of one hardlinked file are one entry.)
  const nids = new Set<number>();
  const missing: string[] = [];
  for (const p of paths) {
    const nid = byPath.get(normalizePrefetchPath(p));
    if (nid === undefined) missing.push(p);
    else nids.add(nid);
  }
  return { nids: [...nids], missing };
}

/**
 * One build's outputs: the blob being written and the chunker feeding it, then the bootstrap written
 * from the finished tree. On failure `abort` leaves nothing behind: no blob, no bootstrap, no blob
 * directory it created.
 */
class ImageBuild {
  readonly chunker: Chunker;
  private readonly writer: BlobWriter;
  private readonly createdDir: string | undefined;
  private readonly layered: LayeredBuild | null;
  private blob: FinishedBlob | null = null;
  /** The blob was put at --blob: the file there is the user's now, never removed by abort. */
  private placed = false;

  constructor(private readonly opts: CreateOptions) {
    validateChunkSize(opts.chunkSize);
    const blobDir = opts.blobDir ?? (opts.blobPath ? path.dirname(path.resolve(opts.blobPath)) : undefined);
    if (!blobDir) throw new NydusError('either a blob directory (--blob-dir/-D) or a blob path (--blob) is needed');
    if (!opts.bootstrap && !opts.blobInlineMeta) throw new NydusError('a bootstrap (--bootstrap/-B) is needed, unless it goes into the blob (--blob-inline-meta)');
    this.layered = opts.parentBootstrap || opts.chunkDict ? openLayeredBuild({ ...opts, config: { ...opts, explicitUidGid: !opts.repeatable } }) : null;
    this.createdDir = fs.mkdirSync(blobDir, { recursive: true });
    const tail = opts.blobInlineMeta || opts.blobToc ? { inlineBootstrap: !!opts.blobInlineMeta, toc: !!opts.blobToc } : undefined;
    this.writer = new BlobWriter(blobDir, this.layered?.newBlobIndex ?? 0, opts.compressor, tail);
    this.chunker = new Chunker({ chunkSize: opts.chunkSize, digester: opts.digester, blob: this.writer, index: this.layered?.index ?? new ChunkIndex() });
  }

  /** Whether the source is the lowest layer (no parent under it). */
  get lowestLayer(): boolean {
    return !this.opts.parentBootstrap;
  }

  /** The prefetch list's files in the tree (prefetch-layout.ts), their data to go first in the blob. */
  prefetchFiles(tree: TreeNode): TreeNode[] {
    return prefetchFiles(tree, this.opts.prefetchPaths ?? []);
  }

  /** `first`: the prefetch list's files (a directory source was chunked in that order already). */
  finish(tree: TreeNode, first = this.prefetchFiles(tree)): CreateResult {
    const opts = this.opts;
    this.writer.reorder(prefetchChunks(first));
    // With --blob the blob stays at its temporary name until the bootstrap is ready beside its place:
    // a failure before then leaves the file (or FIFO) at --blob as it was.
    const data = this.writer.finish(opts.blobPath !== undefined);
    let blob = this.blob = opts.blobInlineMeta ? null : data;
    const own = data ? blobDescriptor(data) : null;
    const { blobs, root } = this.layered
      ? finishLayeredBuild(this.layered, own, tree, opts.whiteoutSpec ?? 'oci')
      : { blobs: own ? [own] : [], root: tree };
    const layout = layoutTree(root, blobs.length);
    const prefetch = opts.prefetchPaths ? prefetchNids(layout, opts.prefetchPaths) : undefined;
    const { meta } = writeImage(layout, {
      chunkSize: opts.chunkSize, compressor: opts.compressor, digester: opts.digester, blobs,
      // No build time (nydus-image writes none): the same source builds the same bytes.
      buildTime: 0,
      explicitUidGid: !opts.repeatable,
      prefetch: prefetch?.nids,
    });
    // The blob's own id, with the bootstrap inside it, is the digest of the whole: known only now.
    if (opts.blobInlineMeta) blob = this.blob = this.writer.appendBootstrap(Buffer.from(meta.buffer, meta.byteOffset, meta.byteLength), opts.blobPath !== undefined, data);
    const bootstrap = opts.bootstrap ? stageOutput(opts.bootstrap, meta) : null;
    if (blob && opts.blobPath) {
      try {
        placeOutput(blob.path, opts.blobPath);
      } catch (e) {
        bootstrap?.discard();
        throw e;
      }
      this.placed = true;
      blob.path = opts.blobPath;
    }
    bootstrap?.commit();
    const final = blob;
    return {
      bootstrap: opts.bootstrap ?? null, blob, blobIds: blobs.map((b) => (b.blobId === INLINED_BLOB_ID_PLACEHOLDER && final ? final.blobId : b.blobId)),
      stats: this.chunker.stats, inodes: layout.inodes.length, prefetchMissing: prefetch?.missing ?? [],
      impliedDirs: [...walkTree(root)].filter((n) => n.implied).map((n) => n.path),
    };
  }

  abort(): void {
    this.writer.abort();
    // A blob that was already there (the same bytes for another image) stays, and so does one put at
    // --blob (the build failed after: it is whole, and what was there before is gone anyway).
    if (this.blob && !this.blob.existed && !this.placed) fs.rmSync(this.blob.path, { force: true });
    if (this.createdDir) fs.rmSync(this.createdDir, { recursive: true, force: true });
  }
}

/** Builds from a directory (`-t dir-rafs`). */
export function createImage(opts: CreateOptions): CreateResult {
  const build = new ImageBuild(opts);
  try {
    // Over a parent the source's whiteouts are kept, to delete the parent's entries.
    const tree = treeFromDirectory(opts.source, build.lowestLayer ? { whiteoutSpec: opts.whiteoutSpec ?? 'oci' } : undefined);
    const first = build.prefetchFiles(tree);
    chunkTree(tree, build.chunker, first);
    return build.finish(tree, first);
  } catch (e) {
    build.abort();
    throw e;
  }
}

/**
 * Builds from a layer tar (`-t tar-rafs` / `targz-rafs`): `opts.source` is a file or `-` for stdin,
 * plain or gzip, or `input` a stream already open (a registry download) and the name errors give it.
 * The stream is read once; file data goes to the blob as it passes.
 */
export async function createImageFromTar(opts: CreateOptions, input?: { stream: Readable; name: string }): Promise<CreateResult> {
  const build = new ImageBuild(opts);
  let stream: Readable | undefined;
  try {
    const layer = input ?? openLayerSource(opts.source);
    stream = layer.stream;
    const tree = await treeFromTar(tarBytes(stream, layer.name), layer.name, build.chunker);
    return build.finish(tree);
  } catch (e) {
    build.abort();
    throw e;
  } finally {
    // A failed build stops reading; a file's descriptor is closed either way.
    if (stream !== process.stdin) stream?.destroy();
  }
}
