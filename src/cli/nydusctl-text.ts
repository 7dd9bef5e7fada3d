/**
 * nydusctl's text output (without --raw), line for line as upstream nydusctl prints it
 * (dragonflyoss/nydus src/bin/nydusctl/commands.rs): the same labels, column widths and blank lines,
 * and values as Rust prints them there (a JSON value in its JSON form, strings quoted; an f64 as
 * Rust's Display writes it; integer divisions by zero as 0).
 */

/** An API answer's JSON object. */
export type Json = Record<string, unknown>;

/** A JSON value as serde_json's Display writes it: strings quoted, objects and arrays compact. */
function value(v: unknown): string {
  return v === undefined ? 'null' : JSON.stringify(v);
}

/** An f64 as Rust's `{}` writes it: `inf`, `NaN`, and no exponent. */
function f64(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (Number.isInteger(x)) return BigInt(x).toString();
  const s = String(x);
  if (!s.includes('e')) return s;
  // Below 1e-6 JS writes an exponent (a non-integer is never that large): the same digits, placed.
  const [mantissa, exponent] = s.split('e');
  const sign = mantissa.startsWith('-') ? '-' : '';
  const digits = mantissa.replace('-', '').replace('.', '');
  return `${sign}0.${'0'.repeat(-Number(exponent) - 1)}${digits}`;
}

/** A u64 field (0 when missing or not a number). */
function u64(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? Math.floor(v) : 0;
}

/** `a / b` on u64s as Rust's checked_div(..).unwrap_or_default(). */
function div(a: number, b: number): number {
  return b === 0 ? 0 : Math.floor(a / b);
}

/** `{:<width}`: left-aligned, padded with spaces. */
function left(s: string | number, width: number): string {
  return String(s).padEnd(width);
}

/** A row of upstream's `{:<8}` columns. */
function columns(cells: ReadonlyArray<string | number>): string {
  return cells.map((c) => left(c, 8)).join('');
}

