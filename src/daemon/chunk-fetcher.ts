/**
 * Chunk fetcher: backend -> decompress -> digest check (on the verify pool's threads when there is
 * one). Concurrent requests for one chunk share one fetch. A chunk whose digest does not match is an
 * EIO error and is never returned. Chunks read in one piece are verified in jobs of up to 1 MiB,
 * each into one buffer laid out as in the cache file: a chunk's bytes are a view of its job's buffer,
 * and chunks that follow one another in the file are written from it without a copy. Given a cache
 * file to write to (a WriteTarget), a job laid out as in the file is written by the addon on the pool
 * thread that verified it: no turn of the event loop between its verification and its write.
 *
 * The unit of work is the job, not the chunk (fetchJobs): a taker waits on one promise per job, and
 * the cache file is written and marked a job at a time, with no promise per chunk (over the Debian
 * blob, in V8's baseline tier as the guest's daemon mostly runs: 21-23 us of event loop a chunk
 * against 25-29 us with them).
 *
 * Memory: a job's buffer is freed once every taker gave it back (ChunkJob.giveBack, or release for
 * fetch and fetchBatch) and it is no longer in flight; the bytes read from the backend, once the jobs
 * verifying them are done. Left to the GC, buffers that outlived a scavenge waited for a full GC,
 * which V8 runs only after some 64 MiB of them: the daemon's peak RSS was that much higher.
 */
import { NydusError, EIO } from '../../erofs/errors.ts';
import { RUN_FIELDS, RUN_OUT_OFFSET, type StoredRun, type VerifiedRun, releaseBuffer, setRunChunk, verifyRun } from '../blob/verify.ts';
import type { ChunkRef } from '../builder/tree.ts';
import type { JobPriority, VerifyPool } from './verify-pool.ts';
import type { BlobBackend } from './backend/localfs.ts';
import { type BlobMap, followsInFile } from './blob-map.ts';

/**
 * One verification job: chunks read in one piece and verified into one buffer. It settles once
 * (`outcome`, which never rejects): a chunk that failed fails alone, a failed backend read fails them all.
 * Its buffer is freed when nobody can use it any more (module comment): every `take` was given back
 * and it left the in-flight map.
 */
export class ChunkJob {
  /** Whether a reader waits for one of its chunks: verified before the jobs fetched ahead. */
  urgent = false;
  /** The rest of a blob prefetched: verified after every other job, at the lowest CPU priority (VerifyPool). */
  background = false;
  /**
   * The cache file the job reads its blob range for and writes its chunks into itself, keeping no
   * bytes (ChunkFetcher.fetchJobs); null when its bytes are kept for whoever takes them.
   */
  direct: WriteTarget | null = null;
  outcome!: Promise<JobOutcome>;
  private takers = 0;
  private settled = false;
  private out: Uint8Array | null = null;

  constructor(readonly blob: BlobMap, readonly chunks: readonly ChunkRef[]) {}

  /** A taker will use the job's bytes (give them back with giveBack). */
  take(): void {
    this.takers++;
  }

  giveBack(): void {
    this.takers--;
    this.freeIfUnused();
  }

  /** The output buffer to free once unused (only the addon's: a JS verification may return views of the backend's bytes). */
  holds(out: Uint8Array): void {
    this.out = out;
    this.freeIfUnused();
  }

  /** The job left the in-flight map: no one new can take it. */
  done(): void {
    this.settled = true;
    this.freeIfUnused();
  }

  private freeIfUnused(): void {
    if (this.takers > 0 || !this.settled || !this.out) return;
    releaseBuffer(this.out);
    this.out = null;
  }
}

/** What a verification job gave: per chunk its bytes (a view of the job's buffer) or why not. */
export interface JobOutcome {
  /** Null where a chunk failed; null as a whole when the job kept no bytes (a direct job: writtenTo has them, or its write failed). */
  readonly views: ReadonlyArray<Buffer | null> | null;
  /** Why chunk i failed; null when its bytes are good. */
  error(i: number): Error | null;
  /** The cache file the job wrote its good chunks into itself (on the pool thread), or null. */
  readonly writtenTo: WriteTarget | null;
}

/** A chunk's place in the job that fetches it: what fetchJobs hands out per chunk. */
export interface ChunkTicket {
  readonly job: ChunkJob;
  readonly i: number;
}

/** A cache file verification jobs may write their chunks into (an fd open while the jobs run). */
export interface WriteTarget {
  readonly fd: number;
}

/** Where a job goes in the verify pool's queue. */
function priorityOf(job: ChunkJob): JobPriority {
  return job.urgent ? 'urgent' : job.background ? 'background' : 'normal';
}

