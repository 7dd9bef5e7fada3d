/**
 * Counters of one backend type, shared by its backends and only ever increased: reads asked for,
 * bytes delivered, failed reads, and how long reads took (a histogram with fixed bucket bounds).
 */

/** Upper bounds of the latency buckets, in milliseconds; a last, unbounded bucket follows. */
export const LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] as const;

export interface BackendMetrics {
  read_count: number;
  read_amount_total: number;
  read_errors: number;
  /** Sum of the reads' durations, ms (with read_count, the mean). */
  read_latency_total_ms: number;
  /** Reads per latency bucket (not cumulative): index i counts reads <= LATENCY_BUCKETS_MS[i], the last one the rest. */
  read_latency_dist: number[];
}

export function newBackendMetrics(): BackendMetrics {
  return { read_count: 0, read_amount_total: 0, read_errors: 0, read_latency_total_ms: 0, read_latency_dist: new Array(LATENCY_BUCKETS_MS.length + 1).fill(0) };
}

/** Runs one backend read, counting it, its bytes (`bytes`: those of what it gave) or its failure, and its latency. */
export async function countRead<T = Buffer>(m: BackendMetrics, read: () => Promise<T>, bytes: (r: T) => number = (r) => (r as Buffer).length): Promise<T> {
  // process.hrtime, not performance.now(): the global `performance` loads perf_hooks (seven of
  // node's internal modules compiled, some 3 ms) on its first use, which would be a container's first read.
  const start = process.hrtime.bigint();
  m.read_count++;
  try {
    const r = await read();
    m.read_amount_total += bytes(r);
    return r;
  } catch (e) {
    m.read_errors++;
    throw e;
  } finally {
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    m.read_latency_total_ms += ms;
    const i = LATENCY_BUCKETS_MS.findIndex((b) => ms <= b);
    m.read_latency_dist[i < 0 ? LATENCY_BUCKETS_MS.length : i]++;
  }
}
