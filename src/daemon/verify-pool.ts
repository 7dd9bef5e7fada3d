/**
 * Decompression and digest checks of fetched chunks on libuv's thread pool (the addon's
 * verifyRunNative), so that a daemon uses every core and its event loop keeps answering the kernel
 * while chunks are verified. A job is a run of chunks read in one piece. At most `size` jobs run at
 * once: the rest wait here, where a reader's job can still go first, and libuv's threads stay free
 * for the file reads and writes the daemon makes meanwhile.
 */
import { NydusError, EIO } from '../../erofs/errors.ts';
import { type BlobRangeRun, type StoredRun, type VerifiedBlobRange, type VerifiedRun, verifyBlobRange, verifyRunNative } from '../blob/verify.ts';

interface Job {
  /** Names the job's chunks (promote). */
  where: readonly string[];
  start: () => Promise<unknown>;
  resolve: (r: unknown) => void;
  reject: (e: Error) => void;
}

export class VerifyPool {
  private readonly queue: Job[] = [];
  private running = 0;
  private closed = false;

  /** `verify`: how one job is verified (tests slow it down to see the order). */
  constructor(private readonly size: number, private readonly verify: (run: StoredRun) => Promise<VerifiedRun> = verifyRunNative) {}

  private next(): void {
    while (this.running < this.size && this.queue.length) {
      const job = this.queue.shift()!;
      this.running++;
      let verified: Promise<unknown>;
      try {
        verified = job.start();
      } catch (e) {
        verified = Promise.reject(e);
      }
      verified.then(job.resolve, job.reject).finally(() => {
        this.running--;
        this.next();
      });
    }
  }

  /**
   * A job still queued goes first (a reader waits for one of its chunks); false when no queued job
   * has that chunk (running, done, or never asked for).
   */
  promote(where: string): boolean {
    const i = this.queue.findIndex((j) => j.where.includes(where));
    if (i < 0) return false;
    if (i > 0) this.queue.unshift(...this.queue.splice(i, 1));
    return true;
  }

  /**
   * Verifies a run of chunks; one that fails has its message in `errors` and zeros in the output.
   * `run.stored` must not change until it settles. An urgent job (a reader waits for it) goes before
   * the others queued.
   */
  verifyRun(run: StoredRun, urgent = false): Promise<VerifiedRun> {
    return this.enqueue(run.where, () => this.verify(run), urgent);
  }

  /** A run read from a blob file, verified and written into its cache file by one job (verifyBlobRange). */
  verifyBlobRange(run: BlobRangeRun, urgent = false): Promise<VerifiedBlobRange> {
    return this.enqueue(run.where, () => verifyBlobRange(run), urgent);
  }

  private enqueue<T>(where: readonly string[], start: () => Promise<T>, urgent: boolean): Promise<T> {
    if (this.closed) return Promise.reject(new NydusError('chunk verification stopped: the daemon is closing', EIO));
    return new Promise<T>((resolve, reject) => {
      const job: Job = { where, start, resolve: resolve as (r: unknown) => void, reject };
      if (urgent) this.queue.unshift(job);
      else this.queue.push(job);
      this.next();
    });
  }

  /** Refuses new jobs and those still queued; jobs on the thread pool finish (they cannot be stopped). */
  close(): void {
    this.closed = true;
    for (const job of this.queue.splice(0)) job.reject(new NydusError('chunk verification stopped: the daemon is closing', EIO));
  }
}
