/**
 * Chunk fetcher: backend -> decompress -> digest check (on the verify pool's threads when there is
 * one). Concurrent requests for one chunk share one fetch. A chunk whose digest does not match is an
 * EIO error and is never returned. Chunks read in one piece are verified in jobs of a few hundred KiB,
 * each into one buffer laid out as in the cache file: a chunk's bytes are a view of its job's buffer,
 * and chunks that follow one another in the file are written from it without a copy. Given a cache
 * file to write to (a WriteTarget), a job laid out as in the file is written by the addon on the pool
 * thread that verified it: no turn of the event loop between its verification and its write.
 *
 * Memory: a job's buffer is freed once every chunk of it handed out (fetch, fetchBatch) was given
 * back (release) and none is in flight any more; the bytes read from the backend, once the jobs
 * verifying them are done. Left to the GC, buffers that outlived a scavenge waited for a full GC,
 * which V8 runs only after some 64 MiB of them: the daemon's peak RSS was that much higher.
 */
import { NydusError, EIO } from '../../erofs/errors.ts';
import { RUN_FIELDS, RUN_OUT_OFFSET, type StoredRun, type VerifiedRun, releaseBuffer, setRunChunk, verifyRun } from '../blob/verify.ts';
import type { ChunkRef } from '../builder/tree.ts';
import type { VerifyPool } from './verify-pool.ts';
import type { BlobBackend } from './backend/localfs.ts';
import { type BlobMap, followsInFile } from './blob-map.ts';

/** Per blob (by id), something about its chunks (by index in the blob). */
class PerChunk<T> {
  private readonly blobs = new Map<string, Map<number, T>>();

  of(blobId: string): Map<number, T> {
    let m = this.blobs.get(blobId);
    if (!m) this.blobs.set(blobId, (m = new Map()));
    return m;
  }

  delete(blobId: string, chunk: number): void {
    const m = this.blobs.get(blobId);
    if (m?.delete(chunk) && m.size === 0) this.blobs.delete(blobId);
  }
}

/** One verification job's output buffer, freed when nobody can use it any more (module comment). */
class JobMemory {
  /** Chunk promises handed out and not given back. */
  private takers = 0;
  private out: Uint8Array | null = null;
  constructor(private inFlight: number) {}

  take(): void {
    this.takers++;
  }

  /** A taker is done with a chunk's bytes. */
  giveBack(): void {
    this.takers--;
    this.freeIfUnused();
  }

  verified(out: Uint8Array): void {
    this.out = out;
    this.freeIfUnused();
  }

  /** A chunk of the job left the in-flight map: it can no longer be handed out. */
  chunkSettled(): void {
    this.inFlight--;
    this.freeIfUnused();
  }

  private freeIfUnused(): void {
    if (this.takers > 0 || this.inFlight > 0 || !this.out) return;
    releaseBuffer(this.out);
    this.out = null;
  }
}

/** A cache file verification jobs may write their chunks into (an fd open while the jobs run). */
export interface WriteTarget {
  readonly fd: number;
}

export class ChunkFetcher {
  private readonly inflight = new PerChunk<Promise<Buffer>>();
  /** The job each chunk in flight belongs to. */
  private readonly jobs = new PerChunk<JobMemory>();
  /** A job's output buffer -> its job, for release(). */
  private readonly jobOfBuffer = new WeakMap<ArrayBufferLike, JobMemory>();
  /** Chunk bytes a verification job wrote into a cache file itself: where. */
  private readonly writtenTo = new WeakMap<Buffer, WriteTarget>();
  /** Chunks in flight a reader waits for: verified before the ones fetched ahead. */
  private readonly urgent = new PerChunk<true>();

  constructor(
    private readonly backend: BlobBackend, private readonly onFetch?: (blobId: string, chunkIndex: number) => void,
    private readonly pool?: VerifyPool,
  ) {}

  /**
   * `urgent`: a reader waits for it (see prioritize). Give the bytes back (release) once done with
   * them; bytes never given back are left to the GC. `target`: as fetchBatch's, for a fetch this starts.
   */
  fetch(blob: BlobMap, chunk: ChunkRef, urgent = false, target: WriteTarget | null = null): Promise<Buffer> {
    const inflight = this.inflight.of(blob.blobId);
    let p = inflight.get(chunk.indexInBlob);
    if (p) {
      if (urgent) this.prioritize(blob, chunk);
      this.jobs.of(blob.blobId).get(chunk.indexInBlob)?.take();
      return p;
    }
    if (urgent) this.urgent.of(blob.blobId).set(chunk.indexInBlob, true);
    const job = new JobMemory(1);
    this.jobs.of(blob.blobId).set(chunk.indexInBlob, job);
    job.take();
    p = this.load(blob, chunk, job, target).finally(() => this.settled(blob.blobId, chunk.indexInBlob));
    inflight.set(chunk.indexInBlob, p);
    return p;
  }

