/**
 * BlobCacheFile: one blob's cache file as a kernel front end has it open, filled chunk by chunk.
 *   fill(range)   -> the chunks covering it not yet in the file: fetched, verified, written, marked
 *   readAhead     -> the chunks after a demand READ, in blob order, before the kernel asks
 *   prefetch      -> the image's prefetch list in the background, batched, paced, stopped on close
 * Both front ends (fscache's /dev/cachefiles and fanotify's pre-content events) drive it; they differ
 * only in how bytes reach the file (CacheFileIo) and how a request is answered.
 *
 * Work belongs to the open file (its WorkGuard), never to an fd number, and nothing is written after
 * close: the kernel may give the same fd number to the next file.
 */
import type { Logger } from 'pino';
import type { ChunkRef } from '../builder/tree.ts';
import type { BlobMap } from './blob-map.ts';
import type { ChunkFetcher } from './chunk-fetcher.ts';
import type { PrefetchConfig } from './config.ts';
import type { CacheFileKey, DaemonState } from './state.ts';

/** How a front end puts bytes into a blob's cache file and asks what the file holds. */
export interface CacheFileIo {
  write(offset: number, data: Uint8Array): Promise<void>;
  /** The ranges of [from, to) the cache file really holds; throws ENOBUFS while the kernel has not attached it yet. */
  dataRanges(from: number, to: number): Array<[number, number]>;
}

/** Background prefetch of one blob: its chunks in order (positions in its blob map), and how to fetch them. */
export interface PrefetchPlan {
  order: Uint32Array;
  config: Pick<PrefetchConfig, 'threads' | 'batchSize' | 'bandwidthLimit'>;
}

/** Counters shared by every cache file of a session. */
export interface CacheCounters {
  prefetchedChunks: number;
  staleMarks: number;
}

/** Chunks fetched ahead of the kernel after each demand READ of a blob. */
const READ_AHEAD_CHUNKS = 2;
const ENOBUFS = 105;
/** The kernel attaches the cache file to the object right after copen; until then lseek says ENOBUFS. */
const ATTACH_WAIT_MS = 5;
const ATTACH_TRIES = 400;

const roundUp4k = (n: number) => Math.ceil(n / 4096) * 4096;

/**
 * Keeps a resource (an fd) alive while work uses it: `close()` marks it closed, and `onDrained` runs
 * once the last work that was using it has settled.
 */
export class WorkGuard {
  closed = false;
  private users = 0;
  constructor(private readonly onDrained: () => void) {}

  async use<T>(fn: () => Promise<T>): Promise<T> {
    this.users++;
    try {
      return await fn();
    } finally {
      if (--this.users === 0 && this.closed) this.onDrained();
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.users === 0) this.onDrained();
  }
}

export class BlobCacheFile {
  /** Chunks on their way into the file, by chunk index. */
  private readonly materializing = new Map<number, Promise<void>>();
  /** Settles once the chunk marks were checked against the file (see reconcile). */
  private marksChecked: Promise<void> = Promise.resolve();

  constructor(
    readonly key: CacheFileKey, readonly map: BlobMap, private readonly fetcher: ChunkFetcher,
    private readonly io: CacheFileIo, private readonly guard: WorkGuard, private readonly state: DaemonState,
    private readonly counters: CacheCounters, private readonly log: Logger,
  ) {}

  get closed(): boolean {
    return this.guard.closed;
  }

  /** Right after the kernel opened the file: check the marks, then start the background prefetch. */
  start(prefetch: PrefetchPlan | null): void {
    this.marksChecked = this.guard.use(() => this.reconcile());
    if (prefetch) void this.guard.use(() => this.prefetch(prefetch));
  }

  /** A demand READ: every chunk covering [offset, offset + len) is in the file when this settles. */
  async fill(offset: number, len: number): Promise<void> {
    this.readAhead(offset + len);
    const chunks = this.map.chunksIn(offset, len);
    await Promise.all(chunks.map((c) => this.materialize(c, true, () => this.fetcher.fetch(this.map, c))));
  }

