/**
 * Writes one Nydus data blob: chunk data, then the chunk-info array and its 4096-byte header; with
 * `tail` (--blob-inline-meta, --features blob-toc) each section is followed by its tar header, then
 * come the chunk digests, the bootstrap and the TOC (erofs/blob-toc.ts).
 * The blob is streamed to a temporary file in the output directory and renamed to its sha256 at the
 * end, so memory stays bounded whatever the image size.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash, type Hash } from 'node:crypto';
import { fscacheBinding } from '../../native/fscache/index.ts';
import {
  BLOB_CCT_MAGIC, BLOB_CHUNK_INFO_V1_SIZE, BLOB_FEATURE_ALIGNED, BLOB_FEATURE_CAP_TAR_TOC, BLOB_FEATURE_HAS_TAR_HEADER, BLOB_FEATURE_HAS_TOC,
  BLOB_FEATURE_INLINED_CHUNK_DIGEST, BLOB_FEATURE_INLINED_FS_META, blobCompressionContextHeader, encodeChunkInfoV1,
} from '../../erofs/blobmeta.ts';
import {
  INLINED_BLOB_ID_PLACEHOLDER, TOC_ENTRY_BLOB_DIGEST, TOC_ENTRY_BLOB_META, TOC_ENTRY_BLOB_META_HEADER, TOC_ENTRY_BLOB_RAW,
  TOC_ENTRY_BLOB_TOC, TOC_ENTRY_BOOTSTRAP, type TocEntry, encodeSectionHeader, encodeTocEntry,
} from '../../erofs/blob-toc.ts';
import { RAFS_COMPRESS_NONE } from '../../erofs/rafs.ts';
import { EROFS_BLKSIZ } from '../../erofs/super.ts';
import { NydusError } from '../../erofs/errors.ts';
import type { ChunkRef } from '../builder/tree.ts';
import { type CompressorName, compressChunk } from './compress.ts';
import { chunkDigest } from './digest.ts';

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
  /** With a TOC: sha256 of the TOC entries with their tar header, and that size (nydus's blob_toc_digest, blob_toc_size). */
  tocDigest?: Buffer;
  tocSize?: number;
}

/** What follows the chunk data besides the blob meta (nydus-image create --blob-inline-meta, --features blob-toc). */
export interface BlobTail {
  /** The bootstrap goes into the blob (appendBootstrap): the blob is finished by that, not by finish(). */
  inlineBootstrap: boolean;
  /** A TOC of the sections, and the chunk digest array. */
  toc: boolean;
}

const ZERO_BLOCK = Buffer.alloc(EROFS_BLKSIZ);

const TEMP_BLOB = /^\.blob-\d+-\d+\.tmp$/;
/** A temporary blob younger than this may be one whose build has not locked it yet. */
const STALE_AFTER_MS = 60_000;

/**
 * Removes the temporary blobs of builds that ended before their blob was whole (killed, their
 * machine reset): in a blob directory they would stay for good, hidden, as large as the blobs. A
 * build holds its own locked (flock, across PID namespaces); one whose lock is free and that has not
 * been written for a minute is left by no one. Best effort: what cannot be told or removed stays.
 */
function removeStaleTemps(dir: string, own: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const file = path.join(dir, name);
    if (!TEMP_BLOB.test(name) || file === own) continue;
    let fd = -1;
    try {
      fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
      const st = fs.fstatSync(fd);
      if (st.isFile() && Date.now() - st.mtimeMs > STALE_AFTER_MS && fscacheBinding().tryLock(fd)) fs.unlinkSync(file);
    } catch { /* gone meanwhile, or not ours to tell */ } finally {
      if (fd >= 0) fs.closeSync(fd);
    }
  }
}

export class BlobWriter {
  private fd: number;
  private readonly tmpPath: string;
  private hash: Hash = createHash('sha256');
  private fileOffset = 0;
  private uncompressedOffset = 0;
  private readonly chunks: ChunkRef[] = [];
  private readonly toc: TocEntry[] = [];

