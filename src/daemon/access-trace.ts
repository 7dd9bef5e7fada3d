/**
 * Access trace of one registered image: which chunks the kernel's demand reads touched, in the order
 * they were first touched, and how often. Kept cheap on the hot path (a binary search per read, typed
 * arrays, no objects); chunks become files only when asked (trace-files.ts, on a registration worker).
 * Only demand reads are recorded: the front ends call `record` for the kernel's READs (fscache) and
 * pre-content events of other processes (fanotify); prefetch and read-ahead never do.
 *
 * What the kernel lets us see: fscache sends a READ only for data its cache file does not hold yet, so
 * a file brought in ahead of its read (amplification, prefetch) is not traced; fanotify raises an event
 * for every read of a cache file still marked, so every read is seen until the file is complete.
 */
import type { BlobMap } from './blob-map.ts';

/** First touches kept per image: past it new chunks are counted as dropped, not logged (16 bytes each at most). */
export const ACCESS_TRACE_MAX_ENTRIES = 1 << 18;
const INITIAL_ENTRIES = 1024;

/** The first touches, in order, at one moment: what trace-files.ts maps to files. */
export interface TraceSnapshot {
  /** Pairs (blob ordinal in the image's blob table, chunk position in its blob map). */
  chunks: Uint32Array;
  /** Per pair, when it was first touched (ms since the epoch). */
  times: Float64Array;
  /** Per pair, demand reads that touched it. */
  reads: Uint32Array;
  /** Per pair, the chunk's uncompressed size. */
  sizes: Float64Array;
}

/** A growing log of (blob, position) pairs, bounded. */
class PairLog {
  pairs = new Uint32Array(INITIAL_ENTRIES * 2);
  times: Float64Array | null;
  length = 0;
  dropped = 0;
  constructor(withTimes: boolean) {
    this.times = withTimes ? new Float64Array(INITIAL_ENTRIES) : null;
  }

  push(blob: number, pos: number): void {
    if (this.length === ACCESS_TRACE_MAX_ENTRIES) {
      this.dropped++;
      return;
    }
    if (this.length * 2 === this.pairs.length) {
      const grown = new Uint32Array(this.pairs.length * 2);
      grown.set(this.pairs);
      this.pairs = grown;
      if (this.times) {
        const t = new Float64Array(this.times.length * 2);
        t.set(this.times);
        this.times = t;
      }
    }
    this.pairs[this.length * 2] = blob;
    this.pairs[this.length * 2 + 1] = pos;
    if (this.times) this.times[this.length] = Date.now();
    this.length++;
  }

  clear(): void {
    this.length = 0;
    this.dropped = 0;
  }
}

/** The recording handle of one blob of an image, given to the front ends with the blob. */
export interface BlobAccessTrace {
  /** A demand read of [offset, offset + len) of the blob's uncompressed address space. */
  record(offset: number, len: number): void;
}

export class AccessTrace {
  /** Per blob ordinal: demand reads per chunk position (made on the blob's first read). */
  private readonly reads: Array<Uint32Array | null>;
  /** Per blob ordinal: chunk positions read since the last `takeRecent` (1) or not (0). */
  private readonly recentFlags: Array<Uint8Array | null>;
  private readonly first = new PairLog(true);
  private readonly recent = new PairLog(false);

  constructor(private readonly maps: readonly BlobMap[]) {
    this.reads = maps.map(() => null);
    this.recentFlags = maps.map(() => null);
  }

  /** The handle of the blob at `ordinal` in the image's blob table. */
  blob(ordinal: number): BlobAccessTrace {
    return { record: (offset, len) => this.record(ordinal, offset, len) };
  }

  private record(ordinal: number, offset: number, len: number): void {
    const map = this.maps[ordinal];
    const [from, to] = map.positionsIn(offset, len);
    if (from >= to) return;
    const reads = (this.reads[ordinal] ??= new Uint32Array(map.chunkCount));
    const flags = (this.recentFlags[ordinal] ??= new Uint8Array(map.chunkCount));
    for (let pos = from; pos < to; pos++) {
      if (reads[pos] === 0) this.first.push(ordinal, pos);
      if (reads[pos] !== 0xffffffff) reads[pos]++;
      if (!flags[pos]) {
        flags[pos] = 1;
        this.recent.push(ordinal, pos);
      }
    }
  }

  /** First touches beyond the bound, not logged. */
  get dropped(): number {
    return this.first.dropped;
  }

  /** Every first touch so far, in order. */
  snapshot(): TraceSnapshot {
    return this.snapshotOf(this.first.pairs.slice(0, this.first.length * 2), this.first.times!.slice(0, this.first.length));
  }

  /**
   * The chunks read since the last call (in the order of their first read since then), and a fresh
   * start: nydus's `latest` read files, which are cleared when fetched.
   */
  takeRecent(): TraceSnapshot {
    const pairs = this.recent.pairs.slice(0, this.recent.length * 2);
    for (let i = 0; i < pairs.length; i += 2) this.recentFlags[pairs[i]]![pairs[i + 1]] = 0;
    // Past the bound some chunks were flagged without being logged: those flags go too.
    if (this.recent.dropped) for (const f of this.recentFlags) f?.fill(0);
    this.recent.clear();
    return this.snapshotOf(pairs, new Float64Array(pairs.length / 2));
  }

  private snapshotOf(chunks: Uint32Array, times: Float64Array): TraceSnapshot {
    const n = chunks.length / 2;
    const reads = new Uint32Array(n);
    const sizes = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const [b, pos] = [chunks[i * 2], chunks[i * 2 + 1]];
      reads[i] = this.reads[b]![pos];
      const [start, end] = this.maps[b].rangeAt(pos);
      sizes[i] = end - start;
    }
    return { chunks, times, reads, sizes };
  }
}