export class ChunkFetcher {
  /** The job each chunk in flight belongs to, by blob and chunk index. */
  private readonly inflight = new Map<string, Map<number, ChunkTicket>>();
  /** A job's output buffer -> its job, for release(). */
  private readonly jobOfBuffer = new WeakMap<ArrayBufferLike, ChunkJob>();

  constructor(
    private readonly backend: BlobBackend, private readonly onFetch?: (blobId: string, chunkIndex: number) => void,
    private readonly pool?: VerifyPool,
  ) {}

  /**
   * The jobs that fetch chunks, one ticket per chunk in order. Chunks not yet on their way are read in
   * as few backend reads as they allow (nydus's merged requests): each run of them stored back to back
   * is one read (of at most `maxRead` bytes), verified in jobs of VERIFY_JOB_BYTES. A chunk already on
   * its way joins its job (a reader's urgency goes with it). With a `target` (whose fd stays open until
   * the jobs settle), a job laid out as in the file writes its good chunks there itself; where the
   * backend has the blob as a local file (readLocal), such a job also reads its range itself and keeps
   * no bytes (`direct`): no byte of it crosses into JS. Only a taker of that target joins it.
   * A taker calls `job.take()` in the same turn, and `job.giveBack()` once done with the bytes.
   * `background`: new jobs are a prefetch's of the rest of a blob (ChunkJob.background).
   */
  fetchJobs(blob: BlobMap, chunks: readonly ChunkRef[], urgent = false, maxRead = MAX_MERGED_READ, target: WriteTarget | null = null, background = false): ChunkTicket[] {
    const inflight = this.inflightOf(blob);
    const todo: ChunkRef[] = [];
    for (const c of chunks) {
      const t = inflight.get(c.indexInBlob);
      if (!t || (t.job.direct !== null && t.job.direct !== target)) todo.push(c);
      else if (urgent) this.prioritizeJob(t);
    }
    const start = (chunksOfJob: ChunkRef[], direct: WriteTarget | null, verify: (job: ChunkJob) => Promise<JobOutcome>) =>
      this.startJob(blob, inflight, chunksOfJob, direct, urgent, background, verify);
    for (const run of batchChunks(todo, maxRead)) {
      for (const c of run) this.onFetch?.(blob.blobId, c.indexInBlob);
      // A direct job: measured on the Debian rootfs read whole in the guest, six runs each in turn,
      // the event loop's CPU fell from 2.36 s to 1.92 s (medians) and nydusd's from 7.6 s to 7.4 s;
      // the read took as long (10.2 / 10.3 s). On the host (fanotify, big workload) it ties.
      if (target && this.pool && this.backend.readLocal && laidOutAsInFile(run)) {
        for (const chunksOfJob of verifyJobs(run)) start(chunksOfJob, target, (job) => this.verifyDirect(job, target));
        continue;
      }
      const from = run[0].compressedOffset;
      const end = run[run.length - 1].compressedOffset + run[run.length - 1].compressedSize;
      const span = this.backend.read(blob.blobId, from, end - from);
      const verifying = verifyJobs(run).map((chunksOfJob) => start(chunksOfJob, null,
        (job) => span.then((buf) => this.verify(job, buf, from, target), (e: Error) => failedWhole(job, e))));
      this.releaseStoredAfter(span, verifying);
    }
    return chunks.map((c) => inflight.get(c.indexInBlob)!);
  }

  /**
   * Jobs for chunks whose stored bytes the caller holds already: `stored` is the blob's bytes from
   * `storedBase` on, which no one else may hold (a piece of a stream of the blob, BlobCacheFile's
   * stream prefetch; freed once its jobs are done). Chunks already on their way are left to their
   * jobs: only the new jobs' tickets are returned. `target` and `background` as fetchJobs'.
   */
  jobsFromBytes(blob: BlobMap, chunks: readonly ChunkRef[], stored: Buffer, storedBase: number, target: WriteTarget | null, background: boolean): ChunkTicket[] {
    const inflight = this.inflightOf(blob);
    const todo = chunks.filter((c) => !inflight.has(c.indexInBlob));
    const out: ChunkTicket[] = [];
    const verifying: Array<Promise<JobOutcome>> = [];
    for (const run of batchChunks(todo, Infinity)) {
      for (const c of run) this.onFetch?.(blob.blobId, c.indexInBlob);
      for (const chunksOfJob of verifyJobs(run)) {
        verifying.push(this.startJob(blob, inflight, chunksOfJob, null, false, background, (job) => this.verify(job, stored, storedBase, target)));
        chunksOfJob.forEach((c) => out.push(inflight.get(c.indexInBlob)!));
      }
    }
    this.releaseStoredAfter(Promise.resolve(stored), verifying);
    return out;
  }

  /** The blob's stored bytes from `from` to its end, in one backend request where it makes requests (BlobBackend.stream). */
  stream(blob: BlobMap, from: number, signal: AbortSignal): AsyncIterable<Buffer> {
    return this.backend.stream(blob.blobId, from, signal);
  }

