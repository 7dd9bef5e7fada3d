/**
 * Chunk compression with zstd (the zstd-napi binding's contexts, used directly so that compressing
 * a chunk allocates nothing: one reusable output buffer per size), or as one raw LZ4 block (nydus's
 * lz4_block, through liblz4 in the fscache addon).
 */
import { createRequire } from 'node:module';
import { NydusError, EIO } from '../../erofs/errors.ts';
import { fscacheBinding } from '../../native/fscache/index.ts';

/** The chunk compressors nydus-ts has: of nydus's, all but gzip. */
export const COMPRESSORS = ['none', 'zstd', 'lz4_block'] as const;
export type CompressorName = (typeof COMPRESSORS)[number];

export function isCompressorName(v: unknown): v is CompressorName {
  return (COMPRESSORS as readonly unknown[]).includes(v);
}

interface ZstdBinding {
  CCtx: new () => { setParameter(p: number, v: number): void; compress2(dst: Uint8Array, src: Uint8Array): number };
  DCtx: new () => { decompress(dst: Uint8Array, src: Uint8Array): number };
  CParameter: { compressionLevel: number };
  compressBound(size: number): number;
}

// Loaded on first use (a daemon answers its API before it decompresses anything; it verifies in the addon).
let loaded: ZstdBinding | null = null;
const zstd = (): ZstdBinding => (loaded ??= createRequire(import.meta.url)('zstd-napi/binding') as ZstdBinding);

/** Level 1: chunk data is compressed once and read many times; speed of the build matters more. */
const ZSTD_LEVEL = 1;

let cctx: InstanceType<ZstdBinding['CCtx']> | null = null;
let dctx: InstanceType<ZstdBinding['DCtx']> | null = null;
let scratch = Buffer.alloc(0);

/**
 * Compresses a chunk; returns null when compression would not make it smaller (stored raw then).
 * The returned bytes live in a scratch buffer that the next call overwrites.
 */
export function compressChunk(alg: CompressorName, data: Buffer): Buffer | null {
  if (alg === 'none') return null;
  if (alg === 'lz4_block') {
    // Kept only when smaller: a buffer of the chunk's own size less one takes any block worth keeping.
    if (scratch.length < data.length) scratch = Buffer.allocUnsafe(data.length);
    const n = data.length > 1 ? fscacheBinding().lz4Compress(data, scratch.subarray(0, data.length - 1)) : 0;
    return n > 0 ? scratch.subarray(0, n) : null;
  }
  if (!cctx) {
    cctx = new (zstd().CCtx)();
    cctx.setParameter(zstd().CParameter.compressionLevel, ZSTD_LEVEL);
  }
  const bound = zstd().compressBound(data.length);
  if (scratch.length < bound) scratch = Buffer.allocUnsafe(bound);
  const n = cctx.compress2(scratch, data);
  return n < data.length ? scratch.subarray(0, n) : null;
}

export function decompressChunk(alg: CompressorName, data: Buffer, uncompressedSize: number, where: string): Buffer {
  const out = Buffer.allocUnsafe(uncompressedSize);
  decompressInto(alg, data, out, where);
  return out;
}

/** Decompresses a chunk into `out`, which must be exactly its uncompressed size (a view into a larger buffer is fine). */
export function decompressInto(alg: CompressorName, data: Uint8Array, out: Uint8Array, where: string): void {
  if (alg === 'none') throw new NydusError(`${where}: chunk is marked compressed but the compressor is none`, EIO);
  if (alg === 'lz4_block') {
    const made = fscacheBinding().lz4Decompress(data, out);
    if (made < 0) throw new NydusError(`${where}: lz4 decompression failed: corrupt block`, EIO);
    if (made !== out.length) throw new NydusError(`${where}: decompressed to ${made} bytes, expected ${out.length}`, EIO);
    return;
  }
  if (!dctx) dctx = new (zstd().DCtx)();
  let n: number;
  try {
    n = dctx.decompress(out, data);
  } catch (e) {
    throw new NydusError(`${where}: zstd decompression failed: ${(e as Error).message}`, EIO);
  }
  if (n !== out.length) throw new NydusError(`${where}: decompressed to ${n} bytes, expected ${out.length}`, EIO);
}
