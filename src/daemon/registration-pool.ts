/**
 * Image registrations on worker threads, so that the event loop that answers the kernel's READs
 * never waits for a bootstrap to be read and validated. The work is bounded: a few workers at once
 * (the rest wait in line), each registration within a time and a heap limit; a worker that exceeds
 * either is ended and the registration refused with an error saying which bound it hit.
 *
 * A small bootstrap (INLINE_PLAN_MAX_BYTES) that finds no worker up is planned at once on the
 * daemon's thread: a new worker takes some 60 ms to come up (an empty one as long, on the bench
 * host), which a container's first mount would wait for; the bench's 24 KiB bootstrap of 60 files is
 * planned in 2-9 ms (warm, cold). So is the daemon's first image up to FIRST_IMAGE_INLINE_PLAN_MAX_BYTES
 * (its caller says which image is the first, `firstImage`): nothing is served before it, so no READ waits for the
 * thread, and its work is bounded as a worker's is but for the clock: linear in the bootstrap's size,
 * the heap watched by the gate (HeapRoom).
 *
 * No worker is started ahead of need. A daemon starts for a container, whose image is registered and
 * mounted as soon as the API answers; a thread started then took 70-110 ms of CPU on the bench host
 * and 1 s in the TCG guest, beside the first mount's reads when the bootstrap was planned at once.
 * At the lowest priority it did as much harm in the guest (a vCPU busy at any priority is a host CPU
 * the emulator's I/O does not get). A large bootstrap's first registration waits for its worker.
 */
import fs from 'node:fs';
import type { Worker } from 'node:worker_threads';
import { FormatError, NydusError } from '../../erofs/errors.ts';
import { ConfigError } from './config.ts';
import { type RegistrationPlan, type RegistrationRequest, planRegistration } from './registration.ts';
import type { TraceFiles, TraceFilesRequest } from './trace-files.ts';
import { startWorker } from './worker-thread.ts';

/** The largest bootstrap planned on the daemon's thread when no worker is up (module comment). */
export const INLINE_PLAN_MAX_BYTES = 64 << 10;
/**
 * The same for the daemon's first image, when it serves nothing yet. On the bench host a new
 * worker took 105-141 ms before it could start a job (a bare node worker 75-78 ms to come up); the
 * Debian rootfs bootstrap (1.2 MiB, 6,800 inodes) took 240-360 ms in a new worker, 134-184 ms in one
 * already up.
 */
export const FIRST_IMAGE_INLINE_PLAN_MAX_BYTES = 4 << 20;

export interface RegistrationPoolOptions {
  /** Registrations at once (default 1). */
  workers?: number;
  /** Time one registration may take, queueing excluded (default 60 s). */
  timeoutMs?: number;
  /** JS heap of a registration worker (default 2048 MiB). */
  maxHeapMb?: number;
  /** An idle worker ends after this long (default 10 s). */
  idleMs?: number;
}

/** What a registration worker is asked: a registration plan, or an access trace mapped to files. */
export type RegistrationJob = { kind: 'plan'; req: RegistrationRequest } | { kind: 'traceFiles'; req: TraceFilesRequest };

interface Job {
  msg: RegistrationJob;
  resolve: (result: unknown) => void;
  reject: (e: Error) => void;
}

interface WorkerError {
  name: string;
  message: string;
  errno?: number;
}

/** The worker's error as the daemon would have thrown it on its own thread: same class and message. */
function revive(e: WorkerError): Error {
  if (e.name === 'FormatError') return new FormatError(e.message);
  if (e.name === 'ConfigError') return new ConfigError(e.message);
  if (e.name === 'NydusError') return new NydusError(e.message, e.errno);
  return new Error(e.message);
}

export class RegistrationPool {
  private readonly idle: Worker[] = [];
  private readonly queue: Job[] = [];
  private readonly idleTimers = new Map<Worker, NodeJS.Timeout>();
  private alive = 0;
  private closed = false;
  private readonly workers: number;
  readonly timeoutMs: number;
  readonly maxHeapMb: number;
  private readonly idleMs: number;

  constructor(opts: RegistrationPoolOptions = {}) {
    this.workers = Math.max(1, opts.workers ?? 1);
    this.timeoutMs = opts.timeoutMs ?? 60_000;
    this.maxHeapMb = opts.maxHeapMb ?? 2048;
    this.idleMs = opts.idleMs ?? 10_000;
  }

  /** Worker threads alive (started, working or idle). */
  get threads(): number {
    return this.alive;
  }

