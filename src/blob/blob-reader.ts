/**
 * Reads chunks back from a local blob file: stored bytes -> decompress -> digest check. A chunk whose
 * digest does not match is an I/O error, never data.
 */
import fs from 'node:fs';
import { createHash } from 'node:crypto';
import { NydusError, EIO } from '../../erofs/errors.ts';
import { BLOB_CCT_HEADER_SIZE, BLOB_CCT_MAGIC, BLOB_CHUNK_INFO_V1_SIZE, type BlobChunkInfo, blobCompressionContextHeader, decodeChunkInfoV1 } from '../../erofs/blobmeta.ts';
import type { CompressorName } from './compress.ts';
import type { Digester } from './digest.ts';
import { verifyChunk } from './verify.ts';
import type { ChunkRef } from '../builder/tree.ts';

export class LocalBlobReader {
  /** The blob file, open for reading (verification jobs read their ranges through it). */
  readonly fd: number;
  readonly size: number;

  constructor(readonly path: string, private readonly compressor: CompressorName, private readonly digester: Digester) {
    try {
      // O_NONBLOCK: opening a FIFO must not wait for a writer; anything but a regular file is refused.
      this.fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    } catch (e) {
      throw new NydusError(`cannot open blob ${path}: ${(e as Error).message}`);
    }
    const st = fs.fstatSync(this.fd);
    if (!st.isFile()) {
      fs.closeSync(this.fd);
      throw new NydusError(`blob ${path} is not a regular file`);
    }
    this.size = st.size;
  }

  readRaw(offset: number, size: number): Buffer {
    if (offset + size > this.size) throw new NydusError(`blob ${this.path}: range [${offset}, ${offset + size}) is beyond its end (${this.size} bytes)`, EIO);
    const buf = Buffer.allocUnsafe(size);
    let done = 0;
    while (done < size) {
      const n = fs.readSync(this.fd, buf, done, size - done, offset + done);
      if (n === 0) throw new NydusError(`blob ${this.path}: short read at ${offset + done}`, EIO);
      done += n;
    }
    return buf;
  }

  /** The uncompressed, verified bytes of a chunk. */
  readChunk(ref: ChunkRef): Buffer {
    const where = `blob ${this.path} chunk ${ref.indexInBlob}`;
    return verifyChunk({
      stored: this.readRaw(ref.compressedOffset, ref.compressedSize), compressed: ref.compressed, compressor: this.compressor,
      uncompressedSize: ref.uncompressedSize, digester: this.digester, digest: ref.digest, where,
    });
  }

  /**
   * The chunk-info array at `ciOffset` (`ciSize` bytes, as the bootstrap's blob table says), checked
   * against the blob meta header that follows it: at the blob's end, or before the tar header of
   * `blob.meta` in a blob with inlined meta.
   */
  readChunkInfos(ciOffset: number, ciSize: number): BlobChunkInfo[] {
    const at = ciOffset + ciSize;
    if (at + BLOB_CCT_HEADER_SIZE > this.size) throw new NydusError(`blob ${this.path}: its blob meta header would lie at ${at}, beyond its end (${this.size} bytes)`);
    const h = blobCompressionContextHeader.decode(this.readRaw(at, BLOB_CCT_HEADER_SIZE), 0, `blob ${this.path}`);
    if (h.s_magic !== BLOB_CCT_MAGIC || h.s_magic2 !== BLOB_CCT_MAGIC) throw new NydusError(`blob ${this.path}: no blob meta header at ${at}, after its chunk-info array`);
    if (h.s_ci_compressor !== 0) throw new NydusError(`blob ${this.path}: compressed chunk-info arrays are not supported`);
    if (h.s_ci_offset !== ciOffset || h.s_ci_compressed_size !== ciSize || h.s_ci_entries * BLOB_CHUNK_INFO_V1_SIZE !== ciSize) {
      throw new NydusError(`blob ${this.path}: its blob meta header says ${h.s_ci_entries} chunk infos at ${h.s_ci_offset} (${h.s_ci_compressed_size} bytes), the bootstrap ${ciSize} bytes at ${ciOffset}`);
    }
    const ci = this.readRaw(ciOffset, ciSize);
    const out: BlobChunkInfo[] = [];
    for (let i = 0; i < h.s_ci_entries; i++) out.push(decodeChunkInfoV1(ci, i * BLOB_CHUNK_INFO_V1_SIZE));
    return out;
  }

  /** sha256 of the whole blob file (a Nydus blob is named by it), read in bounded pieces. */
  sha256(): string {
    const hash = createHash('sha256');
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let off = 0; off < this.size;) {
      const n = fs.readSync(this.fd, buf, 0, Math.min(buf.length, this.size - off), off);
      if (n === 0) throw new NydusError(`blob ${this.path}: short read at ${off}`, EIO);
      hash.update(buf.subarray(0, n));
      off += n;
    }
    return hash.digest('hex');
  }

  close(): void {
    try { fs.closeSync(this.fd); } catch { /* closed */ }
  }
}
