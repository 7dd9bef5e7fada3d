/** Chunk compression. One function pair per algorithm; zstd through zstd-napi. */
import { Compressor, Decompressor } from 'zstd-napi';
import { NydusError, EIO } from '../../erofs/errors.ts';

export type CompressorName = 'none' | 'zstd';

let zc: Compressor | null = null;
let zd: Decompressor | null = null;

/** Compresses a chunk; returns null when compression would not make it smaller (stored raw then). */
export function compressChunk(alg: CompressorName, data: Buffer): Buffer | null {
  if (alg === 'none') return null;
  if (!zc) {
    zc = new Compressor();
    zc.setParameters({ compressionLevel: 1 });
  }
  const out = zc.compress(data);
  return out.length < data.length ? out : null;
}

export function decompressChunk(alg: CompressorName, data: Buffer, uncompressedSize: number, where: string): Buffer {
  if (alg === 'none') throw new NydusError(`${where}: chunk is marked compressed but the compressor is none`, EIO);
  if (!zd) zd = new Decompressor();
  let out: Buffer;
  try {
    out = zd.decompress(data);
  } catch (e) {
    throw new NydusError(`${where}: zstd decompression failed: ${(e as Error).message}`, EIO);
  }
  if (out.length !== uncompressedSize) {
    throw new NydusError(`${where}: decompressed to ${out.length} bytes, expected ${uncompressedSize}`, EIO);
  }
  return out;
}
