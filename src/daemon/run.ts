/**
 * nydusd's two processes. The supervisor opens /dev/cachefiles, binds the cache and keeps that fd for
 * its whole life; the worker it spawns (with the fd inherited) serves the kernel and the API (serve.ts).
 * When the worker dies (crash, kill -9) the supervisor starts a new one, which sends `restore` so the
 * kernel resends the requests that were in flight and reopens objects: mounts survive a daemon crash.
 * This module is the supervisor's whole code: it starts its worker without loading the daemon's.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { CachefilesDevice, isSystemError } from '../../native/fscache/index.ts';
import { FanotifyGroup } from '../../native/fscache/fanotify.ts';
import { NydusError } from '../../erofs/errors.ts';
import { makeLogger } from './log.ts';

export interface DaemonOptions {
  fscacheDir: string;
  tag: string;
  threads: number;
  apiSock: string;
  logLevel: string;
  logFile?: string;
  /** MiB; 0 never rotates. */
  logRotationSize: number;
  id: string;
  /** nydus-snapshotter's supervisor socket: it keeps the state and the device fd (sendfd, takeover). */
  supervisor?: string;
}

const WORKER_FD_ENV = 'NYDUSD_WORKER_FD';
const RESTART_ENV = 'NYDUSD_WORKER_RESTART';
/** Set for a worker started while the daemon stops: it takes over, then stops at once. */
const STOP_ENV = 'NYDUSD_WORKER_STOP';
/** A worker exiting with this code cannot work with what it was given (a bad image or config): no restart. */
export const WORKER_EXIT_FATAL = 78;
const WORKER_MIN_LIFE_MS = 3000;
const WORKER_MAX_QUICK_DEATHS = 5;

export function isWorker(): boolean {
  return process.env[WORKER_FD_ENV] !== undefined;
}

/** The kernel fd a supervisor keeps for its workers: /dev/cachefiles, or a fanotify group. */
export interface HeldFd {
  fd: number;
  close(): void;
}

/** Options the supervisor itself uses. */
export type SupervisorOptions = Pick<DaemonOptions, 'logLevel' | 'logFile' | 'logRotationSize' | 'threads'>;

/** The worker's side: the kernel fd its supervisor holds, and whether an earlier worker died. */
export function inheritedKernelFd(): { fd: number; restarted: boolean; stopAtOnce: boolean } {
  return { fd: Number(process.env[WORKER_FD_ENV]), restarted: Number(process.env[RESTART_ENV] ?? 0) > 0, stopAtOnce: process.env[STOP_ENV] === '1' };
}

