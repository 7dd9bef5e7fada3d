/**
 * BlobCacheFile: one blob's cache file as a kernel front end has it open, filled chunk by chunk.
 *   fill(range)   -> the chunks covering it not yet in the file: fetched, verified, written, marked
 *                    with the chunks after it in blob order (amplification), before the kernel asks
 *   prefetch      -> the image's prefetch list in the background, batched, paced, stopped on close
 * A demand READ that reads on from the last one is amplified (nydus's amplify_io): the chunks that
 * follow it in blob order, up to a window, are fetched with it, chunks stored back to back in one
 * backend read, so that the next files (laid out after it) are in the file before the kernel asks.
 * The window grows while the READs read on (as the kernel's read-ahead does), from amplify_io to
 * WINDOW_RAMP_MAX times it; a READ elsewhere starts it again. Every chunk is verified on its own: a
 * corrupt one in the window is never written and fails no one but a reader of its own bytes.
 * Both front ends (fscache's /dev/cachefiles and fanotify's pre-content events) drive it; they differ
 * only in how bytes reach the file (CacheFileIo) and how a request is answered.
 *
 * Work belongs to the open file (its WorkGuard), never to an fd number: the kernel may give the same
 * number to the next file. After close nothing is marked, and nothing written but by a verification
 * job already on its way (through an fd the guard still holds open: right bytes, left unmarked).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { ChunkRef } from '../builder/tree.ts';
import { type BlobMap, alignToChunk, followsInFile } from './blob-map.ts';
import { type ChunkFetcher, type ChunkJob, type ChunkTicket, type WriteTarget, batchChunks } from './chunk-fetcher.ts';
import { AMPLIFY_IO_DEFAULT, type PrefetchConfig } from './config.ts';
import type { CacheFileKey, DaemonState } from './state.ts';

/** How a front end puts bytes into a blob's cache file and asks what the file holds. */
export interface CacheFileIo {
  /**
   * Whether the kernel asks only for what the file lacks (cachefiles READs a hole): a demand for a
   * chunk marked cached then means the mark is stale. Pre-content events come for every read, held
   * bytes too: there a mark is trusted (checked against the file on open).
   */
  asksOnlyForMissing: boolean;
  write(offset: number, data: Uint8Array): Promise<void>;
  /**
   * The file as the fetcher's verification jobs may write into it themselves (on the pool thread that
   * verified the chunks, fetchBatch), when it can be now: the same object every time. Its fd stays open
   * while the file's work runs (the WorkGuard).
   */
  target?(): WriteTarget | null;
  /** Bytes [from, to) were written into the file through `target()`. */
  written?(from: number, to: number): void;
  /** Chunks were marked as in the file (after their bytes were written): the moment a file may have become complete. */
  marked?(): void;
  /** The ranges of [from, to) the cache file really holds; throws ENOBUFS while the kernel has not attached it yet. */
  dataRanges(from: number, to: number): Array<[number, number]>;
}

/**
 * Background prefetch of one blob: its chunks in order (positions in its blob map), and how to fetch
 * them. The first `listed` are the prefetch table's files, what a container reads as it starts; the
 * rest of the blob comes after them, verified as background work (VerifyPool), which keeps a CPU
 * free for the container and its READs.
 */
export interface PrefetchPlan {
  order: Uint32Array;
  listed: number;
  config: Pick<PrefetchConfig, 'threads' | 'batchSize' | 'bandwidthLimit' | 'stream'>;
  /** The image's streams (`config.stream`): its blobs stream `threads` at a time, as nydus's stream_prefetch has them. */
  streams?: Limiter;
}

/** How a cache file is filled beyond what a READ asks. */
export interface FillOptions {
  /** Amplification window in bytes of the blob (nydus's amplify_io). */
  amplifyIo?: number;
}

/** Counters shared by every cache file of a session. */
export interface CacheCounters {
  prefetchedChunks: number;
  staleMarks: number;
  /** Chunks their verification job wrote into the cache file itself (CacheFileIo.target). */
  chunksWrittenByVerifier: number;
}

/**
 * How far the amplification window grows, in multiples of amplify_io: doubled by each READ that reads
 * on. Measured on the Debian rootfs read whole (guest, 2 vCPUs): a fixed 1 MiB window 12.4 / 12.7 s,
 * 4 MiB 10.7 / 11.2 s, 16 MiB 12.6 / 14.2 s (fetched ahead, it competes with the reader for the CPU);
 * this ramp from 1 MiB against the fixed 1 MiB window, four runs each in turn: 10.2-11.2 s against
 * 11.1-12.2 s, and the traced `ls` no slower.
 */
const WINDOW_RAMP_MAX = 4;
/** How many windows past the last READ the window streams on at most (cachefiles: the reader is not seen between READs); a reader that stops has at most this many fetched past it. */
const STREAM_AHEAD = 16;
/**
 * Steps of the stream on their way at once: with one, the pool waited for the event loop between
 * steps (guest, big-file workload, three runs each in turn: 2.16, 1.86, 8.62 s against 2.28, 1.96,
 * 10.09 s with one, the last the Debian rootfs).
 */
