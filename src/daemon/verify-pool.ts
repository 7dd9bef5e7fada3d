/**
 * Decompression and digest checks of fetched chunks on libuv's thread pool (the addon's
 * verifyRunNative), so that a daemon uses every core and its event loop keeps answering the kernel
 * while chunks are verified. A job is a run of chunks read in one piece. At most `size` jobs run at
 * once: the rest wait here, where a reader's job can still go first, and libuv's threads stay free
 * for the file reads and writes the daemon makes meanwhile.
 *
 * Three kinds of job, queued in this order: urgent (a reader waits for it), normal (fetched ahead of
 * a reader, or a prefetch table's files), background (the rest of a blob, prefetched). A background
 * job runs at the lowest CPU priority (the addon's, StoredRun.background): it takes the CPUs nobody
 * else wants and yields them at once to a container that starts and to the jobs a reader waits for.
 * Measured in the guest (2 vCPUs, bench/ondemand.ts, medians of 3 runs), the first `chroot <mnt>
 * /bin/ls /` of the Debian rootfs with its prefetch table, mount included, took 1.37-2.14x the loop
 * mount's with the rest of the blob fetched at normal priority, 1.07-1.47x at the lowest; keeping a
 * thread from background jobs instead cost the big workload's cold read with prefetch on 0.81x -> 0.51x.
 *
 * So background jobs take at most `size` threads, and a job a reader waits for never waits for them:
 * it may run beside them, one more than `size` (at nice 19 they cost it next to nothing). A
 * background job already running when a reader comes to wait for one of its chunks gets its thread's
 * own priority back (promote): at nice 19 it would wait behind every other task of the machine.
 */
import { NydusError, EIO } from '../../erofs/errors.ts';
import { fscacheBinding } from '../../native/fscache/index.ts';
import { type BlobRangeRun, type StoredRun, type VerifiedBlobRange, type VerifiedRun, verifyBlobRange, verifyRunNative } from '../blob/verify.ts';

/** How soon a job is wanted (module comment). */
export type JobPriority = 'urgent' | 'normal' | 'background';

interface Job {
  /** Names the job's chunks (promote). */
  where: readonly string[];
  priority: JobPriority;
  /**
   * `background`: whether it runs as background work (its priority when it starts), and if so where
   * its thread is told (StoredRun.background).
   */
  start: (background: false | Int32Array) => Promise<unknown>;
  /** A background job's thread while it runs lowered (StoredRun.background). */
  told?: Int32Array;
  resolve: (r: unknown) => void;
  reject: (e: Error) => void;
}

export class VerifyPool {
  private readonly queue: Job[] = [];
  private readonly running = new Set<Job>();
  private runningForeground = 0;
  private closed = false;

  /** `verify`: how one job is verified (tests slow it down to see the order). */
  constructor(private readonly size: number, private readonly verify: (run: StoredRun) => Promise<VerifiedRun> = verifyRunNative) {}

  private next(): void {
    while (this.queue.length) {
      const job = this.queue[0];
      const background = job.priority === 'background';
      // (Queued in priority order: when the first cannot start, none after it can.)
      if (background ? this.running.size >= this.size : this.runningForeground >= this.size || this.running.size > this.size) return;
      this.queue.shift();
      this.running.add(job);
      if (!background) this.runningForeground++;
      let verified: Promise<unknown>;
      try {
        if (background) job.told = new Int32Array(2);
        verified = job.start(job.told ?? false);
      } catch (e) {
        verified = Promise.reject(e);
      }
      verified.then(job.resolve, job.reject).finally(() => {
        this.running.delete(job);
        if (!background) this.runningForeground--;
        this.next();
      });
    }
  }

  /**
   * A job still queued goes first (a reader waits for one of its chunks), and a background job that
   * started already gets its thread's own priority back (or, still waiting for a libuv thread, never
   * lowers it); false when neither was done (the chunk's job is done, was raised already, or was
   * never asked for).
   */
  promote(where: string): boolean {
    const i = this.queue.findIndex((j) => j.where.includes(where));
    if (i < 0) {
      for (const job of this.running) {
        if (job.told && job.where.includes(where)) {
          const told = job.told;
          job.told = undefined;
          return fscacheBinding().raiseBackgroundThread(told);
        }
      }
      return false;
    }
    const [job] = this.queue.splice(i, 1);
    job.priority = 'urgent';
    this.queue.unshift(job);
    return true;
  }

  /**
   * Verifies a run of chunks; one that fails has its message in `errors` and zeros in the output.
   * `run.stored` must not change until it settles. Queued by `priority` (module comment).
   */
  verifyRun(run: StoredRun, priority: JobPriority = 'normal'): Promise<VerifiedRun> {
    return this.enqueue(run.where, (background) => this.verify(background ? { ...run, background } : run), priority);
  }

  /** A run read from a blob file, verified and written into its cache file by one job (verifyBlobRange). */
  verifyBlobRange(run: BlobRangeRun, priority: JobPriority = 'normal'): Promise<VerifiedBlobRange> {
    return this.enqueue(run.where, (background) => verifyBlobRange(background ? { ...run, background } : run), priority);
  }

  private enqueue<T>(where: readonly string[], start: (background: false | Int32Array) => Promise<T>, priority: JobPriority): Promise<T> {
    if (this.closed) return Promise.reject(new NydusError('chunk verification stopped: the daemon is closing', EIO));
    return new Promise<T>((resolve, reject) => {
      const job: Job = { where, priority, start, resolve: resolve as (r: unknown) => void, reject };
      if (priority === 'urgent') this.queue.unshift(job);
      else if (priority === 'background') this.queue.push(job);
      else {
        // After the urgent and normal jobs queued, before the background ones.
        const i = this.queue.findIndex((j) => j.priority === 'background');
        this.queue.splice(i < 0 ? this.queue.length : i, 0, job);
      }
      this.next();
    });
  }

  /** Refuses new jobs and those still queued; jobs on the thread pool finish (they cannot be stopped). */
  close(): void {
    this.closed = true;
    for (const job of this.queue.splice(0)) job.reject(new NydusError('chunk verification stopped: the daemon is closing', EIO));
  }
}
