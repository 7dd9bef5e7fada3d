/** Stored chunk bytes -> verified uncompressed bytes: decompress if needed, then check the digest. */
import { NydusError, EIO } from '../../erofs/errors.ts';
import { type CompressorName, decompressChunk } from './compress.ts';
import { type Digester, chunkDigest } from './digest.ts';

export interface StoredChunk {
  stored: Buffer;
  compressed: boolean;
  compressor: CompressorName;
  uncompressedSize: number;
  digester: Digester;
  /** Empty when the image gives no digest (then only the size is checked). */
  digest: Buffer;
  where: string;
}

export function verifyChunk(c: StoredChunk): Buffer {
  const data = c.compressed ? decompressChunk(c.compressor, c.stored, c.uncompressedSize, c.where) : c.stored;
  if (data.length !== c.uncompressedSize) throw new NydusError(`${c.where}: ${data.length} bytes, expected ${c.uncompressedSize}`, EIO);
  if (c.digest.length && !chunkDigest(c.digester, data).equals(c.digest)) {
    throw new NydusError(`${c.where}: digest mismatch, refusing corrupt data`, EIO);
  }
  return data;
}