const STREAM_STEPS = 2;
/** Chunks fetched ahead of the kernel after each demand READ of a blob. */
const READ_AHEAD_CHUNKS = 2;
const ENOBUFS = 105;
/** The kernel attaches the cache file to the object right after copen; until then lseek says ENOBUFS. */
const ATTACH_WAIT_MS = 5;
const ATTACH_TRIES = 400;

/**
 * Keeps a resource (an fd) alive while work uses it: `close()` marks it closed, and `onDrained` runs
 * once the last work that was using it has settled.
 */
export class WorkGuard {
  closed = false;
  private users = 0;
  private drained = false;
  private readonly aborter = new AbortController();
  constructor(private readonly onDrained: () => void) {}

  /** Aborted on close: a request of the file's work (a stream prefetch's) ends then, not at its own pace. */
  get signal(): AbortSignal {
    return this.aborter.signal;
  }

  async use<T>(fn: () => Promise<T>): Promise<T> {
    this.users++;
    try {
      return await fn();
    } finally {
      if (--this.users === 0 && this.closed) this.drain();
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.aborter.abort(new Error('the cache file was closed'));
    if (this.users === 0) this.drain();
  }

  /** Once only: work started after close must not close the fd again (its number may be another file's by then). */
  private drain(): void {
    if (this.drained) return;
    this.drained = true;
    this.onDrained();
  }
}

/** The chunks of one verification job on their way into a cache file (BlobCacheFile.place). */
interface Placement {
  /** Settles (never rejects) once they are in the file and marked, or failed. */
  done: Promise<void>;
  /** How many were written and marked. */
  written: number;
  /** The ones that failed, by chunk index. */
  failed: Map<number, Error> | null;
}

export class BlobCacheFile {
  /** Chunks on their way into the file, by chunk index. */
  private readonly materializing = new Map<number, Placement>();
  /** Settles once the chunk marks were checked against the file (see reconcile). */
  private marksChecked: Promise<void> = Promise.resolve();
  /** Whether marksChecked settled: chunks beyond a READ trust the marks only then. */
  private marksReady = false;
  /** Settles once the background prefetch ended (whenPrefetched). */
  private prefetched: Promise<void> = Promise.resolve();
  private readonly amplifyIo: number;
  /** The window now, in multiples of amplifyIo (WINDOW_RAMP_MAX). */
  private ramp = 1;
  /** The last demand READ: a READ that follows it (within a window) reads on sequentially. */
  private lastRead: { start: number; end: number } | null = null;
  /** How far (blob offset) the chunks after READs were asked for (extendWindow). */
  private windowEnd = 0;
  /** Steps of the stream on their way (at most STREAM_STEPS); as each lands the window streams on (streamOn). */
  private streaming = 0;
  /** How many windows past the last READ the window streams on: doubled by each READ that reads on, to STREAM_AHEAD (1: it does not stream). */
  private streamAhead = 1;

  constructor(
    readonly key: CacheFileKey, readonly map: BlobMap, private readonly fetcher: ChunkFetcher,
    private readonly io: CacheFileIo, private readonly guard: WorkGuard, private readonly state: DaemonState,
    private readonly counters: CacheCounters, private readonly log: Logger, options: FillOptions = {},
  ) {
    this.amplifyIo = options.amplifyIo ?? AMPLIFY_IO_DEFAULT;
  }

  get closed(): boolean {
    return this.guard.closed;
  }

  /** Right after the kernel opened the file: check the marks, then start the background prefetch. */
  start(prefetch: PrefetchPlan | null): void {
    const marked = this.state.cached(this.key);
    // A new cache file has no marks to check: READs may amplify at once.
    if (marked.size === 0) this.marksReady = true;
    else {
      this.marksChecked = this.guard.use(() => this.reconcile(marked)).finally(() => {
        this.marksReady = true;
      });
    }
    if (prefetch) {
      this.prefetched = this.guard.use(() => this.prefetch(prefetch)).catch((e: Error) => {
        this.log.warn({ blob: this.map.blobId, err: e.message }, 'prefetch stopped');
      });
    }
  }

  /** Settles once the background prefetch ended (done, failed or stopped); at once without one. */
  whenPrefetched(): Promise<void> {
    return this.prefetched;
  }

  /** Whether the chunk marks were checked against the file (whenMarksChecked settled). */
  get marksTrusted(): boolean {
    return this.marksReady;
  }

  /** Settles once the chunk marks were checked against the file: from then on they are what it holds. */
  whenMarksChecked(): Promise<void> {
    return this.marksChecked;
  }

  /** Whether every chunk covering [offset, offset + len) is marked in the file. */
  rangeCached(offset: number, len: number): boolean {
    return this.map.chunksIn(offset, len).every((c) => this.state.isCached(this.key, c.indexInBlob));
  }

