/** `nydus-image inspect`: superblock, blobs, prefetch table and per-file chunk information as JSON. */
import { NydusError } from '../../erofs/errors.ts';
import { EROFS_BLKSIZ } from '../../erofs/super.ts';
import { walkTree, type TreeNode } from '../builder/tree.ts';
import { openImage } from './open.ts';
import { treeFromImage } from './tree-from-image.ts';
import type { ValidatedImage } from './validate.ts';

function superblockInfo({ image }: ValidatedImage) {
  return {
    magic: `0x${image.sb.magic.toString(16)}`,
    block_size: EROFS_BLKSIZ,
    root_nid: image.sb.root_nid,
    inodes: image.sb.inos,
    blocks: image.sb.blocks,
    build_time: image.sb.build_time,
    feature_compat: image.sb.feature_compat,
    feature_incompat: image.sb.feature_incompat,
    extra_devices: image.sb.extra_devices,
    flags: image.ext?.s_flags ?? 0,
    chunk_size: image.chunkSize,
    blob_table: image.ext ? { offset: image.ext.s_blob_table_offset, size: image.ext.s_blob_table_size } : null,
    chunk_table: image.ext ? { offset: image.ext.s_chunk_table_offset, size: image.ext.s_chunk_table_size } : null,
    prefetch_table: image.ext ? { offset: image.ext.s_prefetch_table_offset, size: image.ext.s_prefetch_table_size } : null,
  };
}

/** nydus-image's keys (blob_id, compressed_size, decompressed_size, readahead_*) first, then ours. */
function blobsInfo(v: ValidatedImage) {
  return v.blobs.map((b) => {
    const raw = v.image.blobs[b.index];
    return {
      blob_id: b.id,
      decompressed_size: b.uncompressedSize,
      readahead_offset: 0,
      readahead_size: 0,
      blob_index: b.index,
      chunk_count: b.chunkCount,
      chunk_size: raw.chunk_size,
      compressor: raw.compression_algo,
      digester: raw.digest_algo,
      features: b.features,
      compressed_size: b.compressedSize,
      uncompressed_size: b.uncompressedSize,
      meta_ci_offset: raw.ci_offset,
      meta_ci_compressed_size: raw.ci_compressed_size,
      meta_ci_uncompressed_size: raw.ci_uncompressed_size,
    };
  });
}

function fileInfo(image: ValidatedImage, n: TreeNode, nid: number) {
  return {
    path: n.path,
    nid,
    mode: `0${n.mode.toString(8)}`,
    size: n.size,
    chunks: (n.chunks ?? []).map((c, i) => (c ? {
      index: i,
      blob_id: image.blobs[c.blobIndex].id,
      chunk_index: c.indexInBlob,
      digest: c.digest.toString('hex'),
      compressed: c.compressed,
      compressed_offset: c.compressedOffset,
      compressed_size: c.compressedSize,
      uncompressed_offset: c.uncompressedOffset,
      uncompressed_size: c.uncompressedSize,
    } : { index: i, hole: true })),
  };
}

/** Answers one request: `stats`, `blobs`, `prefetch`, `chunks` (all files) or `stat <path>`. */
/** `where`: the image's blobs (nydus-image inspect -D): every blob it names must be there. */
export function inspectImage(bootstrap: string, request = 'stats', where?: { blobDir: string }): unknown {
  const opened = openImage(bootstrap, where);
  try {
    return inspectOpened(opened.image, request);
  } finally {
    opened.close();
  }
}

function inspectOpened(image: ValidatedImage, request: string): unknown {
  const [cmd, ...args] = request.trim().split(/\s+/);
  if (cmd === 'blobs') return blobsInfo(image);
  const { root, inodeOf } = treeFromImage(image);
  if (cmd === 'prefetch') {
    // As nydus-image prints it: each prefetched nid with every path (hardlink name) it has.
    const paths = new Map<number, string[]>();
    for (const n of walkTree(root)) {
      const nid = inodeOf.get(n)!.nid;
      paths.set(nid, [...(paths.get(nid) ?? []), n.path]);
    }
    return image.image.prefetchTable().map((nid) => ({ inode: nid, path: paths.get(nid) ?? [] }));
  }
  if (cmd === 'stats') {
    let files = 0, dirs = 0, symlinks = 0, others = 0, bytes = 0;
    for (const n of walkTree(root)) {
      if (n.kind === 'file') { files++; bytes += n.size; } else if (n.kind === 'dir') dirs++; else if (n.kind === 'symlink') symlinks++; else others++;
    }
    return { inodes_count: image.inodes.size, superblock: superblockInfo(image), blobs: blobsInfo(image), files, directories: dirs, symlinks, others, file_bytes: bytes };
  }
  if (cmd === 'chunks') {
    return [...walkTree(root)].filter((n) => n.kind === 'file').map((n) => fileInfo(image, n, inodeOf.get(n)!.nid));
  }
  if (cmd === 'stat') {
    const want = args.join(' ');
    for (const n of walkTree(root)) if (n.path === want) return fileInfo(image, n, inodeOf.get(n)!.nid);
    throw new NydusError(`${image.name}: no such path ${want}`);
  }
  throw new NydusError(`unknown inspect request ${JSON.stringify(request)}; try stats, blobs, prefetch, chunks or "stat <path>"`);
}
