/**
 * `nydus-image check`: validates the whole bootstrap (validate.ts); with blobs, also every chunk's
 * data against its digest, every blob's chunk-info array against the chunk table, and every blob
 * file against its id (a Nydus blob is named by its sha256).
 */
import { FormatError, NydusError, EIO } from '../../erofs/errors.ts';
import {
  BLOB_FEATURE_ALIGNED, BLOB_FEATURE_BATCH, BLOB_FEATURE_CAP_TAR_TOC, BLOB_FEATURE_CHUNK_INFO_V2, BLOB_FEATURE_ENCRYPTED, BLOB_FEATURE_HAS_TAR_HEADER,
  BLOB_FEATURE_HAS_TOC, BLOB_FEATURE_INLINED_CHUNK_DIGEST, BLOB_FEATURE_INLINED_FS_META, BLOB_FEATURE_SEPARATE, BLOB_FEATURE_ZRAN,
} from '../../erofs/blobmeta.ts';
import { walkTree, type ChunkRef } from '../builder/tree.ts';
import type { LocalBlobReader } from '../blob/blob-reader.ts';
import { INLINED_BLOB_ID_PLACEHOLDER } from '../../erofs/blob-toc.ts';
import { rafsFlagsCompressor } from '../../erofs/rafs.ts';
import { openImage } from './open.ts';
import { treeFromImage } from './tree-from-image.ts';
import type { ValidatedBlob } from './validate.ts';

export interface CheckReport {
  bootstrap: string;
  /** The image's compressor as its superblock names it (nydus's words), '' when it names none. */
  compressor: string;
  inodes: number;
  files: number;
  directories: number;
  blobs: string[];
  chunks: number;
  /** Chunk positions that are holes (read as zeros, nothing to verify). */
  holes: number;
  /** Chunks whose data were read and verified (only with blobs). */
  verifiedChunks: number;
  /** One line per blob, in nydus-image check's words. */
  blobLines: string[];
}

const FEATURE_NAMES: Array<[number, string]> = [
  [BLOB_FEATURE_ALIGNED, 'aligned'], [BLOB_FEATURE_BATCH, 'batch'], [BLOB_FEATURE_CAP_TAR_TOC, 'cap_toc'],
  [BLOB_FEATURE_INLINED_CHUNK_DIGEST, 'chunk-digest'], [BLOB_FEATURE_CHUNK_INFO_V2, 'chunk-v2'],
  [BLOB_FEATURE_INLINED_FS_META, 'fs-meta'], [BLOB_FEATURE_SEPARATE, 'separate'], [BLOB_FEATURE_HAS_TAR_HEADER, 'tar-header'],
  [BLOB_FEATURE_HAS_TOC, 'toc'], [BLOB_FEATURE_ZRAN, 'zran'], [BLOB_FEATURE_ENCRYPTED, 'encrypted'],
];

/** The blob file's size and its own chunk-info array against the bootstrap. */
function checkBlobFile(bootstrap: string, b: ValidatedBlob, reader: LocalBlobReader): void {
  if (reader.size < b.compressedSize) {
    throw new NydusError(`blob ${reader.path}: ${reader.size} bytes, the bootstrap ${bootstrap} says ${b.compressedSize}`, EIO);
  }
  const infos = reader.readChunkInfos(b.ciOffset, b.ciCompressedSize);
  for (const c of b.chunks) {
    const ci = infos[c.indexInBlob];
    if (!ci || ci.uncompressedOffset !== c.uncompressedOffset || ci.uncompressedSize !== c.uncompressedSize
      || ci.compressedOffset !== c.compressedOffset || ci.compressedSize !== c.compressedSize) {
      throw new FormatError(`blob ${reader.path}: chunk info ${c.indexInBlob} ${ci ? JSON.stringify(ci) : 'is missing'}, the chunk table of ${bootstrap} says `
        + JSON.stringify({ uncompressedOffset: c.uncompressedOffset, uncompressedSize: c.uncompressedSize, compressedOffset: c.compressedOffset, compressedSize: c.compressedSize }));
    }
  }
}

/** Last, after every chunk was verified (a bad chunk is the more useful message): the blob's own name. */
function checkBlobDigest(b: ValidatedBlob, reader: LocalBlobReader): void {
  // The placeholder of a bootstrap inlined in its blob is no digest to check against.
  if (b.id === INLINED_BLOB_ID_PLACEHOLDER) return;
  const digest = reader.sha256();
  if (digest !== b.id) throw new NydusError(`blob ${reader.path}: its sha256 is ${digest}, not its id ${b.id}`, EIO);
}

export function checkImage(opts: { bootstrap: string; blobDir?: string; blobPaths?: string[] }): CheckReport {
  const name = opts.bootstrap;
  const withBlobs = !!(opts.blobDir || opts.blobPaths);
  const opened = openImage(name, withBlobs ? opts : undefined);
  const { image, blobs } = opened;
  try {
    blobs?.forEach((r, i) => checkBlobFile(name, image.blobs[i], r));
    const { root } = treeFromImage(image, blobs);
    const report: CheckReport = {
      bootstrap: name, compressor: rafsFlagsCompressor(image.image.ext?.s_flags ?? 0) ?? '', inodes: image.inodes.size, files: 0, directories: 0, blobs: image.blobs.map((b) => b.id), chunks: 0, holes: 0, verifiedChunks: 0,
      blobLines: image.blobs.map((b, i) => `${i}: ${b.id}, compressed size ${b.compressedSize}, uncompressed size ${b.uncompressedSize}, `
        + `chunk size: ${image.chunkSize}, chunk count: ${b.chunkCount}, features: ${FEATURE_NAMES.filter(([bit]) => b.features & bit).map(([, n]) => n).join(' ')}`),
    };
    const seen = new Set<ChunkRef>();
    const links = new Set<string>();
    for (const n of walkTree(root)) {
      if (n.hardlinkKey && links.has(n.hardlinkKey)) continue;
      if (n.hardlinkKey) links.add(n.hardlinkKey);
      if (n.kind === 'dir') report.directories++;
      if (n.kind !== 'file') continue;
      report.files++;
      for (const c of n.chunks ?? []) {
        if (!c) {
          report.holes++;
          continue;
        }
        report.chunks++;
        if (blobs && !seen.has(c)) {
          seen.add(c);
          blobs[c.blobIndex].readChunk(c);
          report.verifiedChunks++;
        }
      }
    }
    blobs?.forEach((r, i) => checkBlobDigest(image.blobs[i], r));
    return report;
  } finally {
    opened.close();
  }
}