  /**
   * A demand READ: every chunk covering [offset, offset + len) is in the file when this settles. The
   * chunks after it in the window are fetched in the same backend reads and written in the background.
   */
  async fill(offset: number, len: number): Promise<void> {
    const demand = this.map.chunksIn(offset, len);
    const span = this.follow(offset, len);
    if (!this.marksReady) this.readAheadLater(offset, len, span);
    const missing = demand.filter((c) => this.wanted(c, true));
    // The READ's own chunks in reads of their own, verified first: the reader waits for them, not for
    // the window (whose chunks all start past the READ).
    if (missing.length) void this.materializeRuns(missing, this.fetch(missing, true), true);
    if (this.marksReady) this.fetchAhead(offset, len, span, missing.length > 0);
    // Every chunk of the READ is now in the file or on its way (missing, or another caller's).
    const waits: Array<Promise<void>> = [];
    const placed: Array<[ChunkRef, Placement]> = [];
    for (const c of demand) {
      const p = this.materializing.get(c.indexInBlob);
      if (!p) continue;
      if (!missing.includes(c)) this.fetcher.prioritize(this.map, c);
      if (!placed.length || placed[placed.length - 1][1] !== p) waits.push(p.done);
      placed.push([c, p]);
    }
    await Promise.all(waits);
    const again: ChunkRef[] = [];
    for (const [c, p] of placed) {
      const e = p.failed?.get(c.indexInBlob);
      if (!e) continue;
      if (missing.includes(c)) throw e;
      again.push(c);
    }
    if (again.length) await this.fillAgain(again);
  }

  /**
   * Chunks a READ found on their way (fetched ahead of it, or by a prefetch) that failed: fetched once
   * more for the READ, whose error must come from a fetch made for it. A backend that served wrong
   * bytes for a while (a proxy's fault, a registry's) fails the fetches of that while, and a reader
   * that reads again once it is over must not be failed by a fetch made before its read.
   */
  private async fillAgain(chunks: readonly ChunkRef[]): Promise<void> {
    const fresh = chunks.filter((c) => this.wanted(c, true));
    // Those another READ already fetches again: its outcome is this READ's too.
    const others = chunks.filter((c) => !fresh.includes(c)).map((c) => [c, this.materializing.get(c.indexInBlob)] as const);
    if (fresh.length) {
      const { failed } = await this.materializeRuns(fresh, this.fetch(fresh, true), true);
      if (failed.length) throw failed[0][1];
    }
    for (const [c, p] of others) {
      if (!p) continue;
      await p.done;
      const e = p.failed?.get(c.indexInBlob);
      if (e) throw e;
    }
  }

  /**
   * A READ of bytes the file holds (the kernel was let read them without waiting for this file): the
   * window follows it, as fill() has it, without fill()'s look at each of the READ's chunks. A
   * sequential reader's READs are mostly these (their bytes were fetched ahead).
   */
  readOn(offset: number, len: number): void {
    const span = this.follow(offset, len);
    if (!this.marksReady) return this.readAheadLater(offset, len, span);
    this.fetchAhead(offset, len, span, false);
  }

  /** The chunks the window adds after a READ (extendWindow) that are not in the file nor on their way, fetched in the background. */
  private fetchAhead(offset: number, len: number, span: number, missing: boolean): void {
    const ahead = this.extendWindow(offset, len, span, missing).filter((c) => this.wanted(c, false));
    if (ahead.length) this.fetchStream(ahead);
  }

  /**
   * Chunks of the window fetched; where the kernel asks only for what the file lacks (cachefiles), the
   * window then streams on (streamOn): no READ comes while the reader reads what is in the file, so
   * the window would otherwise wait for the reader to overtake it. A step with a chunk that failed
   * ends the stream (the reader will ask, and get its error).
   */
  private fetchStream(ahead: readonly ChunkRef[]): void {
    const done = this.materializeRuns(ahead, this.fetch(ahead, false), false);
    if (!this.io.asksOnlyForMissing || this.streaming >= STREAM_STEPS) return;
    this.streaming++;
    void done.then(({ failed }) => {
      this.streaming--;
      if (!failed.length) this.streamOn();
    });
    this.streamOn();
  }

  /**
   * A sequential reader's window moved on by half a window once a fetch of it is in the file, up to
   * streamAhead windows past the last READ: the chunks it reads next are fetched while it reads,
   * STREAM_STEPS steps at a time (the reader keeps a CPU of its own), and it stalls less at the
   * window's end. Measured on the Debian rootfs read whole in the guest (2 vCPUs, TCG), three runs
   * each in turn: 8.86, 8.82, 6.92 s against 11.10, 9.03, 8.25 s without it, the READs from 50-100 to
   * under 50.
   */
  private streamOn(): void {
    const last = this.lastRead;
    if (this.closed || !this.marksReady || !last || this.streamAhead < 2 || this.streaming >= STREAM_STEPS) return;
    const window = this.amplifyIo * this.ramp;
    for (;;) {
      const limit = Math.min(last.end + window * this.streamAhead, this.windowEnd + window / 2);
      if (this.windowEnd < last.end || limit <= this.windowEnd) return;
      const out = this.map.chunksAfter(this.windowEnd, limit, 1);
      if (!out.length) return;
      this.windowEnd = alignToChunk(out[out.length - 1].uncompressedOffset + out[out.length - 1].uncompressedSize);
      const ahead = out.filter((c) => this.wanted(c, false));
      if (ahead.length) return this.fetchStream(ahead);
    }
  }

