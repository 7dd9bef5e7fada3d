/**
 * Writes one Nydus data blob: chunk data, then the chunk-info array and its 4096-byte header.
 * The blob is streamed to a temporary file in the output directory and renamed to its sha256 at the
 * end, so memory stays bounded whatever the image size.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash, type Hash } from 'node:crypto';
import {
  BLOB_CCT_MAGIC, BLOB_CHUNK_INFO_V1_SIZE, BLOB_FEATURE_ALIGNED, blobCompressionContextHeader, encodeChunkInfoV1,
} from '../../erofs/blobmeta.ts';
import { RAFS_COMPRESS_NONE } from '../../erofs/rafs.ts';
import { EROFS_BLKSIZ } from '../../erofs/super.ts';
import { NydusError } from '../../erofs/errors.ts';
import type { ChunkRef } from '../builder/tree.ts';
import { type CompressorName, compressChunk } from './compress.ts';

export interface FinishedBlob {
  blobId: string;
  path: string;
  /** Bytes of chunk data, without the blob meta. */
  compressedSize: number;
  /** Size of the uncompressed address space, 4096-aligned. */
  uncompressedSize: number;
  chunkCount: number;
  features: number;
  ciOffset: number;
  ciSize: number;
  /** Size of the whole blob file. */
  fileSize: number;
  /** The blob directory already held this blob (same bytes) before this build. */
  existed: boolean;
}

const ZERO_BLOCK = Buffer.alloc(EROFS_BLKSIZ);

export class BlobWriter {
  private fd: number;
  private readonly tmpPath: string;
  private hash: Hash = createHash('sha256');
  private fileOffset = 0;
  private uncompressedOffset = 0;
  private readonly chunks: ChunkRef[] = [];

  constructor(private readonly dir: string, private readonly blobIndex: number, private readonly compressor: CompressorName) {
    this.tmpPath = path.join(dir, `.blob-${process.pid}-${Date.now()}.tmp`);
    try {
      this.fd = fs.openSync(this.tmpPath, 'wx');
    } catch (e) {
      throw new NydusError(`cannot create a blob in ${dir}: ${(e as Error).message}`);
    }
  }

  private write(buf: Uint8Array): void {
    let done = 0;
    while (done < buf.length) done += fs.writeSync(this.fd, buf, done, buf.length - done);
    this.hash.update(buf);
    this.fileOffset += buf.length;
  }

  private padTo(align: number): void {
    const pad = (align - (this.fileOffset % align)) % align;
    if (pad) this.write(ZERO_BLOCK.subarray(0, pad));
  }

  /** Stores a new chunk; `data` may be reused by the caller afterwards. */
  addChunk(data: Buffer, digest: Buffer): ChunkRef {
    const compressed = compressChunk(this.compressor, data);
    const ref: ChunkRef = {
      blobIndex: this.blobIndex, indexInBlob: 0, digest, uncompressedOffset: 0, uncompressedSize: data.length,
      compressedOffset: 0, compressedSize: compressed ? compressed.length : data.length, compressed: compressed !== null,
    };
    this.place(ref, compressed ?? data);
    return ref;
  }

  /** Appends a chunk's stored bytes and gives it its next index and offsets. */
  private place(ref: ChunkRef, stored: Uint8Array): void {
    // Uncompressed chunks are stored at their uncompressed offset, so a blob without compression is
    // itself a valid EROFS device for the bootstrap.
    if (this.compressor === 'none') {
      this.padTo(EROFS_BLKSIZ);
      if (this.fileOffset < this.uncompressedOffset) this.write(Buffer.alloc(this.uncompressedOffset - this.fileOffset));
    }
    ref.indexInBlob = this.chunks.length;
    ref.uncompressedOffset = this.uncompressedOffset;
    ref.compressedOffset = this.fileOffset;
    this.write(stored);
    this.uncompressedOffset += Math.ceil(ref.uncompressedSize / EROFS_BLKSIZ) * EROFS_BLKSIZ;
    this.chunks.push(ref);
  }

