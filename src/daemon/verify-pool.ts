/**
 * Decompression and digest checks of fetched chunks on worker threads, so that a daemon uses every
 * core and its event loop keeps answering the kernel while chunks are verified. A job is a run of
 * chunks read in one piece (one message each way, however many chunks); the buffers move to the
 * worker and back without copies.
 */
import type { Worker } from 'node:worker_threads';
import { startWorker } from './worker-thread.ts';
import { NydusError, EIO } from '../../erofs/errors.ts';
import { type StoredRun, type VerifiedRun, verifyRun } from '../blob/verify.ts';

interface Job {
  run: StoredRun;
  resolve: (r: VerifiedRun) => void;
  reject: (e: Error) => void;
}

export interface VerifyPoolOptions {
  /** Worker failures tolerated within `windowMs` before the pool gives up for good. */
  maxFailures?: number;
  windowMs?: number;
  /** Called once when the pool gives up (the daemon exits: it cannot verify chunks any more). */
  onFatal?: (err: NydusError) => void;
  /** Starts a worker (tests give a failing one). */
  start?: () => Worker;
}

export class VerifyPool {
  private readonly idle: Worker[] = [];
  private readonly busy = new Map<Worker, Job>();
  private readonly queue: Job[] = [];
  private readonly failures: number[] = [];
  private fatal: NydusError | null = null;
  /** Workers started in all, replacements included. */
  started = 0;

  /**
   * Workers are started by start() (the daemon calls it once its API listens: starting them delays
   * nothing the snapshotter waits for) or at the latest by the first verification.
   */
  private unstarted: number;

  constructor(size: number, private readonly opts: VerifyPoolOptions = {}) {
    this.unstarted = size;
  }

  start(): void {
    if (this.fatal) return;
    for (; this.unstarted > 0; this.unstarted--) this.idle.push(this.spawn());
  }

  private spawn(): Worker {
    this.started++;
    const w = (this.opts.start ?? (() => startWorker('verify-worker')))();
    w.unref();
    w.on('message', (m: VerifiedRun | { error: string; errno?: number }) => {
      const job = this.busy.get(w)!;
      this.busy.delete(w);
      if ('error' in m) job.reject(new NydusError(m.error, m.errno ?? EIO));
      else job.resolve(m);
      this.idle.push(w);
      this.next();
    });
    w.on('error', (e) => {
      const job = this.busy.get(w);
      this.busy.delete(w);
      const i = this.idle.indexOf(w);
      if (i >= 0) this.idle.splice(i, 1);
      job?.reject(new NydusError(`chunk verification worker failed: ${e.message}`, EIO));
      if (this.fatal) return;
      // A worker that cannot even load fails at once, every time: replace failed workers only
      // while failures stay rare, then fail every verification with one clear error.
      const now = Date.now();
      this.failures.push(now);
      while (this.failures.length && now - this.failures[0] > (this.opts.windowMs ?? 10_000)) this.failures.shift();
      if (this.failures.length > (this.opts.maxFailures ?? 5)) {
        this.giveUp(new NydusError(`chunk verification workers keep failing (${this.failures.length} failures in a row; last: ${e.message})`, EIO));
        return;
      }
      this.idle.push(this.spawn());
      this.next();
    });
    return w;
  }

  private giveUp(err: NydusError): void {
    this.fatal = err;
    for (const job of this.queue.splice(0)) job.reject(err);
    for (const w of [...this.idle, ...this.busy.keys()]) void w.terminate();
    this.idle.length = 0;
    this.opts.onFatal?.(err);
  }

  private next(): void {
    while (this.idle.length && this.queue.length) {
      const w = this.idle.pop()!;
      const job = this.queue.shift()!;
      this.busy.set(w, job);
      const { stored } = job.run;
      // Shared memory (the localfs backend reads into it) is seen by the worker where it is; a buffer
      // that owns its memory moves to the worker as it is; a view into a larger one is copied out.
      if (stored.buffer instanceof SharedArrayBuffer) {
        w.postMessage(job.run);
        continue;
      }
      const own = stored.byteOffset === 0 && stored.byteLength === stored.buffer.byteLength
        ? stored : new Uint8Array(new Uint8Array(stored.buffer, stored.byteOffset, stored.byteLength));
      w.postMessage({ ...job.run, stored: own }, [own.buffer as ArrayBuffer]);
    }
  }

  /**
   * A job still queued goes first (a reader waits for one of its chunks); false when no queued job
   * has that chunk (running, done, or never asked for).
   */
  promote(where: string): boolean {
    const i = this.queue.findIndex((j) => j.run.where.includes(where));
    if (i < 0) return false;
    if (i > 0) this.queue.unshift(...this.queue.splice(i, 1));
    return true;
  }

  /**
   * Verifies a run of chunks; one that fails has its message in `errors` and zeros in the output.
   * Takes ownership of `run.stored` when it owns its memory (the caller must not reuse it). An urgent
   * job (a reader waits for it) goes before the others queued.
   */
  verifyRun(run: StoredRun, urgent = false): Promise<VerifiedRun> {
    if (this.fatal) return Promise.reject(this.fatal);
    this.start();
    if (this.idle.length + this.busy.size === 0) return Promise.resolve().then(() => verifyRun(run));
    return new Promise((resolve, reject) => {
      if (urgent) this.queue.unshift({ run, resolve, reject });
      else this.queue.push({ run, resolve, reject });
      this.next();
    });
  }

  async close(): Promise<void> {
    await Promise.all([...this.idle, ...this.busy.keys()].map((w) => w.terminate()));
  }
}
