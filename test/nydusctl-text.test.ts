/**
 * nydusctl's text output, against upstream nydusctl's format strings (dragonflyoss/nydus
 * src/bin/nydusctl/commands.rs) worked out by hand for given metrics: Rust's f64 Display (inf, NaN,
 * no exponent), u64 divisions by zero as 0, counters that went back as 0 (saturating_sub).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backendInterval, backendIntervalText, cacheText } from '../src/cli/nydusctl-text.ts';

const prefetch = {
  partial_hits: 1, whole_hits: 2, total: 3, store_path: '/var/cache', underlying_files: ['a.blob.data'], buffered_backend_size: 0,
  prefetch_workers: 8, prefetch_data_amount: 3 * 1048576, prefetch_requests_count: 3, prefetch_unmerged_chunks: 4,
  prefetch_cumulative_time_millis: 300, prefetch_begin_time_secs: 100, prefetch_begin_time_millis: 500, prefetch_end_time_secs: 102, prefetch_end_time_millis: 500,
};

test('metrics cache: the prefetch\'s amount, rate and latency as upstream works them out', () => {
  assert.equal(cacheText(prefetch), `
Partial Hits:               1
Whole Hits:                 2
Total Read:                 3
Directory:                  "/var/cache"
Files:                      ["a.blob.data"]
Persister Buffer:           0

Prefetch Workers:           8
Prefetch Amount:            3145728 = 3072 KB
Prefetch Requests:          3
Prefetch Average Size:      1048576 Bytes
Prefetch Duration:          2 Seconds
Prefetch Bandwidth:         1.5 MB/S
Prefetch Request Latency:   0.1 Seconds
Prefetch Unmerged:          4
`);
  // A prefetch that took no measurable time: Rust prints the division by zero as inf.
  const instant = cacheText({ ...prefetch, prefetch_end_time_secs: 100 });
  assert.match(instant, /\nPrefetch Duration: {10}0 Seconds\nPrefetch Bandwidth: {9}inf MB\/S\n/);
  // Fractions as Rust writes them: no exponent.
  assert.match(cacheText({ ...prefetch, prefetch_data_amount: 1 }), /\nPrefetch Amount: {12}1 = 0\.0009765625 KB\n/);
  assert.match(cacheText({ ...prefetch, prefetch_data_amount: 0, prefetch_end_time_secs: 1e9 }), /\nPrefetch Bandwidth: {9}0 MB\/S\n/);
  assert.match(cacheText({ ...prefetch, prefetch_cumulative_time_millis: 4.5e-12, prefetch_requests_count: 3 }), /\nPrefetch Request Latency: {3}0\.0000000000000015 Seconds\n/);
});

test('metrics backend -I: what was read between two samples; a counter that went back counts 0', () => {
  const dist = (xs: number[]) => xs;
  const last = { read_amount_total: 1000, read_count: 10, read_cumulative_latency_millis_total: 50, read_cumulative_latency_millis_dist: dist([0, 0, 0, 0, 0, 0, 0, 0]), read_count_block_size_dist: dist([0, 0, 0, 0, 0, 0, 0, 0]) };
  const now = { read_amount_total: 1000 + 4 * 1048576, read_count: 14, read_cumulative_latency_millis_total: 90, read_cumulative_latency_millis_dist: dist([0, 0, 0, 0, 0, 0, 0, 40]), read_count_block_size_dist: dist([0, 0, 0, 0, 0, 0, 0, 4]) };
  assert.equal(backendIntervalText(last, now, 2), `
>>> >>> >>> >>> >>>
Backend Read Bandwidth:     2048 KB/S
Backend Average IO Size:    1048576 Bytes
Backend Average Latency:    10 millis

Block Sizes/millis:
<1K     1K~     4K~     16K~    64K~    128K~   512K~   1M~     
0       0       0       0       0       0       0       10      
<<< <<< <<< <<< <<<
`);
  // A daemon that restarted between the samples: its counters start again, nothing is negative.
  assert.match(backendIntervalText(now, last, 1), /Backend Read Bandwidth: {5}0 KB\/S\nBackend Average IO Size: {4}0 Bytes\nBackend Average Latency: {4}0 millis\n/);
  // --raw prints the same figures (it once subtracted plainly: negative after a restart).
  assert.deepEqual(backendInterval(last, now, 2), { interval_secs: 2, read_bandwidth_kb_s: 2048, read_count: 4, average_io_size: 1048576, average_latency_millis: 10, block_latency_millis: [0, 0, 0, 0, 0, 0, 0, 10] });
  assert.deepEqual(backendInterval(now, last, 1), { interval_secs: 1, read_bandwidth_kb_s: 0, read_count: 0, average_io_size: 0, average_latency_millis: 0, block_latency_millis: [0, 0, 0, 0, 0, 0, 0, 0] });
});
