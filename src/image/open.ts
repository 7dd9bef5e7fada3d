/** Opening a bootstrap from disk and finding its blobs: shared by check, inspect, export and unpack. */
import fs from 'node:fs';
import path from 'node:path';
import { NydusError } from '../../erofs/errors.ts';
import { ErofsImage } from '../../erofs/image.ts';
import { RAFS_COMPRESS_NONE, RAFS_COMPRESS_ZSTD, RAFS_DIGEST_BLAKE3, RAFS_DIGEST_SHA256 } from '../../erofs/rafs.ts';
import { LocalBlobReader } from '../blob/blob-reader.ts';
import type { CompressorName } from '../blob/compress.ts';
import type { Digester } from '../blob/digest.ts';

export function openBootstrap(file: string): ErofsImage {
  let buf: Buffer;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new NydusError(`bootstrap ${file} is not a regular file`);
    if (st.size > 1 << 30) throw new NydusError(`bootstrap ${file} is too large (${st.size} bytes) for a metadata image`);
    buf = fs.readFileSync(file);
  } catch (e) {
    if (e instanceof NydusError) throw e;
    throw new NydusError(`cannot read bootstrap ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  return new ErofsImage(buf, file);
}

export function blobCompressor(image: ErofsImage, i: number): CompressorName {
  const algo = image.blobs[i]?.compression_algo ?? RAFS_COMPRESS_NONE;
  if (algo === RAFS_COMPRESS_NONE) return 'none';
  if (algo === RAFS_COMPRESS_ZSTD) return 'zstd';
  throw new NydusError(`${image.name}: blob ${i} uses compression algorithm ${algo}, which nydus-ts does not support`);
}

export function blobDigester(image: ErofsImage, i: number): Digester {
  const algo = image.blobs[i]?.digest_algo ?? RAFS_DIGEST_BLAKE3;
  if (algo === RAFS_DIGEST_BLAKE3) return 'blake3';
  if (algo === RAFS_DIGEST_SHA256) return 'sha256';
  throw new NydusError(`${image.name}: blob ${i} uses digest algorithm ${algo}, which nydus-ts does not support`);
}

/** Opens the image's blobs from a blob directory (files named by blob id) or explicit blob paths. */
export function openBlobs(image: ErofsImage, where: { blobDir?: string; blobPaths?: string[] }): LocalBlobReader[] {
  return image.devices.map((_, i) => {
    const id = image.blobId(i);
    const p = where.blobPaths?.[i] ?? (where.blobDir ? path.join(where.blobDir, id) : undefined);
    if (!p) throw new NydusError(`${image.name}: blob ${id} is needed; give a blob directory (-D) or a blob path (--blob)`);
    return new LocalBlobReader(p, blobCompressor(image, i), blobDigester(image, i));
  });
}
