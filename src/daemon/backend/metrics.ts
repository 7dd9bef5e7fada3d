/**
 * Backend counters, only ever increased: reads asked for, bytes delivered, failed reads, and how long
 * reads took (a histogram with fixed bucket bounds). A backend counts into its type's (shared by
 * every image of the type) and its image's.
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

/** Where a backend counts its reads: one set of counters or several (its type's and its image's). */
export type MetricsSink = BackendMetrics | readonly BackendMetrics[];

/** Runs one backend read, counting it, its bytes (`bytes`: those of what it gave) or its failure, and its latency, in each of `sink`. */
export async function countRead<T = Buffer>(sink: MetricsSink, read: () => Promise<T>, bytes: (r: T) => number = (r) => (r as Buffer).length): Promise<T> {
  const all: readonly BackendMetrics[] = Array.isArray(sink) ? sink : [sink as BackendMetrics];
  // process.hrtime, not performance.now(): the global `performance` loads perf_hooks (seven of
  // node's internal modules compiled, some 3 ms) on its first use, which would be a container's first read.
  const start = process.hrtime.bigint();
  for (const m of all) m.read_count++;
  try {
    const r = await read();
    const n = bytes(r);
    for (const m of all) m.read_amount_total += n;
    return r;
  } catch (e) {
    for (const m of all) m.read_errors++;
    throw e;
  } finally {
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    const i = LATENCY_BUCKETS_MS.findIndex((b) => ms <= b);
    for (const m of all) {
      m.read_latency_total_ms += ms;
      m.read_latency_dist[i < 0 ? LATENCY_BUCKETS_MS.length : i]++;
    }
  }
}