  /**
   * A READ at `offset` of `len` bytes: the window's span after it (0 when it does not read on).
   * Amplified only when reading on from the last READ (a cat of a directory, a tar of a tree): a
   * READ elsewhere (an exec's libraries) gets the read-ahead of a few chunks, and its reader does not
   * share the CPU and the disk with a window nobody asked for.
   */
  private follow(offset: number, len: number): number {
    const last = this.lastRead;
    const window = this.amplifyIo * this.ramp;
    // (Where the kernel asks only for what the file lacks, a reader that read on through the window
    // comes back only past it: reading on is anywhere up to a window past the window's end.)
    const reach = this.io.asksOnlyForMissing ? Math.max(last?.end ?? 0, this.windowEnd) : (last?.end ?? 0);
    // There a reader that reads on asks from the first hole past what it read, and a hole starts where
    // a chunk does (chunks are written whole): a READ from inside a chunk past the last one jumped
    // there (an mmap fault's read-around: the loader at a library's data), however near it lands.
    const jumped = this.io.asksOnlyForMissing && last !== null && offset > last.end && !this.map.startsChunk(offset);
    const sequential = last !== null && !jumped && offset >= last.start && offset <= reach + window;
    this.lastRead = { start: offset, end: offset + len };
    this.ramp = sequential ? Math.min(this.ramp * 2, WINDOW_RAMP_MAX) : 1;
    // Only a READ past the last one's start is read on by the stream: the kernel asking for the same
    // bytes again (after an error) says nothing of what it reads next.
    this.streamAhead = sequential && offset > last.start ? Math.min(this.streamAhead * 2, STREAM_AHEAD) : 1;
    return sequential ? Math.max(len, window) : 0;
  }

  /**
   * The chunks after a READ that come with it: the window runs `span` bytes from the READ's offset
   * (at least READ_AHEAD_CHUNKS chunks past its end; large chunks outgrow the window). `windowEnd`
   * remembers how far it was asked for, so each READ looks only at the chunks it adds: reading on, it
   * is extended once less than half of it is left ahead of the reader (or a chunk of the READ itself
   * is missing), so that the fetch ahead goes in reads of half a window at least, not a chunk at a time.
   */
  private extendWindow(offset: number, len: number, span: number, missing: boolean): ChunkRef[] {
    const end = offset + len;
    // A jump elsewhere, or a reader that overtook the window: it starts again at the READ.
    if (span === 0 || this.windowEnd < end || this.windowEnd > end + span) this.windowEnd = end;
    else if (!missing && this.windowEnd - end >= span / 2) return [];
    const out = this.map.chunksAfter(this.windowEnd, offset + span, READ_AHEAD_CHUNKS);
    if (out.length) this.windowEnd = alignToChunk(out[out.length - 1].uncompressedOffset + out[out.length - 1].uncompressedSize);
    return out;
  }

  /**
   * Chunks fetched in merged reads (ChunkFetcher.fetchBatch), written into the file by their
   * verification jobs where the front end lets them. Only while the file is open, and only when
   * materializeRuns takes them in the same turn: it holds the guard, so the fd stays open until they settle.
   */
  private fetch(chunks: readonly ChunkRef[], urgent: boolean, maxRead?: number, background = false): ChunkTicket[] {
    const target = this.closed ? null : this.io.target?.() ?? null;
    return this.fetcher.fetchJobs(this.map, chunks, urgent, maxRead, target, background);
  }

  /** Whether a chunk still has to be fetched (not in the file, nor on its way). */
  private wanted(c: ChunkRef, demand: boolean): boolean {
    if (this.materializing.has(c.indexInBlob)) return false;
    if (!this.state.isCached(this.key, c.indexInBlob)) return true;
    return demand && this.io.asksOnlyForMissing && !this.holds(c);
  }