  /** The jobs in flight for a blob's chunks, by chunk index (made on first use; settled drops it when empty). */
  private inflightOf(blob: BlobMap): Map<number, ChunkTicket> {
    let inflight = this.inflight.get(blob.blobId);
    if (!inflight) this.inflight.set(blob.blobId, (inflight = new Map()));
    return inflight;
  }

  /** A job for chunks, in flight until its outcome (`verify`'s). */
  private startJob(blob: BlobMap, inflight: Map<number, ChunkTicket>, chunks: ChunkRef[], direct: WriteTarget | null, urgent: boolean, background: boolean, verify: (job: ChunkJob) => Promise<JobOutcome>): Promise<JobOutcome> {
    const job = new ChunkJob(blob, chunks);
    job.urgent = urgent;
    job.background = background && !urgent;
    job.direct = direct;
    job.outcome = verify(job);
    chunks.forEach((c, i) => inflight.set(c.indexInBlob, { job, i }));
    // The job leaves the in-flight map before any taker sees its outcome.
    void job.outcome.then(() => this.settled(blob.blobId, job));
    return job.outcome;
  }

  /**
   * One chunk's bytes (`urgent`: a reader waits for them, see prioritize). Give them back (release)
   * once done; bytes never given back are left to the GC. `target`: as fetchJobs'.
   */
  fetch(blob: BlobMap, chunk: ChunkRef, urgent = false, target: WriteTarget | null = null): Promise<Buffer> {
    return this.bytesOf(this.fetchJobs(blob, [chunk], urgent, MAX_MERGED_READ, target)[0]);
  }

  /** fetch for many chunks, in as few backend reads as fetchJobs makes. */
  fetchBatch(blob: BlobMap, chunks: readonly ChunkRef[], urgent = false, maxRead = MAX_MERGED_READ, target: WriteTarget | null = null): Array<Promise<Buffer>> {
    return this.fetchJobs(blob, chunks, urgent, maxRead, target).map((t) => this.bytesOf(t));
  }

  /** Done with the bytes of a chunk fetch or fetchBatch handed out: its job's memory is freed once no one holds it. */
  release(data: Buffer): void {
    this.jobOfBuffer.get(data.buffer)?.giveBack();
  }

  /**
   * A reader now waits for a chunk in flight (fetched ahead of it): its job's verification goes before
   * the jobs queued ahead of it. Starts no fetch.
   */
  prioritize(blob: BlobMap, chunk: ChunkRef): void {
    const t = this.inflight.get(blob.blobId)?.get(chunk.indexInBlob);
    if (t) this.prioritizeJob(t);
  }

  private prioritizeJob(t: ChunkTicket): void {
    if (t.job.urgent) return;
    t.job.urgent = true;
    this.pool?.promote(where(t.job.blob, t.job.chunks[t.i]));
  }

  private bytesOf(t: ChunkTicket): Promise<Buffer> {
    t.job.take();
    return t.job.outcome.then((o) => {
      // (fetch and fetchBatch pass no target: they never join a direct job.)
      const v = o.views?.[t.i] ?? null;
      if (v === null) {
        t.job.giveBack();
        throw o.error(t.i)!;
      }
      return v;
    });
  }

