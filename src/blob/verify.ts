/**
 * Stored chunk bytes -> verified uncompressed bytes: decompress if needed, then check the digest.
 * One chunk (verifyChunk), or a run of chunks read from a blob in one piece (verifyRun here, and
 * verifyRunNative on libuv's thread pool, the daemon's): the run's chunks land in one output buffer
 * laid out as in the cache file, so that the daemon writes it in one write, with no copy per chunk.
 */
import { NydusError, EIO } from '../../erofs/errors.ts';
import { type CompressorName, decompressChunk, decompressInto } from './compress.ts';
import { type Digester, chunkDigest } from './digest.ts';
import { CACHEFILES_WRITE_ALIGN, fscacheBinding } from '../../native/fscache/index.ts';

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
  checkDigest(c.digester, data, c.digest, c.where);
  return data;
}

function checkDigest(digester: Digester, data: Uint8Array, digest: Uint8Array, where: string): void {
  if (!digest.length) return;
  const got = chunkDigest(digester, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  if (!got.equals(digest)) throw new NydusError(`${where}: digest mismatch, refusing corrupt data`, EIO);
}

/** Numbers per chunk in StoredRun.layout, in this order. */
export const RUN_STORED_OFFSET = 0;
export const RUN_STORED_SIZE = 1;
export const RUN_OUT_OFFSET = 2;
export const RUN_OUT_SIZE = 3;
export const RUN_COMPRESSED = 4;
export const RUN_FIELDS = 5;

/** Sets chunk `i` of a run's layout. */
export function setRunChunk(layout: Float64Array, i: number, c: { storedOffset: number; storedSize: number; outOffset: number; outSize: number; compressed: boolean }): void {
  const o = i * RUN_FIELDS;
  layout[o + RUN_STORED_OFFSET] = c.storedOffset;
  layout[o + RUN_STORED_SIZE] = c.storedSize;
  layout[o + RUN_OUT_OFFSET] = c.outOffset;
  layout[o + RUN_OUT_SIZE] = c.outSize;
  layout[o + RUN_COMPRESSED] = c.compressed ? 1 : 0;
}

/** Chunks read in one piece from a blob, to verify into one output buffer. */
export interface StoredRun {
  stored: Uint8Array;
  compressor: CompressorName;
  digester: Digester;
  /** RUN_FIELDS numbers per chunk: where it is in `stored`, where it goes in the output, whether compressed. */
  layout: Float64Array;
  /** The chunks' digests back to back (`digestSize` bytes each; 0: sizes are checked only). */
  digests: Uint8Array;
  digestSize: number;
  /** The output's size: the gaps between chunks (block padding in the cache file) are zeros. */
  outSize: number;
  /** Names each chunk in errors. */
  where: string[];
  /**
   * Where the chunks that pass are written by the verification itself (verifyRunNative only): the
   * output's byte 0 is byte `offset` of the cache file `fd`. The run is laid out as in the file.
   */
  target?: { fd: number; offset: number };
  /**
   * Background work (a prefetch of the rest of a blob): the addon runs it at the lowest CPU priority.
   * An Int32Array of 2: the same, and its thread is told there while lowered, so that the job can be
   * raised when a reader comes to wait for it (VerifyPool.promote, the addon's raiseBackgroundThread).
   */
  background?: boolean | Int32Array;
}

/** A verified run: the output buffer, and per chunk an error message or null (its bytes are good). */
export interface VerifiedRun {
  data: Uint8Array;
  errors: Array<string | null>;
  /** With a target: null when every chunk that passed is in its file, else why not (the rest unwritten). */
  writeError?: Error | null;
}

/** Verifies every chunk of a run into a new output buffer; a failing chunk fails alone. */
export function verifyRun(r: StoredRun): VerifiedRun {
  const out = new Uint8Array(new ArrayBuffer(r.outSize));
  const errors: Array<string | null> = [];
  const count = r.layout.length / RUN_FIELDS;
  for (let i = 0; i < count; i++) {
    const o = i * RUN_FIELDS;
    const so = r.layout[o + RUN_STORED_OFFSET];
    const src = r.stored.subarray(so, so + r.layout[o + RUN_STORED_SIZE]);
    const oo = r.layout[o + RUN_OUT_OFFSET];
    const dst = out.subarray(oo, oo + r.layout[o + RUN_OUT_SIZE]);
    try {
      if (r.layout[o + RUN_COMPRESSED]) decompressInto(r.compressor, src, dst, r.where[i]);
      else if (src.length !== dst.length) throw new NydusError(`${r.where[i]}: ${src.length} bytes, expected ${dst.length}`, EIO);
      else dst.set(src);
      checkDigest(r.digester, dst, r.digests.subarray(i * r.digestSize, (i + 1) * r.digestSize), r.where[i]);
      errors.push(null);
    } catch (e) {
      // Never handed out: its bytes are zeroed so that a mistake elsewhere cannot leak them.
      dst.fill(0);
      errors.push((e as Error).message);
    }
  }
  return { data: out, errors };
}

/**
 * verifyRun off the event loop: the addon decompresses and checks the run on libuv's thread pool
 * (same results, same messages). The output is a new buffer; `run.stored` must not change until
 * this settles. With a `target`, the same pool job writes the chunks that pass into the cache file
 * (`written`): the event loop takes no turn between a chunk's verification and its write.
 */
export async function verifyRunNative(r: StoredRun): Promise<VerifiedRun> {
  const { compressor, digester } = addonCodes(r);
  if (r.target) {
    // Whole pages at a page boundary of it, for the write: the addon finds the boundary (`base`).
    const page = CACHEFILES_WRITE_ALIGN;
    const out = Buffer.allocUnsafeSlow(Math.ceil(r.outSize / page) * page + page);
    const w = await fscacheBinding().verifyRunNative(r.stored, r.layout, r.digests, r.digestSize, out, compressor, digester, r.target.fd, r.target.offset, r.background ?? false);
    return { data: out.subarray(w.base, w.base + r.outSize), errors: withWhere(r, w.errors), writeError: w.writeError };
  }
  // Uninitialized: every byte is written by the addon (chunks, or zeros between them and for failures).
  // Never a slice of node's shared pool: the daemon releases it (releaseBuffer) once written.
  const out = Buffer.allocUnsafeSlow(r.outSize);
  const errors = await fscacheBinding().verifyRunNative(r.stored, r.layout, r.digests, r.digestSize, out, compressor, digester, r.background ?? false);
  return { data: out, errors: withWhere(r, errors) };
}

/** A run whose stored bytes are a range of a blob file, verified and written into a cache file by one pool job. */
export interface BlobRangeRun extends Omit<StoredRun, 'stored' | 'outSize' | 'target'> {
  blobFd: number;
  /** Where the run's stored bytes are in the blob file (the layout's stored offsets are from here). */
  storedOffset: number;
  storedSize: number;
  /** As StoredRun's: output byte 0 is the cache file's byte `offset`; the run is laid out as in the file. */
  target: { fd: number; offset: number };
}

/**
 * Each of libuv's `threads` pool threads pays its first verification's cost now (the addon's
 * warmUp), not while a reader waits. Settles once every job ran, to how BLAKE3 hashes here.
 */
export async function warmUpVerifiers(threads: number): Promise<{ blake3: 'lanes' | 'chunks' }> {
  const [lanes] = await Promise.all(fscacheBinding().warmUp(threads));
  return { blake3: lanes ? 'lanes' : 'chunks' };
}

/** A run verified from a blob file: per chunk an error message or null (it is in the cache file unless writeError). */
export interface VerifiedBlobRange {
  errors: Array<string | null>;
  writeError: Error | null;
}

/**
 * verifyRunNative for a run read from a blob file by the pool job itself (the addon's
 * verifyBlobRange): the stored bytes, the output, the chunks written into the cache file, none of it
 * through JS. Rejects when the blob file could not be read (nothing was verified then).
 */
export async function verifyBlobRange(r: BlobRangeRun): Promise<VerifiedBlobRange> {
  const { compressor, digester } = addonCodes(r);
  const w = await fscacheBinding().verifyBlobRange(r.blobFd, r.storedOffset, r.storedSize, r.layout, r.digests, r.digestSize, compressor, digester, r.target.fd, r.target.offset, r.background ?? false);
  if (w.readError) throw w.readError;
  return { errors: withWhere(r, w.errors!), writeError: w.writeError };
}

/** The addon's numbers for a run's compressor and digester. */
const ADDON_COMPRESSOR = { none: 0, zstd: 1, lz4_block: 2 } as const;
const addonCodes = (r: Pick<StoredRun, 'compressor' | 'digester'>) => ({ compressor: ADDON_COMPRESSOR[r.compressor], digester: r.digester === 'sha256' ? 1 as const : 0 as const });

const withWhere = (r: Pick<StoredRun, 'where'>, errors: Array<string | null>) => errors.map((e, i) => (e === null ? null : `${r.where[i]}: ${e}`));

/**
 * Frees a buffer's memory now rather than at a GC (the addon detaches its ArrayBuffer: every view of
 * it becomes empty). Only a view of a whole, unshared ArrayBuffer is released: a slice of node's
 * pool shares its memory with unrelated buffers. Returns whether it was released.
 */
export function releaseBuffer(buf: Uint8Array): boolean {
  const ab = buf.buffer;
  if (!(ab instanceof ArrayBuffer) || buf.byteOffset !== 0 || buf.byteLength !== ab.byteLength || ab.byteLength === 0) return false;
  fscacheBinding().releaseBuffer(ab);
  return true;
}