  /**
   * The state says which chunks are in the file; the file has the last word. SEEK_DATA/SEEK_HOLE show
   * what it really holds. Marks of chunks it does not hold (a culled or new cache file) are dropped.
   * When the file cannot be asked, marks stay: demand READs check for themselves.
   */
  private async reconcile(marked: ReadonlySet<number>): Promise<void> {
    let ranges: Array<[number, number]> | null = null;
    for (let i = 0; i < ATTACH_TRIES && !this.closed && !ranges; i++) {
      try {
        ranges = this.io.dataRanges(0, alignToChunk(this.map.uncompressedSize));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).errno !== ENOBUFS) break;
        await new Promise((r) => setTimeout(r, ATTACH_WAIT_MS));
      }
    }
    if (!ranges) {
      this.log.warn({ cookie: this.key.cookie, volume: this.key.volume }, 'cannot see the cache file; its chunk marks are kept unchecked');
      return;
    }
    const stale: number[] = [];
    for (let pos = 0; pos < this.map.chunkCount; pos++) {
      if (marked.has(this.map.indexAt(pos)) && !covers(ranges, this.map.rangeAt(pos))) stale.push(this.map.indexAt(pos));
    }
    if (stale.length) {
      this.state.unmark(this.key, stale);
      this.counters.staleMarks += stale.length;
      this.log.warn({ cookie: this.key.cookie, volume: this.key.volume, stale: stale.length, marked: marked.size }, 'dropped chunk marks the cache file does not hold');
    }
  }

  /**
   * Puts chunks into the file (in blob order, none in the file nor on its way; `tickets` are their
   * fetches) and marks them, a verification job at a time: concurrent callers for a chunk join its
   * job's Placement in `materializing`. A chunk that fails verification is left out, its neighbours are
   * written around it. `demand`: a READ asked for them, so a mark one of them still has is stale (the
   * kernel did not find its bytes) and is dropped. Resolves to how many were written and which failed.
   */
  private async materializeRuns(chunks: readonly ChunkRef[], tickets: readonly ChunkTicket[], demand: boolean): Promise<{ written: number; failed: Array<[ChunkRef, Error]> }> {
    if (demand) {
      const stale = chunks.filter((c) => this.state.isCached(this.key, c.indexInBlob)).map((c) => c.indexInBlob);
      if (stale.length) {
        this.state.unmark(this.key, stale);
        this.counters.staleMarks += stale.length;
      }
    }
    // The chunks of each job, in turn (a job's chunks are adjacent in blob order).
    const placements: Array<[Placement, readonly ChunkRef[]]> = [];
    for (let from = 0; from < chunks.length;) {
      const job = tickets[from].job;
      let to = from + 1;
      while (to < chunks.length && tickets[to].job === job) to++;
      const some = chunks.slice(from, to);
      placements.push([this.place(job, some, tickets.slice(from, to)), some]);
      from = to;
    }
    await Promise.all(placements.map(([p]) => p.done));
    let written = 0;
    const failed: Array<[ChunkRef, Error]> = [];
    for (const [p, some] of placements) {
      written += p.written;
      for (const c of some) {
        const e = p.failed?.get(c.indexInBlob);
        if (e) failed.push([c, e]);
      }
    }
    return { written, failed };
  }

  /**
   * Chunks of one job into the file once it is verified: what the job wrote itself (its writtenTo is
   * this file) is marked; the rest is written here, the chunks that follow one another in the file and
   * in the job's buffer in one write, without a copy (a write per chunk costs more than its bytes:
   * O_DIRECT waits for the disk). Nothing is written nor marked after close.
   */
  private place(job: ChunkJob, chunks: readonly ChunkRef[], tickets: readonly ChunkTicket[]): Placement {
    job.take();
    const placement: Placement = { done: Promise.resolve(), written: 0, failed: null };
    const fail = (c: ChunkRef, e: Error) => (placement.failed ??= new Map()).set(c.indexInBlob, e);
    placement.done = this.guard.use(async () => {
      try {
        const outcome = await job.outcome;
        // The job wrote its good chunks into this file itself (its verification's pool job did).
        const inThisFile = outcome.writtenTo !== null && outcome.writtenTo === (this.io.target?.() ?? null);
        const written: ChunkRef[] = [];
        const toWrite: Array<{ c: ChunkRef; data: Buffer }> = [];
        // Good chunks whose bytes the job did not keep (a direct job whose write failed): fetched again.
        const refetch: ChunkRef[] = [];
        chunks.forEach((c, k) => {
          const i = tickets[k].i;
          const e = outcome.error(i);
          if (e) return fail(c, e);
          if (inThisFile) return written.push(c);
          const data = outcome.views?.[i] ?? null;
          // (A chunk's bytes are a view of its job's buffer: empty if that were released too early.)
          if (data === null) refetch.push(c);
          else if (data.length !== c.uncompressedSize) fail(c, new Error(`chunk ${c.indexInBlob}: ${data.length} bytes, expected ${c.uncompressedSize}`));
          else toWrite.push({ c, data });
        });
        // No write after close, nor mark: the kernel is done with this file.
        if (this.closed) return;
        for (const run of fileRuns(written)) {
          this.io.written?.(run[0].uncompressedOffset, run[run.length - 1].uncompressedOffset + run[run.length - 1].uncompressedSize);
          this.inFile(placement, run);
        }
        this.counters.chunksWrittenByVerifier += written.length;
        await this.writeChunks(toWrite, placement, fail);
        if (refetch.length) await this.refetchAndWrite(refetch, placement, fail);
      } catch (e) {
        for (const c of chunks) if (!placement.failed?.has(c.indexInBlob)) fail(c, e as Error);
      } finally {
        job.giveBack();
        for (const c of chunks) if (this.materializing.get(c.indexInBlob) === placement) this.materializing.delete(c.indexInBlob);
      }
    });
    for (const c of chunks) this.materializing.set(c.indexInBlob, placement);
    return placement;
  }

  /**
   * Writes verified chunks through the front end: the chunks that follow one another in the file and
   * in one job's buffer in one write, without a copy (a write per chunk costs more than its bytes:
   * O_DIRECT waits for the disk). Marks what was written.
   */
  private async writeChunks(chunks: ReadonlyArray<{ c: ChunkRef; data: Buffer }>, placement: Placement, fail: (c: ChunkRef, e: Error) => void): Promise<void> {
    await Promise.all(writeRuns(chunks).map(async (run) => {
      try {
        await this.io.write(run[0].c.uncompressedOffset, runBytes(run));
        if (!this.closed) this.inFile(placement, run.map(({ c }) => c));
      } catch (e) {
        for (const { c } of run) fail(c, e as Error);
      }
    }));
  }

  /** Chunks of a placement are in the file: marked, and counted as written. */
  private inFile(placement: Placement, chunks: readonly ChunkRef[]): void {
    this.state.mark(this.key, chunks.map((c) => c.indexInBlob));
    placement.written += chunks.length;
    this.io.marked?.();
  }

  /** Chunks a job verified but kept no bytes of and could not write: fetched again with their bytes kept, and written here. */
  private async refetchAndWrite(chunks: readonly ChunkRef[], placement: Placement, fail: (c: ChunkRef, e: Error) => void): Promise<void> {
    const tickets = this.fetcher.fetchJobs(this.map, chunks, false, undefined, null);
    const jobs = [...new Set(tickets.map((t) => t.job))];
    for (const j of jobs) j.take();
    try {
      const outcomes = new Map(await Promise.all(jobs.map(async (j) => [j, await j.outcome] as const)));
      const toWrite: Array<{ c: ChunkRef; data: Buffer }> = [];
      chunks.forEach((c, k) => {
        const o = outcomes.get(tickets[k].job)!;
        const data = o.views?.[tickets[k].i] ?? null;
        if (data !== null && data.length === c.uncompressedSize) toWrite.push({ c, data });
        else fail(c, o.error(tickets[k].i) ?? new Error(`chunk ${c.indexInBlob}: its bytes were not kept`));
      });
      if (!this.closed) await this.writeChunks(toWrite, placement, fail);
    } finally {
      for (const j of jobs) j.giveBack();
    }
  }

  /** Whether the file holds the chunk's bytes. */
  private holds(c: ChunkRef): boolean {
    try {
      return covers(this.io.dataRanges(c.uncompressedOffset, c.uncompressedOffset + alignToChunk(c.uncompressedSize)), [c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize]);
    } catch {
      return false;
    }
  }

  /**
   * Before the marks are checked, chunks after a READ wait for that check (they trust the marks), and
   * are fetched then. Best effort: a failure here only means the kernel will ask itself.
   */
  private readAheadLater(offset: number, len: number, span: number): void {
    void this.marksChecked.then(() => {
      if (!this.closed) this.fetchAhead(offset, len, span, true);
    });
  }

  /**
   * Fills the file ahead of reads, skipping chunks it holds; stops on close. `threads` batches are in
   * flight at once; a batch is chunks stored back to back, up to `batchSize` bytes, fetched in one
   * backend read; `bandwidthLimit` paces the bytes read from the backend.
   */
  private async prefetch(plan: PrefetchPlan): Promise<void> {
    await this.marksChecked;
    if (plan.config.stream) return this.streamPrefetch(plan);
    const have = this.state.cached(this.key);
    const todo = (from: number, to: number) => {
      const out: ChunkRef[] = [];
      for (let i = from; i < to; i++) if (!have.has(this.map.indexAt(plan.order[i]))) out.push(this.map.at(plan.order[i]));
      return out;
    };
    const pace = new Pacer(plan.config.bandwidthLimit);
    const listed = Math.min(plan.listed, plan.order.length);
    await this.prefetchBatches(batchChunks(todo(0, listed), plan.config.batchSize), plan, pace, false);
    await this.prefetchBatches(batchChunks(todo(listed, plan.order.length), plan.config.batchSize), plan, pace, true);
  }

  /**
   * nydus's `stream_prefetch`: the blob from its first chunk not in the file to its end in one backend
   * request (BlobBackend.stream: a GET without Range for a whole blob, which a Dragonfly proxy keeps
   * whole), paced by `bandwidthLimit`. Each chunk is verified and written as soon as its stored bytes
   * are in, in jobs of up to `batchSize` stored bytes, `threads` of them on their way at most (the
   * stream waits meanwhile: bounded memory); chunks the file holds or that are on their way are passed
   * over. A corrupt chunk is never written (a reader of it fetches it, and gets its EIO). A stream that
   * fails is opened again from the first chunk still missing (STREAM_PREFETCH_TRIES in all); close
   * ends it at once.
   */
  private async streamPrefetch(plan: PrefetchPlan): Promise<void> {
    // (A file closed while it waits for its turn gives its place up: its fd is not held meanwhile.)
    if (plan.streams) await plan.streams.runUnlessAborted(() => this.streamBlob(plan), this.guard.signal);
    else await this.streamBlob(plan);
  }

  /** streamPrefetch's stream of this file's blob, opened again after a failure. */
  private async streamBlob(plan: PrefetchPlan): Promise<void> {
    const { map } = this;
    // Positions in stored order: the order of the stream's bytes.
    const stored = Uint32Array.from({ length: map.chunkCount }, (_, pos) => pos);
    const offsets = new Float64Array(map.chunkCount);
    for (let pos = 0; pos < map.chunkCount; pos++) offsets[pos] = map.at(pos).compressedOffset;
    stored.sort((a, b) => offsets[a] - offsets[b]);
    const pace = new Pacer(plan.config.bandwidthLimit);
    const batchBytes = Math.max(1, plan.config.batchSize);
    for (let attempt = 1; !this.closed; attempt++) {
      let k = 0;
      while (k < stored.length && !this.wanted(map.at(stored[k]), false)) k++;
      if (k === stored.length) return;
      try {
        await this.streamFrom(stored, k, pace, batchBytes, Math.max(1, plan.config.threads));
        return;
      } catch (e) {
        if (this.closed) return;
        if (attempt >= STREAM_PREFETCH_TRIES) throw e;
        this.log.warn({ blob: map.blobId, attempt, err: (e as Error).message }, 'stream prefetch failed; streaming again from the first chunk still missing');
        // (A close ends the pause: the loop then sees the file closed.)
        await sleep(STREAM_PREFETCH_BACKOFF_MS * attempt, undefined, { signal: this.guard.signal }).catch(() => undefined);
      }
    }
  }

  /** One stream of the blob from the chunk at `stored[k]` (streamPrefetch). */
  private async streamFrom(stored: Uint32Array, k: number, pace: Pacer, batchBytes: number, threads: number): Promise<void> {
    const { map } = this;
    const signal = this.guard.signal;
    let base = map.at(stored[k]).compressedOffset;
    /** The stream's bytes from `base` on not yet handed to jobs. */
    let pieces: Buffer[] = [];
    let held = 0;
    const onTheirWay = new Set<Promise<void>>();
    /**
     * Jobs for `batch` (stored back to back, all in), their stored bytes copied out of `pieces`. Asked
     * again which chunks are wanted: a READ may have brought some in while the stream waited.
     */
    const verify = async (batch: ChunkRef[]) => {
      const chunks = batch.filter((c) => this.wanted(c, false));
      if (!chunks.length || this.closed) return;
      const from = chunks[0].compressedOffset;
      const last = chunks[chunks.length - 1];
      const bytes = Buffer.allocUnsafeSlow(last.compressedOffset + last.compressedSize - from);
      let at = base;
      for (const p of pieces) {
        const lo = Math.max(at, from);
        const hi = Math.min(at + p.length, from + bytes.length);
        if (lo < hi) p.copy(bytes, lo - from, lo - at, hi - at);
        at += p.length;
      }
      const tickets = this.fetcher.jobsFromBytes(map, chunks, bytes, from, this.closed ? null : this.io.target?.() ?? null, true);
      if (!tickets.length) return;
      const placing = this.materializeRuns(tickets.map((t) => t.job.chunks[t.i]), tickets, false).then(({ written, failed }) => {
        this.counters.prefetchedChunks += written;
        for (const [c, e] of failed) this.log.warn({ blob: map.blobId, chunk: c.indexInBlob, err: e.message }, 'prefetch of a chunk failed');
      });
      onTheirWay.add(placing);
      void placing.finally(() => onTheirWay.delete(placing));
      while (onTheirWay.size >= threads) await Promise.race(onTheirWay);
    };
    try {
      for await (const piece of this.fetcher.stream(map, base, signal)) {
        if (this.closed) return;
        await pace.take(piece.length, () => this.closed);
        pieces.push(piece);
        held += piece.length;
        // Every chunk whose stored bytes are all in: the wanted ones in jobs of up to batchBytes.
        let batch: ChunkRef[] = [];
        let batchSize = 0;
        for (; k < stored.length; k++) {
          const c = map.at(stored[k]);
          if (c.compressedOffset + c.compressedSize > base + held) break;
          // (A chunk stored before `base`: another chunk's bytes, deduplicated; the file has it or a READ fetches it.)
          const take = c.compressedOffset >= base && this.wanted(c, false);
          const follows = batch.length > 0 && c.compressedOffset === batch[batch.length - 1].compressedOffset + batch[batch.length - 1].compressedSize;
          if (batch.length && (!take || !follows || batchSize + c.compressedSize > batchBytes)) {
            await verify(batch);
            batch = [];
            batchSize = 0;
          }
          if (take) {
            batch.push(c);
            batchSize += c.compressedSize;
          }
        }
        if (batch.length) await verify(batch);
        if (this.closed) return;
        // What no chunk still to come needs is dropped.
        const keepFrom = k < stored.length ? Math.min(map.at(stored[k]).compressedOffset, base + held) : base + held;
        while (pieces.length && base + pieces[0].length <= keepFrom) {
          base += pieces[0].length;
          held -= pieces[0].length;
          pieces.shift();
        }
        if (k === stored.length) return;
      }
      if (k < stored.length) throw new Error(`the stream of blob ${map.blobId} ended at byte ${base + held}, before chunk ${map.at(stored[k]).indexInBlob} (stored at ${map.at(stored[k]).compressedOffset}+${map.at(stored[k]).compressedSize})`);
    } finally {
      pieces = [];
      await Promise.all(onTheirWay);
    }
  }

  /** Prefetch batches, `threads` at once, until done or the file closes. */
  private async prefetchBatches(batches: readonly ChunkRef[][], plan: PrefetchPlan, pace: Pacer, background: boolean): Promise<void> {
    let next = 0;
    const worker = async () => {
      while (next < batches.length && !this.closed) {
        // Chunks a READ brought in since the plan was made are not fetched again.
        const planned = batches[next++].filter((c) => this.wanted(c, false));
        if (!planned.length) continue;
        await pace.take(planned.reduce((n, c) => n + c.compressedSize, 0), () => this.closed);
        if (this.closed) return;
        // Again after the pacer's wait (seconds, under a bandwidth limit): READs went on meanwhile.
        const batch = planned.filter((c) => this.wanted(c, false));
        if (!batch.length) continue;
        const { written, failed } = await this.materializeRuns(batch, this.fetch(batch, false, plan.config.batchSize, background), false);
        this.counters.prefetchedChunks += written;
        for (const [c, e] of failed) this.log.warn({ blob: this.map.blobId, chunk: c.indexInBlob, err: e.message }, 'prefetch of a chunk failed');
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, plan.config.threads) }, worker));
  }
}