  constructor(private readonly dir: string, private readonly blobIndex: number, private readonly compressor: CompressorName, private readonly tail?: BlobTail) {
    this.tmpPath = path.join(dir, `.blob-${process.pid}-${Date.now()}.tmp`);
    try {
      this.fd = fs.openSync(this.tmpPath, 'wx');
    } catch (e) {
      throw new NydusError(`cannot create a blob in ${dir}: ${(e as Error).message}`);
    }
    // Held while the blob is written: what a build killed before its end left (a signal ends a
    // build's synchronous work before any handler runs) is known by its lock being free.
    fscacheBinding().tryLock(this.fd);
    removeStaleTemps(dir, this.tmpPath);
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

  /** A section's tar header (blob-toc.ts), after its `size` bytes. */
  private sectionHeader(name: string, size: number): Buffer {
    const h = encodeSectionHeader(name, size);
    this.write(h);
    return h;
  }

  /**
   * Appends the blob meta and renames the blob to its digest in the directory, or, `keepTemp`, leaves
   * it at its temporary name for the caller to put elsewhere (the caller then owns the file); returns
   * null (and removes it) if empty. With an inline bootstrap the blob stays open for appendBootstrap
   * (which finishes it, empty or not): what is returned describes the data part, as the bootstrap's
   * blob table holds it (its id the placeholder, its size the bytes written so far).
   */
  finish(keepTemp = false): FinishedBlob | null {
    if (this.chunks.length === 0) {
      if (!this.tail?.inlineBootstrap) this.abort();
      return null;
    }
    if (this.compressor === 'none') this.padTo(EROFS_BLKSIZ);
    const compressedSize = this.fileOffset;
    const tail = this.tail;
    if (tail) {
      this.sectionHeader(TOC_ENTRY_BLOB_RAW, compressedSize);
      // nydus's digest of this entry covers the chunk data and its header.
      if (tail.toc) this.toc.push({ name: TOC_ENTRY_BLOB_RAW, compression: 'none', digest: this.hash.copy().digest(), offset: 0, compressedSize, uncompressedSize: this.uncompressedOffset });
    }
    const ci = Buffer.alloc(this.chunks.length * BLOB_CHUNK_INFO_V1_SIZE);
    this.chunks.forEach((c, i) => encodeChunkInfoV1(c, ci, i * BLOB_CHUNK_INFO_V1_SIZE));
    const ciOffset = this.fileOffset;
    this.write(ci);
    const features = BLOB_FEATURE_ALIGNED | BLOB_FEATURE_CAP_TAR_TOC
      | (tail ? BLOB_FEATURE_HAS_TAR_HEADER : 0) | (tail?.inlineBootstrap ? BLOB_FEATURE_INLINED_FS_META : 0)
      | (tail?.toc ? BLOB_FEATURE_HAS_TOC | BLOB_FEATURE_INLINED_CHUNK_DIGEST : 0);
    const header = blobCompressionContextHeader.encode({
      s_magic: BLOB_CCT_MAGIC,
      s_features: features,
      s_ci_compressor: RAFS_COMPRESS_NONE,
      s_ci_entries: this.chunks.length,
      s_ci_offset: ciOffset,
      s_ci_compressed_size: ci.length,
      s_ci_uncompressed_size: ci.length,
      s_magic2: BLOB_CCT_MAGIC,
    });
    this.write(header);
    if (tail) {
      this.sectionHeader(TOC_ENTRY_BLOB_META, ci.length + header.length);
      if (tail.toc) {
        this.toc.push({ name: TOC_ENTRY_BLOB_META, compression: 'none', digest: chunkDigest('sha256', ci), offset: ciOffset, compressedSize: ci.length, uncompressedSize: ci.length });
        this.toc.push({ name: TOC_ENTRY_BLOB_META_HEADER, compression: 'none', digest: chunkDigest('sha256', header), offset: ciOffset + ci.length, compressedSize: header.length, uncompressedSize: header.length });
        // Each chunk's digest, in chunk index order.
        const digests = Buffer.concat(this.chunks.map((c) => c.digest));
        const at = this.fileOffset;
        this.write(digests);
        this.sectionHeader(TOC_ENTRY_BLOB_DIGEST, digests.length);
        this.toc.push({ name: TOC_ENTRY_BLOB_DIGEST, compression: 'none', digest: chunkDigest('sha256', digests), offset: at, compressedSize: digests.length, uncompressedSize: digests.length });
      }
    }
    const data = {
      compressedSize, uncompressedSize: this.uncompressedOffset, chunkCount: this.chunks.length, features, ciOffset, ciSize: ci.length, fileSize: this.fileOffset,
    };
    if (tail?.inlineBootstrap) return { ...data, blobId: INLINED_BLOB_ID_PLACEHOLDER, path: this.tmpPath, existed: false };
    return this.close(keepTemp, data);
  }

  /**
   * The blob with an inline bootstrap finished (BlobTail.inlineBootstrap): `bootstrap` (zstd with a
   * TOC, as nydus stores it), then the TOC, then named and placed as finish() would.
   */
  appendBootstrap(bootstrap: Buffer, keepTemp: boolean, data: FinishedBlob | null): FinishedBlob {
    if (!this.tail?.inlineBootstrap) throw new Error('appendBootstrap on a blob without an inline bootstrap');
    const at = this.fileOffset;
    const zstd = this.tail.toc ? compressChunk('zstd', bootstrap) : null;
    this.write(zstd ?? bootstrap);
    const stored = zstd ? zstd.length : bootstrap.length;
    this.sectionHeader(TOC_ENTRY_BOOTSTRAP, stored);
    if (this.tail.toc) this.toc.push({ name: TOC_ENTRY_BOOTSTRAP, compression: zstd ? 'zstd' : 'none', digest: chunkDigest('sha256', bootstrap), offset: at, compressedSize: stored, uncompressedSize: bootstrap.length });
    return this.close(keepTemp, data ?? { compressedSize: 0, uncompressedSize: 0, chunkCount: 0, features: 0, ciOffset: 0, ciSize: 0, fileSize: 0 });
  }

  private close(keepTemp: boolean, data: Omit<FinishedBlob, 'blobId' | 'path' | 'existed'>): FinishedBlob {
    let toc: { tocDigest: Buffer; tocSize: number } | undefined;
    if (this.tail?.toc) {
      const entries = Buffer.concat(this.toc.map(encodeTocEntry));
      this.write(entries);
      const h = this.sectionHeader(TOC_ENTRY_BLOB_TOC, entries.length);
      toc = { tocDigest: createHash('sha256').update(entries).update(h).digest(), tocSize: entries.length + h.length };
    }
    // No fsync: waiting for the whole blob to reach the disk is most of a build's wall time on a
    // busy disk, and neither nydus-image nor mkfs.erofs does it; a consumer that needs durability
    // syncs, and a blob cut short by a crash fails `check` (its sha256 is its name).
    fs.closeSync(this.fd);
    const blobId = this.hash.digest('hex');
    const finalPath = keepTemp ? this.tmpPath : path.join(this.dir, blobId);
    const existed = !keepTemp && fs.existsSync(finalPath);
    if (!keepTemp) fs.renameSync(this.tmpPath, finalPath);
    return { ...data, ...toc, blobId, path: finalPath, existed, fileSize: this.fileOffset };
  }

  abort(): void {
    try { fs.closeSync(this.fd); } catch { /* already closed */ }
    fs.rmSync(this.tmpPath, { force: true });
    fs.rmSync(`${this.tmpPath}.reordered`, { force: true });
  }
}