function array(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

/** `nydusctl info`: the daemon and its instances (GET /api/v1/daemon). */
export function daemonText(info: Json): string {
  const version = (info.version ?? {}) as Json;
  let out = `
Version:                ${value(version.package_ver)}
Status:                 ${value(info.state)}
Profile:                ${value(version.profile)}
Commit:                 ${value(version.git_commit)}
`;
  const backends = info.backend_collection;
  if (backends && typeof backends === 'object') {
    const entries = Object.entries(backends as Record<string, Json>);
    if (entries.length) out += 'Instances:\n';
    for (const [mountpoint, b] of entries) {
      out += `\tInstance Mountpoint:  ${mountpoint}\n`;
      out += `\tType:  ${String(b.backend_type)}\n`;
      out += `\tMounted Time:  ${String(b.mounted_time)}\n`;
      if (b.backend_type === 'Rafs') {
        const config = (b.config ?? {}) as Json;
        const rafs = (config.rafs ?? {}) as Json;
        const prefetch = (((config.cache ?? {}) as Json).prefetch ?? {}) as Json;
        out += `\tMode:  ${String(rafs.mode ?? 'direct')}\n`;
        out += `\tPrefetch:  ${prefetch.enable === true}\n`;
        out += `\tPrefetch Merging Size:  ${u64(prefetch.batch_size)}\n`;
        out += '\n';
      }
    }
  }
  return out;
}

/** The block size classes of the backend's read counters. */
const BLOCK_SIZES = ['<1K', '1K~', '4K~', '16K~', '64K~', '128K~', '512K~', '1M~'];

/** `nydusctl metrics backend` (GET /api/v1/metrics/backend). */
export function backendText(m: Json): string {
  const amount = u64(m.read_amount_total);
  let out = `
Backend Type:       ${value(m.backend_type)}
Read Amount:        ${value(m.read_amount_total)} Bytes (${f64(amount / 1024 / 1024)} MB)
Read Count:         ${value(m.read_count)}
Read Errors:        ${value(m.read_errors)}
`;
  const header = `\n${left('Block Sizes:', 25)}${columns(BLOCK_SIZES)}\n`;
  const latency = array(m.read_cumulative_latency_millis_dist);
  const hits = array(m.read_count_block_size_dist);
  out += header;
  out += left('Average Latency(millis):', 25) + columns(BLOCK_SIZES.map((_, i) => div(u64(latency[i]), u64(hits[i])))) + '\n';
  out += header;
  out += left('Request Count:', 25) + columns(BLOCK_SIZES.map((_, i) => u64(hits[i]))) + '\n';
  return out;
}

/**
 * What the backend read between two samples of GET /api/v1/metrics/backend taken `secs` apart, as
 * upstream nydusctl works it out. Counters that went down (a new worker counts from zero) count as
 * nothing read, never a negative figure.
 */
export function backendInterval(last: Json, now: Json, secs: number) {
  const delta = (k: string) => Math.max(0, u64(now[k]) - u64(last[k]));
  const deltas = (k: string) => BLOCK_SIZES.map((_, i) => Math.max(0, u64(array(now[k])[i]) - u64(array(last[k])[i])));
  const bytes = delta('read_amount_total');
  const reads = delta('read_count');
  const latencies = deltas('read_cumulative_latency_millis_dist');
  const hits = deltas('read_count_block_size_dist');
  return {
    interval_secs: secs,
    read_bandwidth_kb_s: div(bytes, secs * 1024),
    read_count: reads,
    average_io_size: div(bytes, reads),
    average_latency_millis: div(delta('read_cumulative_latency_millis_total'), reads),
    /** Average latency per block size (BLOCK_SIZES), millis. */
    block_latency_millis: BLOCK_SIZES.map((_, i) => div(latencies[i], hits[i])),
  };
}

/** `nydusctl metrics backend -I <secs>`: upstream's text of backendInterval. */
export function backendIntervalText(last: Json, now: Json, secs: number): string {
  const r = backendInterval(last, now, secs);
  return `
>>> >>> >>> >>> >>>
Backend Read Bandwidth:     ${r.read_bandwidth_kb_s} KB/S
Backend Average IO Size:    ${r.average_io_size} Bytes
Backend Average Latency:    ${r.average_latency_millis} millis

Block Sizes/millis:
${columns(BLOCK_SIZES)}
${columns(r.block_latency_millis)}
<<< <<< <<< <<< <<<
`;
}

/** `nydusctl metrics cache` (GET /api/v1/metrics/blobcache). */
export function cacheText(m: Json): string {
  const num = (k: string) => (typeof m[k] === 'number' ? (m[k] as number) : 0);
  const duration = num('prefetch_end_time_secs') + num('prefetch_end_time_millis') / 1000
    - (num('prefetch_begin_time_secs') + num('prefetch_begin_time_millis') / 1000);
  const amount = num('prefetch_data_amount');
  return `
Partial Hits:               ${value(m.partial_hits)}
Whole Hits:                 ${value(m.whole_hits)}
Total Read:                 ${value(m.total)}
Directory:                  ${value(m.store_path)}
Files:                      ${value(m.underlying_files)}
Persister Buffer:           ${value(m.buffered_backend_size)}

Prefetch Workers:           ${value(m.prefetch_workers)}
Prefetch Amount:            ${f64(amount)} = ${f64(amount / 1024)} KB
Prefetch Requests:          ${value(m.prefetch_requests_count)}
Prefetch Average Size:      ${div(u64(m.prefetch_data_amount), u64(m.prefetch_requests_count))} Bytes
Prefetch Duration:          ${f64(duration)} Seconds
Prefetch Bandwidth:         ${f64(amount / 1024 / 1024 / duration)} MB/S
Prefetch Request Latency:   ${f64(num('prefetch_cumulative_time_millis') / num('prefetch_requests_count') / 1000)} Seconds
Prefetch Unmerged:          ${value(m.prefetch_unmerged_chunks)}
`;
}

/** `nydusctl metrics fsstats` (GET /api/v1/metrics). */
export function fsStatsText(m: Json): string {
  const periods = ['<1ms', '~20ms', '~50ms', '~100ms', '~500ms', '~1s', '~2s', '2s~'];
  const fops = array(m.fop_hits);
  const dataRead = u64(m.data_read);
  let out = `\n${left('Read Latency:', 16)}${columns(periods)}\n`;
  out += left('Reads Count:', 16) + columns(array(m.read_latency_dist).map(u64)) + '\n\n';
  out += `Read Errors: ${value(array(m.fop_errors)[4])}\n`;
  out += `Read Data: ${dataRead}Bytes (${Math.floor(dataRead / 1024 / 1024)}MB)\n`;
  const f = (i: number) => value(fops[i]);
  out += `
FOP Counters:
Getattr(${f(0)}) Readlink(${f(1)}) Open(${f(2)}) Release(${f(3)}) Read(${f(4)}) Statfs(${f(5)}) Getxattr(${f(6)}) Listxattr(${f(7)})
Opendir(${f(8)}) Lookup(${f(9)}) Readdir(${f(10)}) Readdirplus(${f(11)}) Access(${f(12)}) Forget(${f(13)}) BatchForget(${f(14)})
`;
  return out;
}