/** How many times a stream prefetch opens its blob's stream (nydus's stream_prefetch tries 10 times a blob). */
const STREAM_PREFETCH_TRIES = 10;
/** The pause before the stream is opened again grows by this much each time (nydus's 100 ms * retries). */
const STREAM_PREFETCH_BACKOFF_MS = 100;

/**
 * Waits of the Pacer are slept in slices of at most this, and end early once its file is closed: a
 * timer longer than 2^31-1 ms fires at once, so a low rate's wait for the batches ahead (about 1 GiB
 * of them at 488 B/s) would not be waited at all, the limit ignored.
 */
const PACE_SLICE_MS = 1000;

/** Paces bytes to a rate (bytes per second; 0: no limit), however low; a wait ends early once `stopped` says so. */
export class Pacer {
  private next = Date.now();
  constructor(private readonly rate: number) {}
  async take(bytes: number, stopped: () => boolean = () => false): Promise<void> {
    if (!this.rate) return;
    const at = Math.max(Date.now(), this.next);
    this.next = at + (bytes / this.rate) * 1000;
    for (let now = Date.now(); at > now && !stopped(); now = Date.now()) {
      await new Promise((r) => setTimeout(r, Math.min(at - now, PACE_SLICE_MS)));
    }
  }
}

/** Bounds concurrent work to a thread count. */
export class Limiter {
  private running = 0;
  private readonly queue: Array<() => void> = [];
  constructor(private readonly max: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.running >= this.max) await new Promise<void>((r) => this.queue.push(r));
    return this.runNow(fn);
  }

  /** run, unless `signal` aborts while it waits for its turn: then null, and `fn` never runs. */
  async runUnlessAborted<T>(fn: () => Promise<T>, signal: AbortSignal): Promise<T | null> {
    if (signal.aborted) return null;
    if (this.running >= this.max) {
      const turn = await new Promise<boolean>((resolve) => {
        const onAbort = () => {
          const i = this.queue.indexOf(waiter);
          if (i >= 0) this.queue.splice(i, 1);
          resolve(false);
        };
        const waiter = () => {
          signal.removeEventListener('abort', onAbort);
          resolve(true);
        };
        this.queue.push(waiter);
        signal.addEventListener('abort', onAbort, { once: true });
      });
      if (!turn) return null;
    }
    return this.runNow(fn);
  }

  /** `fn` in a turn of its own; the next in line goes once it settles. */
  private async runNow<T>(fn: () => Promise<T>): Promise<T> {
    this.running++;
    try {
      return await fn();
    } finally {
      this.running--;
      this.queue.shift()?.();
    }
  }
}