  /** Whether these bytes of a chunk (as handed out) are in the target's file already: its job wrote them there. */
  inFile(data: Buffer, target: WriteTarget): boolean {
    return this.writtenTo.get(data) === target;
  }

  /** Done with the bytes of a chunk this fetcher handed out: its job's memory is freed once no one holds it. */
  release(data: Buffer): void {
    this.jobOfBuffer.get(data.buffer)?.giveBack();
  }

  /**
   * A reader now waits for a chunk in flight (fetched ahead of it): its verification goes before the
   * chunks queued ahead of it. Starts no fetch.
   */
  prioritize(blob: BlobMap, chunk: ChunkRef): void {
    if (!this.inflight.of(blob.blobId).has(chunk.indexInBlob)) return;
    this.urgent.of(blob.blobId).set(chunk.indexInBlob, true);
    this.pool?.promote(where(blob, chunk));
  }

  private settled(blobId: string, chunk: number): void {
    this.inflight.delete(blobId, chunk);
    this.urgent.delete(blobId, chunk);
    const job = this.jobs.of(blobId).get(chunk);
    this.jobs.delete(blobId, chunk);
    job?.chunkSettled();
  }

  /**
   * Chunks fetched in as few backend reads as they allow (nydus's merged requests): each run of them
   * stored back to back is one read (of at most `maxRead` bytes), verified chunk by chunk. Each chunk settles on its own: a corrupt
   * one fails, its neighbours do not. A chunk already on its way is not read again. With a `target`
   * (whose fd stays open until these settle), the chunks that pass may be written there too (inFile).
   */
  fetchBatch(blob: BlobMap, chunks: readonly ChunkRef[], urgent = false, maxRead = MAX_MERGED_READ, target: WriteTarget | null = null): Array<Promise<Buffer>> {
    const inflight = this.inflight.of(blob.blobId);
    const urgentOnes = this.urgent.of(blob.blobId);
    const todo = chunks.filter((c) => !inflight.has(c.indexInBlob));
    for (const run of batchChunks(todo, maxRead)) {
      if (run.length < 2) continue;
      const start = run[0].compressedOffset;
      const end = run[run.length - 1].compressedOffset + run[run.length - 1].compressedSize;
      for (const c of run) this.onFetch?.(blob.blobId, c.indexInBlob);
      const span = this.backend.read(blob.blobId, start, end - start);
      const jobs = this.jobs.of(blob.blobId);
      const verifying: Array<Promise<unknown>> = [];
      for (const job of verifyJobs(run)) {
        if (urgent) for (const c of job) urgentOnes.set(c.indexInBlob, true);
        const memory = new JobMemory(job.length);
        const verified = span.then((buf) => this.verify(blob, job, buf, start, memory, target));
        verifying.push(verified);
        job.forEach((c, i) => {
          jobs.set(c.indexInBlob, memory);
          inflight.set(c.indexInBlob, verified.then((r) => r(i)).finally(() => this.settled(blob.blobId, c.indexInBlob)));
        });
      }
      this.releaseStoredAfter(span, verifying);
    }
    return chunks.map((c) => this.fetch(blob, c, urgent, target));
  }

  private async load(blob: BlobMap, chunk: ChunkRef, memory: JobMemory, target: WriteTarget | null): Promise<Buffer> {
    this.onFetch?.(blob.blobId, chunk.indexInBlob);
    const stored = this.backend.read(blob.blobId, chunk.compressedOffset, chunk.compressedSize);
    const verified = stored.then((buf) => this.verify(blob, [chunk], buf, chunk.compressedOffset, memory, target));
    this.releaseStoredAfter(stored, [verified]);
    return (await verified)(0);
  }

  /**
   * The bytes read from the backend are freed once the jobs verifying them are done (the addon's
   * output is a buffer of its own; a backend's read is its caller's, BlobBackend.read).
   */
  private releaseStoredAfter(stored: Promise<Buffer>, verifying: ReadonlyArray<Promise<unknown>>): void {
    if (!this.pool) return;
    void Promise.allSettled([stored, ...verifying]).then(([s]) => {
      if (s.status === 'fulfilled') releaseBuffer(s.value);
    });
  }

