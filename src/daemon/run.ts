/**
 * nydusd's two processes. The supervisor opens /dev/cachefiles, binds the cache and keeps that fd for
 * its whole life; the worker it spawns (with the fd inherited) serves the kernel and the API. When the
 * worker dies (crash, kill -9) the supervisor starts a new one, which sends `restore` so the kernel
 * resends the requests that were in flight and reopens objects: mounts survive a daemon crash.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { CachefilesDevice } from '../../native/fscache/index.ts';
import { NydusError } from '../../erofs/errors.ts';
import { startApi } from './api.ts';
import { ImageRegistry } from './daemon.ts';
import { OnDemandSession } from './ondemand.ts';
import { DaemonState } from './state.ts';
import { VerifyPool } from './verify-pool.ts';
import { makeLogger } from './log.ts';
import os from 'node:os';

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
}

const WORKER_FD_ENV = 'NYDUSD_WORKER_FD';
const RESTART_ENV = 'NYDUSD_WORKER_RESTART';
const WORKER_MIN_LIFE_MS = 3000;
const WORKER_MAX_QUICK_DEATHS = 5;

export function isWorker(): boolean {
  return process.env[WORKER_FD_ENV] !== undefined;
}

export async function runSupervisor(opts: DaemonOptions, argv: string[]): Promise<void> {
  const log = makeLogger(opts.logLevel, opts.logFile, opts.logRotationSize);
  let dev: CachefilesDevice;
  try {
    dev = CachefilesDevice.open(path.resolve(opts.fscacheDir), opts.tag);
  } catch (e) {
    throw new NydusError(`cannot bind the fscache cache at ${opts.fscacheDir}: ${(e as Error).message}`);
  }
  log.info({ dir: opts.fscacheDir, tag: opts.tag }, 'cachefiles bound in on-demand mode');
  let child: ChildProcess | null = null;
  let stopping = false;
  let restarts = 0;
  let quickDeaths = 0;
  let startedAt = 0;
  const start = () => {
    startedAt = Date.now();
    child = spawn(process.execPath, [...process.execArgv, ...argv], {
      stdio: ['ignore', 'inherit', 'inherit', dev.fd],
      // Cache-file writes run on libuv's pool (O_DIRECT waits for the disk): size it for the threads.
      env: {
        ...process.env, [WORKER_FD_ENV]: '3', [RESTART_ENV]: String(restarts),
        UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? String(Math.max(4, opts.threads * 2)),
      },
    });
    child.on('exit', (code, signal) => {
      child = null;
      if (stopping) {
        dev.close();
        process.exit(0);
      }
      restarts++;
      // A worker that cannot even start (bad work dir, broken install) must not be restarted forever.
      quickDeaths = Date.now() - startedAt < WORKER_MIN_LIFE_MS ? quickDeaths + 1 : 0;
      if (quickDeaths >= WORKER_MAX_QUICK_DEATHS) {
        log.fatal({ code, signal, restarts }, 'worker keeps dying right after start; giving up');
        dev.close();
        process.exit(1);
      }
      log.error({ code, signal, restarts }, 'worker died; starting a new one');
      setTimeout(start, 200 * 2 ** quickDeaths);
    });
  };
  const stop = () => {
    if (stopping) return;
    stopping = true;
    if (child) child.kill('SIGTERM');
    else {
      dev.close();
      process.exit(0);
    }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  start();
}

export async function runWorker(opts: DaemonOptions): Promise<void> {
  const log = makeLogger(opts.logLevel, opts.logFile, opts.logRotationSize);
  const dev = CachefilesDevice.fromFd(Number(process.env[WORKER_FD_ENV]));
  const state = new DaemonState(path.join(opts.fscacheDir, 'nydus-ts'));
  // Verification threads: the event loop stays free for the kernel's requests.
  const pool = new VerifyPool(Math.max(1, Math.min(os.availableParallelism(), opts.threads)), {
    onFatal: (err) => {
      log.fatal({ err: err.message }, 'cannot verify chunks any more; exiting');
      process.exit(1);
    },
  });
  const registry = new ImageRegistry(state, log, pool, { cacheDir: opts.fscacheDir });
  registry.restore();
  const session = new OnDemandSession(dev, registry, state, log, opts.threads);
  dev.onMessage((msg) => session.handle(msg), (err) => log.warn({ err: err.message }, 'bad message from the kernel'));
  if (Number(process.env[RESTART_ENV] ?? 0) > 0) {
    dev.restore();
    log.info('restarted: asked the kernel to resend pending requests');
  }
  const server = await startApi(opts.apiSock, { id: opts.id, registry, state, session: () => session, log });
  log.info({ apisock: opts.apiSock }, 'nydusd ready');
  const shutdown = () => {
    log.info('shutting down');
    server.close();
    dev.stopMessages();
    session.closeAll();
    void registry.close().finally(() => {
      state.close();
      process.exit(0);
    });
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}
