/**
 * The daemon's metrics in Prometheus' text exposition format (version 0.0.4), served at
 * GET /api/v1/metrics/prometheus: backend reads per backend type (count, bytes, errors, a latency
 * histogram), the on-demand session's counters, registered images and reads in flight.
 */
import type { BackendMetrics } from './backend/metrics.ts';
import { LATENCY_BUCKETS_MS } from './backend/metrics.ts';

export interface PrometheusSources {
  backends: Record<string, BackendMetrics>;
  /** The on-demand session's counters (absent before the daemon serves the kernel). */
  session?: { opens: number; reads: number; readBytes: number; readErrors: number; prefetchedChunks: number; staleMarks: number };
  images: number;
  inflight: number;
}

function label(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

export function prometheusText(src: PrometheusSources): string {
  const out: string[] = [];
  const family = (name: string, type: string, help: string) => out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  const backends = Object.entries(src.backends);
  const perBackend = (name: string, help: string, value: (m: BackendMetrics) => number) => {
    family(name, 'counter', help);
    for (const [type, m] of backends) out.push(`${name}{backend_type="${label(type)}"} ${value(m)}`);
  };
  perBackend('nydusd_backend_reads_total', 'Backend reads (one per request of one chunk or one run of adjacent chunks).', (m) => m.read_count);
  perBackend('nydusd_backend_read_bytes_total', 'Bytes delivered by backend reads.', (m) => m.read_amount_total);
  perBackend('nydusd_backend_read_errors_total', 'Backend reads that failed (the reader got EIO).', (m) => m.read_errors);
  family('nydusd_backend_read_duration_seconds', 'histogram', 'Duration of backend reads, retries included.');
  for (const [type, m] of backends) {
    const t = label(type);
    let cumulative = 0;
    LATENCY_BUCKETS_MS.forEach((le, i) => {
      cumulative += m.read_latency_dist[i];
      out.push(`nydusd_backend_read_duration_seconds_bucket{backend_type="${t}",le="${le / 1000}"} ${cumulative}`);
    });
    cumulative += m.read_latency_dist[LATENCY_BUCKETS_MS.length];
    out.push(`nydusd_backend_read_duration_seconds_bucket{backend_type="${t}",le="+Inf"} ${cumulative}`);
    out.push(`nydusd_backend_read_duration_seconds_sum{backend_type="${t}"} ${m.read_latency_total_ms / 1000}`);
    out.push(`nydusd_backend_read_duration_seconds_count{backend_type="${t}"} ${m.read_count}`);
  }
  const s = src.session ?? { opens: 0, reads: 0, readBytes: 0, readErrors: 0, prefetchedChunks: 0, staleMarks: 0 };
  const counter = (name: string, help: string, v: number) => {
    family(name, 'counter', help);
    out.push(`${name} ${v}`);
  };
  counter('nydusd_ondemand_opens_total', 'cachefiles OPEN requests answered.', s.opens);
  counter('nydusd_ondemand_reads_total', 'cachefiles READ requests handled.', s.reads);
  counter('nydusd_ondemand_read_bytes_total', 'Bytes the kernel asked for with READ requests served.', s.readBytes);
  counter('nydusd_ondemand_read_errors_total', 'READ requests completed without data (the reader got EIO).', s.readErrors);
  counter('nydusd_prefetched_chunks_total', 'Chunks fetched by background prefetch.', s.prefetchedChunks);
  family('nydusd_images', 'gauge', 'Images registered with PUT /api/v2/blobs.');
  out.push(`nydusd_images ${src.images}`);
  family('nydusd_ondemand_inflight_reads', 'gauge', 'READ requests in flight.');
  out.push(`nydusd_ondemand_inflight_reads ${src.inflight}`);
  return out.join('\n') + '\n';
}
