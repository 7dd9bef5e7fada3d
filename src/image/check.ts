/** `nydus-image check`: decodes the whole bootstrap, cross-checks its tables, optionally verifies every chunk. */
import { FormatError } from '../../erofs/errors.ts';
import {
  BLOB_FEATURE_ALIGNED, BLOB_FEATURE_BATCH, BLOB_FEATURE_CHUNK_INFO_V2, BLOB_FEATURE_ENCRYPTED, BLOB_FEATURE_HAS_TAR_HEADER,
  BLOB_FEATURE_HAS_TOC, BLOB_FEATURE_INLINED_CHUNK_DIGEST, BLOB_FEATURE_INLINED_FS_META, BLOB_FEATURE_SEPARATE, BLOB_FEATURE_ZRAN,
} from '../../erofs/blobmeta.ts';
import { EROFS_BLKSIZ } from '../../erofs/super.ts';
import { walkTree, type ChunkRef } from '../builder/tree.ts';
import { openBlobs, openBootstrap, blobCompressor, blobDigester } from './open.ts';
import { treeFromImage } from './tree-from-image.ts';

export interface CheckReport {
  bootstrap: string;
  inodes: number;
  files: number;
  directories: number;
  blobs: string[];
  chunks: number;
  /** Chunks whose data were read and verified (only with blobs). */
  verifiedChunks: number;
  /** One line per blob, in nydus-image check's words. */
  blobLines: string[];
}

const FEATURE_NAMES: Array<[number, string]> = [
  [BLOB_FEATURE_ALIGNED, 'aligned'], [BLOB_FEATURE_BATCH, 'batch'], [0x4000_0000, 'cap_toc'],
  [BLOB_FEATURE_INLINED_CHUNK_DIGEST, 'chunk-digest'], [BLOB_FEATURE_CHUNK_INFO_V2, 'chunk-v2'],
  [BLOB_FEATURE_INLINED_FS_META, 'fs-meta'], [BLOB_FEATURE_SEPARATE, 'separate'], [BLOB_FEATURE_HAS_TAR_HEADER, 'tar-header'],
  [BLOB_FEATURE_HAS_TOC, 'toc'], [BLOB_FEATURE_ZRAN, 'zran'], [BLOB_FEATURE_ENCRYPTED, 'encrypted'],
];

export function checkImage(opts: { bootstrap: string; blobDir?: string; blobPaths?: string[] }): CheckReport {
  const image = openBootstrap(opts.bootstrap);
  const name = opts.bootstrap;
  if (!image.isRafs) throw new FormatError(`${name}: not a RAFS v6 bootstrap (compat feature RAFS_V6 is not set)`);
  image.blobs.forEach((b, i) => {
    blobCompressor(image, i);
    blobDigester(image, i);
    const id = image.blobId(i);
    if (!/^[0-9a-f]{64}$/.test(id)) throw new FormatError(`${name}: blob ${i} has an invalid id ${JSON.stringify(id)}`);
    if (image.devices[i].tag !== id) throw new FormatError(`${name}: device slot ${i} tag ${image.devices[i].tag} differs from blob id ${id}`);
    if (image.devices[i].blocks * EROFS_BLKSIZ !== b.uncompressed_size) {
      throw new FormatError(`${name}: device slot ${i} has ${image.devices[i].blocks} blocks, blob ${id} is ${b.uncompressed_size} bytes`);
    }
    if (b.chunk_size !== image.chunkSize) throw new FormatError(`${name}: blob ${i} chunk size ${b.chunk_size} differs from the superblock's ${image.chunkSize}`);
  });
  for (const c of image.chunkTable()) {
    const b = image.blobs[c.blobIndex];
    if (c.uncompressedOffset % EROFS_BLKSIZ || c.uncompressedOffset + c.uncompressedSize > b.uncompressed_size || c.index >= b.chunk_count) {
      throw new FormatError(`${name}: chunk ${c.index} of blob ${c.blobIndex} lies outside the blob`);
    }
  }
  const blobs = opts.blobDir || opts.blobPaths ? openBlobs(image, opts) : undefined;
  try {
    const { root } = treeFromImage(image, blobs);
    const report: CheckReport = {
      bootstrap: name, inodes: 0, files: 0, directories: 0, blobs: image.blobs.map((_, i) => image.blobId(i)), chunks: 0, verifiedChunks: 0,
      blobLines: image.blobs.map((b, i) => `${i}: ${image.blobId(i)}, compressed size ${b.compressed_size}, uncompressed size ${b.uncompressed_size}, `
        + `chunk size: ${b.chunk_size}, chunk count: ${b.chunk_count}, features: ${FEATURE_NAMES.filter(([bit]) => b.features & bit).map(([, n]) => n).join(' ')}`),
    };
    const seen = new Set<ChunkRef>();
    const links = new Set<string>();
    for (const n of walkTree(root)) {
      if (n.hardlinkKey && links.has(n.hardlinkKey)) continue;
      if (n.hardlinkKey) links.add(n.hardlinkKey);
      report.inodes++;
      if (n.kind === 'dir') report.directories++;
      if (n.kind !== 'file') continue;
      report.files++;
      for (const c of n.chunks ?? []) {
        report.chunks++;
        if (blobs && !seen.has(c)) {
          seen.add(c);
          blobs[c.blobIndex].readChunk(c);
          report.verifiedChunks++;
        }
      }
    }
    if (report.inodes !== image.sb.inos) throw new FormatError(`${name}: superblock counts ${image.sb.inos} inodes, the tree holds ${report.inodes}`);
    return report;
  } finally {
    for (const b of blobs ?? []) b.close();
  }
}