  /**
   * Verifies chunks of `stored` (bytes of the blob from `storedBase` on) as one job; resolves to a
   * function giving each chunk's bytes, or throwing its error.
   */
  private async verify(blob: BlobMap, chunks: readonly ChunkRef[], stored: Buffer, storedBase: number, memory: JobMemory, target: WriteTarget | null = null): Promise<(i: number) => Buffer> {
    const first = chunks[0];
    const last = chunks[chunks.length - 1];
    const jobStart = first.compressedOffset - storedBase;
    const bytes = stored.subarray(jobStart, last.compressedOffset + last.compressedSize - storedBase);
    // Laid out as in the cache file when the chunks follow one another there (gaps are block padding).
    const asInFile = chunks.every((c, i) => i === 0 || followsInFile(chunks[i - 1], c));
    const layout = new Float64Array(chunks.length * RUN_FIELDS);
    const digestSize = first.digest.length;
    const digests = new Uint8Array(chunks.length * digestSize);
    let outSize = 0;
    chunks.forEach((c, i) => {
      if (c.digest.length !== digestSize) throw new NydusError(`${where(blob, c)}: a digest of ${c.digest.length} bytes among ones of ${digestSize}`, EIO);
      const outOffset = asInFile ? c.uncompressedOffset - first.uncompressedOffset : outSize;
      setRunChunk(layout, i, { storedOffset: c.compressedOffset - first.compressedOffset, storedSize: c.compressedSize, outOffset, outSize: c.uncompressedSize, compressed: c.compressed });
      digests.set(c.digest, i * digestSize);
      outSize = outOffset + c.uncompressedSize;
    });
    const run: StoredRun = {
      stored: bytes, compressor: blob.compressor, digester: blob.digester, layout, digests, digestSize, outSize,
      where: chunks.map((c) => where(blob, c)),
      // Only the addon writes (the pool's); the file's layout is the output's.
      target: this.pool && asInFile && target ? { fd: target.fd, offset: first.uncompressedOffset } : undefined,
    };
    const urgentOnes = this.urgent.of(blob.blobId);
    const urgent = chunks.some((c) => urgentOnes.has(c.indexInBlob));
    const r: VerifiedRun = this.pool ? await this.pool.verifyRun(run, urgent) : verifyRun(run);
    // (Without the pool a raw chunk's bytes may be a view of `stored`: only the addon's output is released.)
    if (this.pool) {
      this.jobOfBuffer.set(r.data.buffer, memory);
      memory.verified(new Uint8Array(r.data.buffer));
    }
    // One Buffer per chunk, whoever asks: writtenTo knows it by its identity.
    const views = chunks.map((c, i) => (r.errors[i] !== null ? null : Buffer.from(r.data.buffer, r.data.byteOffset + layout[i * RUN_FIELDS + RUN_OUT_OFFSET], c.uncompressedSize)));
    if (run.target && r.writeError === null) for (const v of views) if (v) this.writtenTo.set(v, target!);
    return (i: number) => {
      const v = views[i];
      if (v === null) throw new NydusError(r.errors[i]!, EIO);
      return v;
    };
  }
}

/** Uncompressed bytes one verification job takes (a chunk larger than this is a job of its own). */
const VERIFY_JOB_BYTES = 256 << 10;

/** Splits a run read in one piece into verification jobs: the pool's threads share it, and a reader waits for one job only. */
function verifyJobs(run: readonly ChunkRef[]): ChunkRef[][] {
  return splitChunks(run, VERIFY_JOB_BYTES, (c) => c.uncompressedSize, () => false);
}

/**
 * The most one merged backend read takes (nydus's default merging size): small chunks gain from
 * sharing a read; chunks this large gain more from reads of their own in parallel.
 */
const MAX_MERGED_READ = 1 << 20;

const where = (blob: BlobMap, chunk: ChunkRef) => `blob ${blob.blobId} chunk ${chunk.indexInBlob}`;

/** Splits chunks (in their order) into runs stored back to back, each at most `maxBytes` (one chunk at least). */
export function batchChunks(chunks: readonly ChunkRef[], maxBytes: number): ChunkRef[][] {
  return splitChunks(chunks, maxBytes, (c) => c.compressedSize, (last, c) => c.compressedOffset !== last.compressedOffset + last.compressedSize);
}

/** Splits chunks (in their order) into groups of at most `maxBytes` by `size` (one chunk at least), and wherever `breaks` says. */
function splitChunks(chunks: readonly ChunkRef[], maxBytes: number, size: (c: ChunkRef) => number, breaks: (last: ChunkRef, c: ChunkRef) => boolean): ChunkRef[][] {
  const out: ChunkRef[][] = [];
  let cur: ChunkRef[] = [];
  let bytes = 0;
  for (const c of chunks) {
    if (cur.length && (breaks(cur[cur.length - 1], c) || bytes + size(c) > maxBytes)) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(c);
    bytes += size(c);
  }
  if (cur.length) out.push(cur);
  return out;
}