/**
 * Verified chunks (in blob order) split into runs written at once: each follows the last in the file
 * (gaps are block padding) and in the buffer that holds it (the chunks of one verification job).
 */
function writeRuns<T extends { c: ChunkRef; data: Buffer }>(chunks: readonly T[]): T[][] {
  const out: T[][] = [];
  for (const x of chunks) {
    const run = out[out.length - 1];
    const prev = run?.[run.length - 1];
    if (prev && followsInFile(prev.c, x.c) && x.data.buffer === prev.data.buffer
      && x.data.byteOffset - prev.data.byteOffset === x.c.uncompressedOffset - prev.c.uncompressedOffset) run.push(x);
    else out.push([x]);
  }
  return out;
}

/** Chunks (in blob order) split into runs that follow one another in the file. */
function fileRuns(chunks: readonly ChunkRef[]): ChunkRef[][] {
  const out: ChunkRef[][] = [];
  for (const c of chunks) {
    const run = out[out.length - 1];
    if (run && followsInFile(run[run.length - 1], c)) run.push(c);
    else out.push([c]);
  }
  return out;
}

/** A write run's bytes: a view of the buffer that holds them all, padding included. */
function runBytes(run: ReadonlyArray<{ c: ChunkRef; data: Buffer }>): Uint8Array {
  const first = run[0];
  const last = run[run.length - 1];
  return new Uint8Array(first.data.buffer, first.data.byteOffset, last.c.uncompressedOffset + last.c.uncompressedSize - first.c.uncompressedOffset);
}

/** Whether data ranges cover a chunk's bytes [start, end) (the padding after a blob's last chunk may lie past EOF). */
export function covers(ranges: ReadonlyArray<readonly [number, number]>, [start, end]: readonly [number, number]): boolean {
  return ranges.some(([s, e]) => s <= start && e >= end);
}