  /**
   * Plans a registration on a worker (a small one, or the daemon's first image, maybe at once: module
   * comment); rejects with the gate's own error for a bad image.
   */
  plan(req: RegistrationRequest, firstImage = false): Promise<RegistrationPlan> {
    // (An idle worker has answered a job, so it is up: workers start only for jobs.)
    const inlineMax = firstImage ? FIRST_IMAGE_INLINE_PLAN_MAX_BYTES : INLINE_PLAN_MAX_BYTES;
    if (!this.closed && this.idle.length === 0 && smallBootstrap(req.metadataPath, inlineMax)) {
      try {
        return Promise.resolve(planRegistration(req));
      } catch (e) {
        return Promise.reject(e as Error);
      }
    }
    return this.submit({ kind: 'plan', req }) as Promise<RegistrationPlan>;
  }

  /** Maps an access trace to files on a worker (the bootstrap read again through the gate), within the same bounds. */
  traceFiles(req: TraceFilesRequest): Promise<TraceFiles> {
    return this.submit({ kind: 'traceFiles', req }) as Promise<TraceFiles>;
  }

  private submit(msg: RegistrationJob): Promise<unknown> {
    if (this.closed) return Promise.reject(new NydusError('the daemon is stopping: no more registrations'));
    return new Promise((resolve, reject) => {
      this.queue.push({ msg, resolve, reject });
      this.next();
    });
  }

  private next(): void {
    while (this.queue.length) {
      let w = this.idle.pop();
      if (!w) {
        if (this.alive >= this.workers) return;
        w = this.spawn();
      }
      clearTimeout(this.idleTimers.get(w));
      this.idleTimers.delete(w);
      this.run(w, this.queue.shift()!);
    }
  }

  private spawn(): Worker {
    this.alive++;
    const w = startWorker('register-worker', { resourceLimits: { maxOldGenerationSizeMb: this.maxHeapMb } });
    // Errors are the running job's (below); one that comes after its job settled has no one to tell.
    w.on('error', () => undefined);
    w.once('exit', () => {
      this.alive--;
      clearTimeout(this.idleTimers.get(w));
      this.idleTimers.delete(w);
      const i = this.idle.indexOf(w);
      if (i >= 0) this.idle.splice(i, 1);
      this.next();
    });
    return w;
  }

  private run(w: Worker, job: Job): void {
    const file = job.msg.req.metadataPath;
    const what = job.msg.kind === 'plan' ? 'registration' : 'access trace mapping';
    // Held while it works (a caller awaiting the plan keeps the process alive), let go when idle.
    w.ref();
    let done = false;
    const finish = (settle: () => void, keep: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      w.off('message', onMessage);
      w.off('error', onError);
      w.off('exit', onExit);
      settle();
      if (keep && !this.closed) this.park(w);
      else void w.terminate();
    };
    const onMessage = (m: { result?: unknown; error?: WorkerError }) => {
      finish(() => (m.error ? job.reject(revive(m.error)) : job.resolve(m.result)), true);
    };
    const onError = (e: Error & { code?: string }) => {
      const why = e.code === 'ERR_WORKER_OUT_OF_MEMORY'
        ? `needs more than the ${this.maxHeapMb} MiB a registration may use`
        : `failed on its worker thread: ${e.message}`;
      finish(() => job.reject(new NydusError(`${what} of bootstrap ${file} ${why}; refused`)), false);
    };
    const onExit = (code: number) => finish(() => job.reject(new NydusError(`${what} of bootstrap ${file}: its worker thread exited (code ${code})`)), false);
    const timer = setTimeout(() => {
      finish(() => job.reject(new NydusError(`${what} of bootstrap ${file} took longer than ${this.timeoutMs / 1000} s, the bound of one registration; refused`)), false);
    }, this.timeoutMs);
    w.on('message', onMessage);
    w.on('error', onError);
    w.on('exit', onExit);
    w.postMessage(job.msg);
  }

  private park(w: Worker): void {
    w.unref();
    this.idle.push(w);
    this.idleTimers.set(w, setTimeout(() => {
      // Out of the idle list first: a job must never go to a worker that is ending.
      const i = this.idle.indexOf(w);
      if (i >= 0) this.idle.splice(i, 1);
      void w.terminate();
    }, this.idleMs).unref());
    this.next();
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.queue.splice(0)) job.reject(new NydusError('the daemon is stopping: no more registrations'));
    const all = [...this.idle];
    this.idle.length = 0;
    await Promise.all(all.map((w) => w.terminate()));
  }
}

/** Whether a bootstrap is a regular file of at most `max` bytes (anything else goes to a worker, whose error it gets). */
function smallBootstrap(file: string, max: number): boolean {
  try {
    const st = fs.statSync(file);
    return st.isFile() && st.size <= max;
  } catch {
    return false;
  }
}

let shared: RegistrationPool | null = null;

/** The process's registration pool for registries not given one (tests, tools): one worker, made on first use. */
export function sharedRegistrationPool(): RegistrationPool {
  return (shared ??= new RegistrationPool());
}