  /**
   * Puts `first` (chunks of this blob, in that order) at the start of the blob and the others after
   * them in the order they were stored: the data written so far is copied once into a new file, and
   * every ChunkRef (shared by the files holding it) gets its new index and offsets in place. For a
   * source read once in its own order (a tar stream), where a prefetch list's files may come last.
   */
  reorder(first: readonly ChunkRef[]): void {
    const mine = first.filter((c) => c.blobIndex === this.blobIndex && this.chunks[c.indexInBlob] === c);
    if (mine.every((c, i) => c.indexInBlob === i)) return;
    const head = new Set(mine);
    const order = [...mine, ...this.chunks.filter((c) => !head.has(c))];
    const old = { fd: this.fd, path: this.tmpPath, read: fs.openSync(this.tmpPath, 'r') };
    const newPath = `${this.tmpPath}.reordered`;
    try {
      this.fd = fs.openSync(newPath, 'wx');
      this.hash = createHash('sha256');
      this.fileOffset = 0;
      this.uncompressedOffset = 0;
      this.chunks.length = 0;
      let buf = Buffer.alloc(0);
      for (const c of order) {
        if (buf.length < c.compressedSize) buf = Buffer.allocUnsafe(c.compressedSize);
        const stored = buf.subarray(0, c.compressedSize);
        if (fs.readSync(old.read, stored, 0, c.compressedSize, c.compressedOffset) !== c.compressedSize) {
          throw new NydusError(`blob ${old.path}: chunk ${c.indexInBlob} ends beyond the data written`);
        }
        this.place(c, stored);
      }
    } finally {
      fs.closeSync(old.read);
      fs.closeSync(old.fd);
    }
    fs.renameSync(newPath, this.tmpPath);
  }

  get chunkCount(): number {
    return this.chunks.length;
  }

  /**
   * Appends the blob meta and renames the blob to its digest in the directory, or, `keepTemp`, leaves
   * it at its temporary name for the caller to put elsewhere (the caller then owns the file); returns
   * null (and removes it) if empty.
   */
  finish(keepTemp = false): FinishedBlob | null {
    if (this.chunks.length === 0) {
      this.abort();
      return null;
    }
    if (this.compressor === 'none') this.padTo(EROFS_BLKSIZ);
    const compressedSize = this.fileOffset;
    const ci = Buffer.alloc(this.chunks.length * BLOB_CHUNK_INFO_V1_SIZE);
    this.chunks.forEach((c, i) => encodeChunkInfoV1(c, ci, i * BLOB_CHUNK_INFO_V1_SIZE));
    const ciOffset = this.fileOffset;
    this.write(ci);
    const features = BLOB_FEATURE_ALIGNED;
    this.write(blobCompressionContextHeader.encode({
      s_magic: BLOB_CCT_MAGIC,
      s_features: features,
      s_ci_compressor: RAFS_COMPRESS_NONE,
      s_ci_entries: this.chunks.length,
      s_ci_offset: ciOffset,
      s_ci_compressed_size: ci.length,
      s_ci_uncompressed_size: ci.length,
      s_magic2: BLOB_CCT_MAGIC,
    }));
    // No fsync: waiting for the whole blob to reach the disk is most of a build's wall time on a
    // busy disk, and neither nydus-image nor mkfs.erofs does it; a consumer that needs durability
    // syncs, and a blob cut short by a crash fails `check` (its sha256 is its name).
    fs.closeSync(this.fd);
    const blobId = this.hash.digest('hex');
    const finalPath = keepTemp ? this.tmpPath : path.join(this.dir, blobId);
    const existed = !keepTemp && fs.existsSync(finalPath);
    if (!keepTemp) fs.renameSync(this.tmpPath, finalPath);
    return {
      blobId, path: finalPath, compressedSize, uncompressedSize: this.uncompressedOffset,
      chunkCount: this.chunks.length, features, ciOffset, ciSize: ci.length, fileSize: this.fileOffset, existed,
    };
  }

  abort(): void {
    try { fs.closeSync(this.fd); } catch { /* already closed */ }
    fs.rmSync(this.tmpPath, { force: true });
    fs.rmSync(`${this.tmpPath}.reordered`, { force: true });
  }
}