  private settled(blobId: string, job: ChunkJob): void {
    const inflight = this.inflight.get(blobId);
    if (inflight) {
      for (const c of job.chunks) if (inflight.get(c.indexInBlob)?.job === job) inflight.delete(c.indexInBlob);
      if (inflight.size === 0) this.inflight.delete(blobId);
    }
    job.done();
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
   * Verifies a direct job (fetchJobs): its blob range read, verified and written into `target` by
   * one pool job. Never rejects.
   */
  private async verifyDirect(job: ChunkJob, target: WriteTarget): Promise<JobOutcome> {
    const { blob, chunks } = job;
    try {
      const first = chunks[0];
      const last = chunks[chunks.length - 1];
      const storedSize = last.compressedOffset + last.compressedSize - first.compressedOffset;
      const { layout, digests, digestSize } = runLayout(blob, chunks, true);
      const r = await this.backend.readLocal!(blob.blobId, storedSize, (blobFd) => this.pool!.verifyBlobRange({
        blobFd, storedOffset: first.compressedOffset, storedSize, compressor: blob.compressor, digester: blob.digester,
        layout, digests, digestSize, where: chunks.map((c) => where(blob, c)), target: { fd: target.fd, offset: first.uncompressedOffset },
      }, priorityOf(job)));
      return outcome(null, r.errors, r.writeError === null ? target : null);
    } catch (e) {
      return failedWhole(job, e as Error);
    }
  }

  /** Verifies a job's chunks of `stored` (bytes of the blob from `storedBase` on). Never rejects. */
  private async verify(job: ChunkJob, stored: Buffer, storedBase: number, target: WriteTarget | null): Promise<JobOutcome> {
    const { blob, chunks } = job;
    try {
      const first = chunks[0];
      const last = chunks[chunks.length - 1];
      const jobStart = first.compressedOffset - storedBase;
      const bytes = stored.subarray(jobStart, last.compressedOffset + last.compressedSize - storedBase);
      const asInFile = laidOutAsInFile(chunks);
      const { layout, digests, digestSize, outSize } = runLayout(blob, chunks, asInFile);
      const run: StoredRun = {
        stored: bytes, compressor: blob.compressor, digester: blob.digester, layout, digests, digestSize, outSize,
        where: chunks.map((c) => where(blob, c)),
        // Only the addon writes (the pool's); the file's layout is the output's.
        target: this.pool && asInFile && target ? { fd: target.fd, offset: first.uncompressedOffset } : undefined,
      };
      const r: VerifiedRun = this.pool ? await this.pool.verifyRun(run, priorityOf(job)) : verifyRun(run);
      // (Without the pool a raw chunk's bytes may be a view of `stored`: only the addon's output is released.)
      if (this.pool) {
        this.jobOfBuffer.set(r.data.buffer, job);
        job.holds(new Uint8Array(r.data.buffer));
      }
      const views = chunks.map((c, i) => (r.errors[i] !== null ? null : Buffer.from(r.data.buffer, r.data.byteOffset + layout[i * RUN_FIELDS + RUN_OUT_OFFSET], c.uncompressedSize)));
      return outcome(views, r.errors, run.target && r.writeError === null ? target : null);
    } catch (e) {
      return failedWhole(job, e as Error);
    }
  }
}

/** Whether chunks (in blob order) follow one another in the cache file (gaps are block padding). */
function laidOutAsInFile(chunks: readonly ChunkRef[]): boolean {
  for (let i = 1; i < chunks.length; i++) if (!followsInFile(chunks[i - 1], chunks[i])) return false;
  return true;
}

/**
 * A job's layout for the addon (RUN_FIELDS numbers per chunk, stored offsets from its first chunk's):
 * its output laid out as in the cache file (`asInFile`), or chunks back to back; and its digests.
 */
function runLayout(blob: BlobMap, chunks: readonly ChunkRef[], asInFile: boolean): { layout: Float64Array; digests: Uint8Array; digestSize: number; outSize: number } {
  const first = chunks[0];
  const layout = new Float64Array(chunks.length * RUN_FIELDS);
  const digestSize = first.digest.length;
  const digests = new Uint8Array(chunks.length * digestSize);
  let outSize = 0;
  for (let i = 0; i < chunks.length; i++) {
    const c = chunks[i];
    if (c.digest.length !== digestSize) throw new NydusError(`${where(blob, c)}: a digest of ${c.digest.length} bytes among ones of ${digestSize}`, EIO);
    const outOffset = asInFile ? c.uncompressedOffset - first.uncompressedOffset : outSize;
    setRunChunk(layout, i, { storedOffset: c.compressedOffset - first.compressedOffset, storedSize: c.compressedSize, outOffset, outSize: c.uncompressedSize, compressed: c.compressed });
    digests.set(c.digest, i * digestSize);
    outSize = outOffset + c.uncompressedSize;
  }
  return { layout, digests, digestSize, outSize };
}

/** A job's outcome from the addon's verdicts (an error message per chunk, or null). */
function outcome(views: JobOutcome['views'], errors: ReadonlyArray<string | null>, writtenTo: WriteTarget | null): JobOutcome {
  return { views, error: (i) => (errors[i] === null ? null : new NydusError(errors[i]!, EIO)), writtenTo };
}

/** A job none of whose chunks could be had (the backend's read failed, the pool closed). */
function failedWhole(job: ChunkJob, e: Error): JobOutcome {
  return { views: job.chunks.map(() => null), error: () => e, writtenTo: null };
}

/**
 * Uncompressed bytes one verification job takes (a chunk larger than this is a job of its own). Each
 * job costs the event loop and the pool a fixed share (a pool round trip, an output buffer, its
 * settling), which dominates under emulation: the Debian rootfs read whole in the guest (2 vCPUs,
 * TCG), three runs each in turn, took 9.5-10.4 s cold with jobs of 1 MiB against 10.4-12.5 s with
 * 256 KiB, and nydusd 7.4-7.8 s of CPU against 8.4-9.7 s; 2 MiB gained nothing more (10.0-12.5 s).
 * On the host (fanotify) the two sizes tie: 1.69 s median of five either way. Two jobs of a 4 MiB
 * window still keep both pool threads busy.
 */
const VERIFY_JOB_BYTES = 1 << 20;

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