export async function runSupervisor(opts: SupervisorOptions & Partial<DaemonOptions>, argv: string[], held?: HeldFd): Promise<void> {
  const log = makeLogger(opts.logLevel, opts.logFile, opts.logRotationSize);
  const dev = held ?? openDevice(opts as DaemonOptions);
  if (!held) log.info({ dir: opts.fscacheDir, tag: opts.tag }, 'cachefiles bound in on-demand mode');
  let child: ChildProcess | null = null;
  let stopping = false;
  let restarts = 0;
  let quickDeaths = 0;
  /** The next worker's start, while one is due (after a worker died). */
  let restartTimer: NodeJS.Timeout | null = null;
  let startedAt = 0;
  const start = () => {
    restartTimer = null;
    startedAt = Date.now();
    // 2 MiB semi-spaces in every isolate of the worker (its threads too): V8's default young
    // generation would hold 30-40 MiB more than the daemon ever uses (peak RSS of a rootfs read).
    const v8Flags = process.execArgv.some((a) => a.startsWith('--max-semi-space-size')) ? [] : ['--max-semi-space-size=2'];
    // Functions are optimized after 20 times V8's default work (67584): the burst of JS around a
    // container's first reads made TurboFan compile on a third of the worker's CPU (host Debian read:
    // worker CPU 1.08 s -> 0.85-0.90 s, peak RSS 105-109 -> 97-101 MiB; the wall time moved within
    // the host's noise), while code that stays hot in a daemon's long life is still optimized.
    if (!process.execArgv.some((a) => a.startsWith('--interrupt-budget'))) v8Flags.push(`--interrupt-budget=${20 * 67584}`);
    child = spawn(process.execPath, [...process.execArgv, ...v8Flags, ...argv], {
      stdio: ['ignore', 'inherit', 'inherit', dev.fd],
      // Cache-file writes run on libuv's pool (O_DIRECT waits for the disk): size it for the threads.
      env: {
        ...process.env, [WORKER_FD_ENV]: '3', [RESTART_ENV]: String(restarts), [STOP_ENV]: stopping ? '1' : '0',
        UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? String(Math.max(4, opts.threads * 2)),
        // Chunk buffers (up to a few MiB, made and dropped all the time) come from malloc's heap and
        // are reused, not fresh mmap()s: touching fresh pages cost more than decompressing into them
        // (zstd at 150 MiB/s into fresh memory, 800 MiB/s into reused memory, on the bench host).
        MALLOC_MMAP_THRESHOLD_: process.env.MALLOC_MMAP_THRESHOLD_ ?? String(32 << 20),
        MALLOC_TRIM_THRESHOLD_: process.env.MALLOC_TRIM_THRESHOLD_ ?? String(64 << 20),
        // ...and that heap in transparent huge pages where the kernel offers them (madvise mode, the
        // usual default): a fault per 2 MiB, not per 4 KiB. Host big-file read: 0.43 s -> 0.25 s, the
        // worker's CPU 0.45 s -> 0.21 s, same peak RSS.
        GLIBC_TUNABLES: withTunable(process.env.GLIBC_TUNABLES, 'glibc.malloc.hugetlb', '1'),
      },
    });
    child.on('exit', (code, signal) => {
      child = null;
      quickDeaths = Date.now() - startedAt < WORKER_MIN_LIFE_MS ? quickDeaths + 1 : 0;
      if (stopping && code !== 0 && code !== WORKER_EXIT_FATAL && quickDeaths < WORKER_MAX_QUICK_DEATHS) {
        // Died before it stopped cleanly: its mounts may still be up (fanotify), and once the group
        // closes with this process their unfetched ranges would read as zeros. The next worker
        // takes them over and stops: unmounted, or served until they are free.
        restarts++;
        log.error({ code, signal, restarts }, 'worker died while stopping; a new one takes over to stop');
        restartTimer = setTimeout(start, 200);
        return;
      }
      if (stopping) {
        if (code !== 0) log.fatal({ code, signal, restarts }, 'workers keep dying while stopping; mounts they served may be left behind');
        dev.close();
        process.exit(code === 0 ? 0 : 1);
      }
      if (code === WORKER_EXIT_FATAL) {
        log.fatal({ code }, 'worker cannot serve what it was given; stopping');
        dev.close();
        process.exit(1);
      }
      restarts++;
      // A worker that cannot even start (bad work dir, broken install) must not be restarted forever.
      if (quickDeaths >= WORKER_MAX_QUICK_DEATHS) {
        log.fatal({ code, signal, restarts }, 'worker keeps dying right after start; giving up');
        dev.close();
        process.exit(1);
      }
      log.error({ code, signal, restarts }, 'worker died; starting a new one');
      restartTimer = setTimeout(start, 200 * 2 ** quickDeaths);
    });
  };
  const stop = () => {
    if (stopping) return;
    stopping = true;
    if (child) child.kill('SIGTERM');
    else if (restartTimer) {
      // A worker died and the next is due: it starts now, takes the mounts over and stops.
      clearTimeout(restartTimer);
      start();
    } else {
      dev.close();
      process.exit(0);
    }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  start();
}

/** The fanotify mode supervisor's group (run-fanotify.ts serves it): a clear error where the kernel has no pre-content events. */
export function openFanotifyGroup(): HeldFd {
  try {
    return FanotifyGroup.open();
  } catch (e) {
    throw new NydusError(`cannot start fanotify mode: ${(e as Error).message}`);
  }
}

/** Opens and binds the device; a failure keeps the system error's code as `cause` (EBUSY matters). */
export function openDevice(opts: DaemonOptions): CachefilesDevice {
  try {
    return CachefilesDevice.open(path.resolve(opts.fscacheDir), opts.tag);
  } catch (e) {
    throw new NydusError(`cannot bind the fscache cache at ${opts.fscacheDir}: ${(e as Error).message}`, undefined, isSystemError(e) ? e.code : undefined);
  }
}

/** GLIBC_TUNABLES with `name=value` added, unless the environment sets that tunable already. */
export function withTunable(tunables: string | undefined, name: string, value: string): string {
  const list = (tunables ?? '').split(':').filter(Boolean);
  return list.some((t) => t.split('=')[0] === name) ? list.join(':') : [...list, `${name}=${value}`].join(':');
}
