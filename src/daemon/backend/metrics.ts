/**
 * Backend counters, only ever increased: reads asked for, bytes delivered, failed reads, and how long
 * reads took (a histogram with fixed bucket bounds). A backend counts into its type's (shared by
 * every image of the type) and its image's.
 *
 * Beside ours, nydus's own (utils/src/metrics.rs BackendMetrics), under its names: upstream nydusctl
 * and other tools index them (`metrics backend` reads read_cumulative_latency_millis_dist and
 * read_count_block_size_dist), so a daemon without them breaks those tools.
 */
import { errorEvents } from '../error-events.ts';

/** Upper bounds of the latency buckets, in milliseconds; a last, unbounded bucket follows. */
export const LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] as const;

/** nydus's request size classes: < 1 KiB, then from 1, 4, 16, 64, 128, 512 KiB and 1 MiB on (nydusctl's "Block Sizes"). */
const SIZE_CLASSES_KIB = [1, 4, 16, 64, 128, 512, 1024] as const;
/** nydus's latency classes, ms: <= 1, 20, 50, 100, 500, 1000, 2000, and more. */
const NYDUS_LATENCY_MS = [1, 20, 50, 100, 500, 1000, 2000] as const;

/** Which class of `bounds` a value falls in: the first it is below (`below`) or at most, else the last. */
function classOf(bounds: readonly number[], v: number, below: boolean): number {
  const i = bounds.findIndex((b) => (below ? v < b : v <= b));
  return i < 0 ? bounds.length : i;
}

export interface BackendMetrics {
  read_count: number;
  read_amount_total: number;
  read_errors: number;
  /** Sum of the reads' durations, ms (with read_count, the mean). */
  read_latency_total_ms: number;
  /** Reads per latency bucket (not cumulative): index i counts reads <= LATENCY_BUCKETS_MS[i], the last one the rest. */
  read_latency_dist: number[];
  /** nydus's: the sum of the reads' whole milliseconds. */
  read_cumulative_latency_millis_total: number;
  /** nydus's, per request size class (SIZE_CLASSES_KIB): the reads' whole milliseconds, and how many reads. */
  read_cumulative_latency_millis_dist: number[];
  read_count_block_size_dist: number[];
  /** nydus's: reads per size class, then per latency class (NYDUS_LATENCY_MS). */
  read_latency_sizes_dist: number[][];
}

export function newBackendMetrics(): BackendMetrics {
  const sizes = SIZE_CLASSES_KIB.length + 1;
  return {
    read_count: 0, read_amount_total: 0, read_errors: 0, read_latency_total_ms: 0, read_latency_dist: new Array(LATENCY_BUCKETS_MS.length + 1).fill(0),
    read_cumulative_latency_millis_total: 0, read_cumulative_latency_millis_dist: new Array(sizes).fill(0), read_count_block_size_dist: new Array(sizes).fill(0),
    read_latency_sizes_dist: Array.from({ length: sizes }, () => new Array(NYDUS_LATENCY_MS.length + 1).fill(0)),
  };
}

/** The counters of several backends added up (the daemon's, over its backend types). */
export function sumBackendMetrics(all: readonly BackendMetrics[]): BackendMetrics {
  const sum = newBackendMetrics();
  const add = (to: number[], from: readonly number[]) => from.forEach((v, i) => { to[i] += v; });
  for (const m of all) {
    sum.read_count += m.read_count;
    sum.read_amount_total += m.read_amount_total;
    sum.read_errors += m.read_errors;
    sum.read_latency_total_ms += m.read_latency_total_ms;
    sum.read_cumulative_latency_millis_total += m.read_cumulative_latency_millis_total;
    add(sum.read_latency_dist, m.read_latency_dist);
    add(sum.read_cumulative_latency_millis_dist, m.read_cumulative_latency_millis_dist);
    add(sum.read_count_block_size_dist, m.read_count_block_size_dist);
    m.read_latency_sizes_dist.forEach((row, i) => add(sum.read_latency_sizes_dist[i], row));
  }
  return sum;
}

/** Where a backend counts its reads: one set of counters or several (its type's and its image's). */
export type MetricsSink = BackendMetrics | readonly BackendMetrics[];

/** Runs one backend read, counting it, its bytes (`bytes`: those of what it gave) or its failure, and its latency, in each of `sink`. */
export async function countRead<T = Buffer>(sink: MetricsSink, read: () => Promise<T>, bytes: (r: T) => number = (r) => (r as Buffer).length): Promise<T> {
  const all: readonly BackendMetrics[] = Array.isArray(sink) ? sink : [sink as BackendMetrics];
  // process.hrtime, not performance.now(): the global `performance` loads perf_hooks (seven of
  // node's internal modules compiled, some 3 ms) on its first use, which would be a container's first read.
  const start = process.hrtime.bigint();
  for (const m of all) m.read_count++;
  let n = 0;
  try {
    const r = await read();
    n = bytes(r);
    for (const m of all) m.read_amount_total += n;
    return r;
  } catch (e) {
    for (const m of all) m.read_errors++;
    // A read that failed for good (the backends retry within `read`): kept for GET /api/v1/daemon/events.
    errorEvents.push((e as Error)?.message ?? String(e));
    throw e;
  } finally {
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    const i = classOf(LATENCY_BUCKETS_MS, ms, false);
    // nydus classes a read by the bytes it gave (none for a failed one) and counts whole milliseconds.
    const wholeMs = Math.floor(ms);
    const size = classOf(SIZE_CLASSES_KIB, n / 1024, true);
    const latency = classOf(NYDUS_LATENCY_MS, wholeMs, false);
    for (const m of all) {
      m.read_latency_total_ms += ms;
      m.read_latency_dist[i]++;
      m.read_cumulative_latency_millis_total += wholeMs;
      m.read_cumulative_latency_millis_dist[size] += wholeMs;
      m.read_count_block_size_dist[size]++;
      m.read_latency_sizes_dist[size][latency]++;
    }
  }
}

/**
 * A backend's stream of a blob (BlobBackend.stream), counted as one read of the bytes it gave, its
 * latency the whole stream's: counted when it ends, fails or is left. Ended by its `signal` (its
 * taker stopped: a cache file closed), it is left, not failed.
 */
export async function* countStream(sink: MetricsSink, pieces: AsyncIterable<Buffer>, signal?: AbortSignal): AsyncGenerator<Buffer> {
  let n = 0;
  let left = true;
  let finish!: (n: number) => void;
  let fail!: (e: unknown) => void;
  const counted = countRead(sink, () => new Promise<number>((resolve, reject) => {
    finish = resolve;
    fail = reject;
  }), (r) => r);
  counted.catch(() => undefined);
  try {
    for await (const piece of pieces) {
      n += piece.length;
      yield piece;
    }
    left = false;
    finish(n);
  } catch (e) {
    if (!signal?.aborted) {
      left = false;
      fail(e);
    }
    throw e;
  } finally {
    // Left by its taker (a prefetch stopped): the bytes it gave.
    if (left) finish(n);
  }
}
