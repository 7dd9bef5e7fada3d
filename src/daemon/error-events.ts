/**
 * The daemon's recent errors, as nydusd keeps them for `GET /api/v1/daemon/events` (its ErrorHolder,
 * utils/src/logger.rs): a ring of at most `maxErrors` lines and `maxSize` bytes, each
 * `<HTTP date> - <error>`, the oldest dropped first. nydusd puts there the backend reads that failed
 * after their retries; so does this daemon (backend/metrics.ts, countRead).
 */
export class ErrorEvents {
  private readonly errors: string[] = [];
  private totalSize = 0;

  constructor(private readonly maxErrors = 500, private readonly maxSize = 50 * 1024) {}

  push(error: string): void {
    const line = `${new Date().toUTCString()} - ${error}`;
    // A line larger than the whole ring is not kept (nydusd refuses it as too large).
    if (line.length > this.maxSize) return;
    while (this.errors.length >= this.maxErrors || this.totalSize + line.length > this.maxSize) this.totalSize -= this.errors.shift()!.length;
    this.errors.push(line);
    this.totalSize += line.length;
  }

  /** nydusd's ErrorHolder as JSON: its bounds, what it holds, and the lines oldest first. */
  toJSON(): { max_errors: number; total_errors: number; max_size: number; total_size: number; errors: string[] } {
    return { max_errors: this.maxErrors, total_errors: this.errors.length, max_size: this.maxSize, total_size: this.totalSize, errors: [...this.errors] };
  }
}

/** The daemon's one ring (one per process, as nydusd's). */
export const errorEvents = new ErrorEvents();