  /**
   * The state says which chunks are in the file; the file has the last word. SEEK_DATA/SEEK_HOLE show
   * what it really holds. Marks of chunks it does not hold (a culled or new cache file) are dropped.
   * When the file cannot be asked, marks stay: demand READs check for themselves.
   */
  private async reconcile(): Promise<void> {
    const marked = this.state.cached(this.key);
    if (marked.size === 0) return;
    let ranges: Array<[number, number]> | null = null;
    for (let i = 0; i < ATTACH_TRIES && !this.closed && !ranges; i++) {
      try {
        ranges = this.io.dataRanges(0, roundUp4k(this.map.uncompressedSize));
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
   * Puts one chunk into the file and marks it. Concurrent callers for the same chunk (a READ and the
   * read-ahead, or two READs) share one fetch and one write. Read-ahead and prefetch trust the marks
   * (checked on open); a demand READ of a marked chunk means the kernel did not find it, so the file
   * itself is asked, and a mark it contradicts is dropped and the chunk written.
   */
  private materialize(c: ChunkRef, demand: boolean, load: () => Promise<Buffer>): Promise<void> {
    const pending = this.materializing.get(c.indexInBlob);
    if (pending) return pending;
    if (this.state.isCached(this.key, c.indexInBlob)) {
      if (!demand || this.holds(c)) return Promise.resolve();
      this.state.unmark(this.key, [c.indexInBlob]);
      this.counters.staleMarks++;
    }
    const p = this.guard.use(async () => {
      const data = await load();
      // Never write after close: the kernel is done with this file.
      if (this.closed) return;
      await this.io.write(c.uncompressedOffset, data);
      this.state.mark(this.key, [c.indexInBlob]);
    }).finally(() => this.materializing.delete(c.indexInBlob));
    this.materializing.set(c.indexInBlob, p);
    return p;
  }

  /** Whether the file holds the chunk's bytes. */
  private holds(c: ChunkRef): boolean {
    try {
      return covers(this.io.dataRanges(c.uncompressedOffset, c.uncompressedOffset + roundUp4k(c.uncompressedSize)), [c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize]);
    } catch {
      return false;
    }
  }

  /**
   * Reads ahead in the blob's order: the chunks after a READ are usually the next ones the kernel asks
   * for (files are laid out sequentially), so fetching them now overlaps the backend and the digest
   * work with the reader. Best effort: a failure here only means the kernel will ask itself.
   */
  private readAhead(end: number): void {
    void this.marksChecked.then(() => {
      for (const c of this.map.chunksAfter(end, READ_AHEAD_CHUNKS)) {
        if (this.closed) return;
        this.materialize(c, false, () => this.fetcher.fetch(this.map, c)).catch((e) => {
          this.log.debug({ blob: this.map.blobId, chunk: c.indexInBlob, err: (e as Error).message }, 'read-ahead failed');
        });
      }
    });
  }

  /**
   * Fills the file ahead of reads, skipping chunks it holds; stops on close. `threads` batches are in
   * flight at once; a batch is chunks stored back to back, up to `batchSize` bytes, fetched in one
   * backend read; `bandwidthLimit` paces the bytes read from the backend.
   */
  private async prefetch(plan: PrefetchPlan): Promise<void> {
    await this.marksChecked;
    const have = this.state.cached(this.key);
    const todo: ChunkRef[] = [];
    for (const pos of plan.order) if (!have.has(this.map.indexAt(pos))) todo.push(this.map.at(pos));
    const batches = batchChunks(todo, plan.config.batchSize);
    const pace = new Pacer(plan.config.bandwidthLimit);
    let next = 0;
    const worker = async () => {
      while (next < batches.length && !this.closed) {
        const batch = batches[next++];
        await pace.take(batch.reduce((n, c) => n + c.compressedSize, 0));
        if (this.closed) return;
        const fetched = this.fetcher.fetchBatch(this.map, batch);
        await Promise.all(batch.map(async (c, i) => {
          try {
            await this.materialize(c, false, () => fetched[i]);
            this.counters.prefetchedChunks++;
          } catch (e) {
            this.log.warn({ blob: this.map.blobId, chunk: c.indexInBlob, err: (e as Error).message }, 'prefetch of a chunk failed');
          } finally {
            // A chunk another caller was already writing does not wait for this fetch: its failure is no one's.
            fetched[i].catch(() => undefined);
          }
        }));
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, plan.config.threads) }, worker));
  }
}

/** Splits chunks (in their order) into runs stored back to back, each at most `maxBytes` (one chunk at least). */
export function batchChunks(chunks: readonly ChunkRef[], maxBytes: number): ChunkRef[][] {
  const out: ChunkRef[][] = [];
  let cur: ChunkRef[] = [];
  let bytes = 0;
  for (const c of chunks) {
    const last = cur[cur.length - 1];
    const follows = last && c.compressedOffset === last.compressedOffset + last.compressedSize;
    if (cur.length && (!follows || bytes + c.compressedSize > maxBytes)) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(c);
    bytes += c.compressedSize;
  }
  if (cur.length) out.push(cur);
  return out;
}

/** Paces bytes to a rate (bytes per second; 0: no limit). */
class Pacer {
  private next = Date.now();
  constructor(private readonly rate: number) {}
  async take(bytes: number): Promise<void> {
    if (!this.rate) return;
    const now = Date.now();
    const at = Math.max(now, this.next);
    this.next = at + (bytes / this.rate) * 1000;
    if (at > now) await new Promise((r) => setTimeout(r, at - now));
  }
}

/** Bounds concurrent work to a thread count. */
export class Limiter {
  private running = 0;
  private readonly queue: Array<() => void> = [];
  constructor(private readonly max: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.running >= this.max) await new Promise<void>((r) => this.queue.push(r));
    this.running++;
    try {
      return await fn();
    } finally {
      this.running--;
      this.queue.shift()?.();
    }
  }
}

/** Whether data ranges cover a chunk's bytes [start, end) (the padding after a blob's last chunk may lie past EOF). */
function covers(ranges: ReadonlyArray<readonly [number, number]>, [start, end]: readonly [number, number]): boolean {
  return ranges.some(([s, e]) => s <= start && e >= end);
}
