/**
 * nydusd's two processes. The supervisor opens /dev/cachefiles, binds the cache and keeps that fd for
 * its whole life; the worker it spawns (with the fd inherited) serves the kernel and the API (serve.ts).
 * When the worker dies (crash, kill -9) the supervisor starts a new one, which sends `restore` so the
 * kernel resends the requests that were in flight and reopens objects: mounts survive a daemon crash.
 * This module is the supervisor's whole code: it starts its worker without loading the daemon's.
 *
 * A worker whose supervisor died (SIGKILL, the OOM killer) starts a new one for itself: the adoptive
 * supervisor (watchSupervisor). It holds the same kernel fd and lock (inherited from the worker), is
 * told how the worker ended through a pipe (the worker is not its child), and from then on is the
 * daemon's supervisor: a worker that dies is replaced, a stop signal stops the daemon.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { followCgroups } from './cgroup-follow.ts';
import { ApiRelay, workerSocketFor } from './api-relay.ts';
import { PARK_READY, ParkedConnections, ipcKeeper, isParkReady } from './parked-connections.ts';
import { fdOf } from './libuv-handle.ts';
import { socketLiveness } from './unix-socket.ts';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { CachefilesDevice, fscacheBinding, isSystemError } from '../../native/fscache/index.ts';
import { FanotifyGroup, closeFd, umountPath } from '../../native/fscache/fanotify.ts';
import { NydusError } from '../../erofs/errors.ts';
import { PendingEventJournal } from './frontend/fanotify-journal.ts';
import { ensureDirectory, makeLogger } from './log.ts';

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
/** The fd of the daemon directory's lock in a worker, when it has one (fanotify mode). */
const LOCK_FD_ENV = 'NYDUSD_WORKER_LOCK_FD';
/** Where a worker serves the API its supervisor relays (api-relay.ts). */
const WORKER_API_ENV = 'NYDUSD_WORKER_API';
/** The fd of the API's listening socket in a worker (held for an adoptive supervisor) and in an adoptive supervisor. */
const API_FD_ENV = 'NYDUSD_API_FD';
const WORKER_API_FD = 5;
const ADOPTIVE_API_FD = 6;
/** The fds of the idle API connections a worker held for its adoptive supervisor (parked-connections.ts), comma-separated. */
const PARKED_FDS_ENV = 'NYDUSD_PARKED_FDS';
/** The first of them in an adoptive supervisor (its IPC channel to the worker is fd 7). */
const ADOPTIVE_PARKED_FD = 8;
/** Set for an adoptive supervisor: the pid of the worker it adopts. */
const ADOPT_ENV = 'NYDUSD_ADOPT';
/** An adoptive supervisor's end of the pipe its worker writes its exit code to (EOF alone: it died). */
const ADOPTED_STATUS_FD = 5;
/** A worker exiting with this code cannot work with what it was given (a bad image or config): no restart. */
export const WORKER_EXIT_FATAL = 78;
const WORKER_MIN_LIFE_MS = 3000;
/** Where a worker (and an adoptive supervisor) has the kernel fd, and the directory's lock when there is one. */
const KERNEL_FD = 3;
const LOCK_FD = 4;

/** Quick deaths in a row once a process started at `startedAt` died: one more if it lived less than WORKER_MIN_LIFE_MS, else none. */
function quickDeathsAfter(startedAt: number, before: number): number {
  return Date.now() - startedAt < WORKER_MIN_LIFE_MS ? before + 1 : 0;
}

/** How long before starting again a process that died after `quickDeaths` quick deaths in a row. */
const restartDelayMs = (quickDeaths: number) => 200 * 2 ** quickDeaths;
const WORKER_MAX_QUICK_DEATHS = 5;

export function isWorker(): boolean {
  return process.env[WORKER_FD_ENV] !== undefined;
}

/**
 * The idle API connections the supervisor parks in this worker (parked-connections.ts), for the
 * supervisor that adopts it. Taken from the moment the worker runs, before its start-up (restore,
 * the API, the mounts: seconds on a busy node): what the channel brings before a listener is lost
 * with it when the supervisor dies.
 */
const parked = new ParkedConnections();
if (isWorker() && process.send) parked.listen(process);

/**
 * Tells the supervisor that this worker may be given idle connections from now on. A fanotify worker
 * says so once it holds the fd numbers of its predecessor's unanswered events (run-fanotify.ts): a
 * parked socket received before could take one of those numbers and free it later, and a new event
 * given that number would be answered for the old one. A cachefiles worker says so as it starts.
 */
export function readyForParkedConnections(): void {
  if (!isWorker() || !process.send || !process.connected) return;
  try {
    process.send(PARK_READY, undefined, {}, () => { /* the supervisor is gone: nothing to park */ });
  } catch { /* closed meanwhile */ }
}

/** Where this worker serves the API of `apiSock`: the socket its supervisor relays that one to, or `apiSock` itself. */
export function workerApiSocket(apiSock: string): string {
  return process.env[WORKER_API_ENV] || apiSock;
}

/**
 * The supervisor's side of the API socket (api-relay.ts): listening at `apiSock`, or, in an adoptive
 * supervisor, on the listening socket its worker held for it.
 */
async function openApiRelay(apiSock: string, log: Logger): Promise<ApiRelay | null> {
  const inherited = process.env[API_FD_ENV];
  const parkedFds = (process.env[PARKED_FDS_ENV] ?? '').split(',').filter(Boolean).map(Number);
  const workerSock = process.env[WORKER_API_ENV] || workerSocketFor(apiSock);
  delete process.env[API_FD_ENV];
  delete process.env[PARKED_FDS_ENV];
  if (inherited === undefined) return ApiRelay.listen(apiSock, workerSock, log);
  try {
    return await ApiRelay.adopt(Number(inherited), apiSock, workerSock, log, parkedFds);
  } catch (e) {
    // The worker serves the kernel on, without an API, rather than without a supervisor.
    log.error({ err: (e as Error).message, apisock: apiSock }, 'cannot take over the API socket; the daemon serves on without its API: restart it');
    // The idle connections the worker held go (ApiRelay.adopt took none of them: the listening
    // socket failed first); the listening socket's fd is Node's, closed with its handle.
    for (const fd of parkedFds) {
      try {
        closeFd(fd);
      } catch { /* closed already */ }
    }
    return null;
  }
}

/** The kernel fd a supervisor keeps for its workers: /dev/cachefiles, or a fanotify group. */
export interface HeldFd {
  fd: number;
  close(): void;
  /** A lock on the daemon's directory (lockDaemonDir), inherited by each worker as its fd 4. */
  lockFd?: number;
  /**
   * Called before close() when the daemon ends without a worker that stopped cleanly (it gave up, or
   * a worker cannot serve what it was given): resolves once closing the fd can harm no reader.
   */
  giveUp?(log: Logger): Promise<void>;
}

/** Options the supervisor itself uses. */
export type SupervisorOptions = Pick<DaemonOptions, 'logLevel' | 'logFile' | 'logRotationSize' | 'threads'>;

/**
 * TERM, INT and QUIT stop a daemon process (`stop`); HUP is logged and ignored. Without handlers a
 * terminal's hangup (or a QUIT) ended the supervisor there and then: its worker served on with no one
 * to restart it, and a fanotify mount left by a dead worker reads its unfetched ranges as zeros.
 */
export function onStopSignals(stop: () => void, log: Logger): void {
  for (const s of ['SIGTERM', 'SIGINT', 'SIGQUIT'] as const) process.on(s, stop);
  process.on('SIGHUP', () => log.info('SIGHUP ignored: nydusd stops on SIGTERM, SIGINT or SIGQUIT'));
}

/** This process's parent when it started: a worker's supervisor. */
const parentAtStart = process.ppid;

/** The adoptive supervisor this worker started, once its own is gone (watchSupervisor). */
let adoptive: ChildProcess | null = null;

/**
 * A worker asked to exit asks its supervisor to stop the daemon: the adoptive one once there is one,
 * else the one it started with, only while that is still its parent (an orphaned worker's parent is
 * init or a subreaper, not a process to signal).
 */
export function stopSupervisor(): void {
  if (adoptive?.pid !== undefined && adoptive.exitCode === null && adoptive.signalCode === null) {
    adoptive.kill('SIGTERM');
    return;
  }
  if (process.ppid === parentAtStart && parentAtStart > 1) process.kill(parentAtStart, 'SIGTERM');
}

/** How often a worker looks whether its supervisor is still there (besides the kernel's word, watchSupervisor). */
const SUPERVISOR_CHECK_MS = 250;
/** How long a worker whose supervisor died waits for the end of what that one's channel still holds. */
const CHANNEL_DRAIN_MS = 200;
/** An adoptive supervisor that dies this many times, each within WORKER_MIN_LIFE_MS, is not started again. */
const ADOPTIVE_MAX_QUICK_DEATHS = 5;

/**
 * A worker whose supervisor died (SIGKILL, the OOM killer) would serve on with no one to start a
 * worker if it died too, and a fanotify mount's unfetched ranges would then read as zeros once the
 * last holder of the group was gone. So it starts an adoptive supervisor (module comment), and
 * another if that one dies; after ADOPTIVE_MAX_QUICK_DEATHS quick deaths it says so and serves on alone.
 * The kernel tells it the moment its supervisor dies (PR_SET_PDEATHSIG, SIGUSR2); a look every
 * SUPERVISOR_CHECK_MS covers a supervisor that died before that was set.
 */
export function watchSupervisor(log: Logger): void {
  let adopted = false;
  const check = () => {
    if (adopted || process.ppid === parentAtStart) return;
    adopted = true;
    clearInterval(timer);
    log.error({ supervisor: parentAtStart }, 'the supervisor is gone; this worker serves on and starts a new one to adopt it');
    // What the dead supervisor's channel still holds (connections parked as it died) is read to its
    // end first: the channel's close comes after its last message.
    if (!process.connected) return startAdoptiveSupervisor(log, 0);
    const go = () => {
      clearTimeout(bound);
      process.off('disconnect', go);
      startAdoptiveSupervisor(log, 0);
    };
    const bound = setTimeout(go, CHANNEL_DRAIN_MS);
    process.once('disconnect', go);
  };
  const timer = setInterval(check, SUPERVISOR_CHECK_MS);
  timer.unref();
  // The handler first: SIGUSR2's default action ends the process.
  process.on('SIGUSR2', check);
  try {
    fscacheBinding().setParentDeathSignal(os.constants.signals.SIGUSR2);
  } catch (e) {
    log.warn({ err: (e as Error).message }, `cannot be told when the supervisor dies; it is looked for every ${SUPERVISOR_CHECK_MS} ms`);
  }
  check();
}

/**
 * No supervisor will adopt this worker: it serves the kernel on alone, and its API socket and the idle
 * connections it held are closed, so that a client sees a dead daemon rather than waiting for good on
 * a socket nothing reads.
 */
function serveAlone(log: Logger, why: string, err?: unknown): void {
  log.error({ err: err === undefined ? undefined : (err as Error).message ?? String(err) }, `${why}; this worker serves on alone, without its API: restart the daemon`);
  const apiFd = process.env[API_FD_ENV];
  if (apiFd !== undefined) {
    try {
      closeFd(Number(apiFd));
    } catch { /* closed already */ }
    delete process.env[API_FD_ENV];
  }
  parked.clear();
}

function startAdoptiveSupervisor(log: Logger, quickDeaths: number): void {
  const lockFd = process.env[LOCK_FD_ENV];
  const env: NodeJS.ProcessEnv = { ...process.env, [ADOPT_ENV]: String(process.pid) };
  for (const k of [WORKER_FD_ENV, RESTART_ENV, STOP_ENV, LOCK_FD_ENV]) delete env[k];
  const startedAt = Date.now();
  let child: ChildProcess;
  try {
    // The worker's own command line (its supervisor's, as it started it), its kernel fd as fd 3 and
    // its lock as fd 4, as a supervisor holds them, and the status pipe as fd 5.
    // And the API's listening socket, when the worker holds one, as fd 6, an IPC channel to this
    // worker as fd 7 (where the new supervisor parks its idle connections), and those parked here
    // from fd 8 on.
    const apiFd = process.env[API_FD_ENV];
    if (apiFd !== undefined) env[API_FD_ENV] = String(ADOPTIVE_API_FD);
    const idle = apiFd === undefined ? [] : parked.fds();
    env[PARKED_FDS_ENV] = idle.map((_, i) => ADOPTIVE_PARKED_FD + i).join(',');
    child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
      stdio: ['ignore', 'inherit', 'inherit', KERNEL_FD, lockFd === undefined ? 'ignore' : Number(lockFd), 'pipe', apiFd === undefined ? 'ignore' : Number(apiFd), 'ipc', ...idle], env,
    });
    // The new supervisor has its own copies: it parks them here again, with the connections it takes.
    parked.clear();
    parked.listen(child);
  } catch (e) {
    serveAlone(log, 'cannot start a supervisor to adopt this worker', e);
    return;
  }
  // How this worker ends, written as it exits (synchronously: nothing runs after 'exit'); a worker
  // that is killed writes nothing, and the pipe's EOF tells the supervisor it died.
  const status = (child.stdio as unknown as Array<net.Socket | null>)[ADOPTED_STATUS_FD]!;
  const statusFd = fdOf(status);
  if (statusFd === undefined) {
    child.kill('SIGKILL');
    serveAlone(log, 'cannot start a supervisor to adopt this worker (no fd for its status pipe)');
    return;
  }
  adoptive = child;
  const tell = (code: number) => {
    try {
      fs.writeSync(statusFd, `${code}\n`);
    } catch { /* the supervisor is gone */ }
  };
  process.on('exit', tell);
  child.on('error', (e) => log.error({ err: e.message }, 'the adoptive supervisor failed'));
  child.on('exit', (code, signal) => {
    process.off('exit', tell);
    status.destroy();
    if (adoptive === child) adoptive = null;
    const quick = quickDeathsAfter(startedAt, quickDeaths);
    if (quick >= ADOPTIVE_MAX_QUICK_DEATHS) {
      serveAlone(log, `the adoptive supervisor keeps dying (last: ${signal ?? `exit code ${code}`})`);
      return;
    }
    log.error({ code, signal }, 'the adoptive supervisor died; starting another');
    setTimeout(() => startAdoptiveSupervisor(log, quick), restartDelayMs(quick)).unref();
  });
  child.unref();
  status.unref();
  log.info({ supervisor: child.pid }, 'a new supervisor adopts this worker');
}

/** A worker an adoptive supervisor adopts, and how it ended once it did (its exit code; null: it died). */
export interface AdoptedWorker {
  pid: number;
  ended: Promise<number | null>;
}

/** This process is an adoptive supervisor: its worker (module comment); null for any other process. */
export function adoptedWorker(): AdoptedWorker | null {
  const pid = Number(process.env[ADOPT_ENV]);
  if (!(Number.isInteger(pid) && pid > 1)) return null;
  // Not passed on to the workers it starts.
  delete process.env[ADOPT_ENV];
  const pipe = new net.Socket({ fd: ADOPTED_STATUS_FD, readable: true, writable: false });
  let said = '';
  pipe.setEncoding('utf8');
  pipe.on('data', (d: string) => { said += d; });
  const ended = new Promise<number | null>((resolve) => {
    pipe.on('error', () => pipe.destroy());
    pipe.on('close', () => {
      const code = said.trim() === '' ? NaN : Number(said.trim());
      resolve(Number.isInteger(code) ? code : null);
    });
  });
  return { pid, ended };
}

/** The kernel fd (and lock) an adoptive supervisor inherited from its worker, as fd 3 (and 4). */
export function inheritedHold(): HeldFd {
  return { fd: KERNEL_FD, close: () => closeFd(KERNEL_FD) };
}

/** The fanotify group and lock an adoptive supervisor inherited from its worker (fds 3 and 4). */
export function inheritedFanotifyHold(dir: string): FanotifyHold {
  return new FanotifyHold(FanotifyGroup.fromFd(KERNEL_FD), dir, LOCK_FD);
}

/** The worker's side: the kernel fd its supervisor holds, and whether an earlier worker died. */
export function inheritedKernelFd(): { fd: number; restarted: boolean; stopAtOnce: boolean } {
  return { fd: Number(process.env[WORKER_FD_ENV]), restarted: Number(process.env[RESTART_ENV] ?? 0) > 0, stopAtOnce: process.env[STOP_ENV] === '1' };
}

/**
 * `held`: the kernel fd, opened here (cachefiles) when not given. `adopted`: a worker this supervisor
 * did not start (an adoptive supervisor's): served as its first, and replaced as any other when it dies.
 */
export async function runSupervisor(opts: SupervisorOptions & Partial<DaemonOptions>, argv: string[], held?: HeldFd, adopted?: AdoptedWorker): Promise<void> {
  const log = makeLogger(opts.logLevel, opts.logFile, opts.logRotationSize);
  const dev: HeldFd = held ?? await openDeviceWhenFree(opts as DaemonOptions);
  // The API socket is the supervisor's, relayed to each worker in turn: its connections outlive a worker.
  let relay: ApiRelay | null = null;
  try {
    relay = opts.apiSock ? await openApiRelay(opts.apiSock, log) : null;
  } catch (e) {
    dev.close();
    throw e;
  }
  if (!held) log.info({ dir: opts.fscacheDir, tag: opts.tag }, 'cachefiles bound in on-demand mode');
  let child: Pick<ChildProcess, 'kill'> | null = null;
  let stopping = false;
  let restarts = 0;
  let quickDeaths = 0;
  /** The next worker's start, while one is due (after a worker died). */
  let restartTimer: NodeJS.Timeout | null = null;
  let startedAt = 0;
  /** The daemon is ending with no worker (finish): no worker is started again, signals change nothing. */
  let givingUp = false;
  /** The worker's pid while there is one. */
  let workerPid: number | null = adopted?.pid ?? null;
  followedByWorker(() => workerPid, log);
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
    let worker: ChildProcess;
    try {
      worker = spawn(process.execPath, [...process.execArgv, ...v8Flags, ...argv], {
        // fd 6: the IPC channel the relay parks its idle connections through (parked-connections.ts).
        stdio: ['ignore', 'inherit', 'inherit', dev.fd, dev.lockFd ?? 'ignore', relay ? relay.fd : 'ignore', 'ipc'],
        // Cache-file writes run on libuv's pool (O_DIRECT waits for the disk): size it for the threads.
        env: {
          ...process.env, [WORKER_FD_ENV]: String(KERNEL_FD), [RESTART_ENV]: String(restarts), [STOP_ENV]: stopping ? '1' : '0',
          ...(dev.lockFd === undefined ? {} : { [LOCK_FD_ENV]: String(LOCK_FD) }),
          ...(relay ? { [WORKER_API_ENV]: relay.workerSock, [API_FD_ENV]: String(WORKER_API_FD) } : {}),
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
    } catch (e) {
      // Not even a process (EAGAIN, ENOMEM): a worker that died at once, restarted as one.
      log.error({ err: (e as Error).message }, 'cannot start a worker');
      exited(1, null);
      return;
    }
    // Its end, once: a spawn that fails later (ENOENT, EMFILE) says so with 'error', and maybe 'exit'.
    const ended = (code: number | null, signal: NodeJS.Signals | null) => {
      if (child === worker) exited(code, signal);
    };
    worker.on('error', (e) => {
      if (worker.pid !== undefined) return;  // a signal that could not be sent: it runs on
      log.error({ err: e.message }, 'cannot start a worker');
      ended(1, null);
    });
    child = worker;
    workerPid = worker.pid ?? null;
    worker.on('exit', ended);
    // Idle connections are parked with it once it says it may take them (readyForParkedConnections).
    if (relay) {
      worker.on('message', (m: unknown) => {
        if (isParkReady(m) && child === worker) relay!.keepWith(ipcKeeper(worker));
      });
    }
  };
  /** The worker ended: `code` null and `signal` null when an adopted worker was killed (its status pipe says no more). */
  const exited = (code: number | null, signal: NodeJS.Signals | null) => {
    child = null;
    workerPid = null;
    relay?.keepWith(null);
    if (givingUp) return;
    quickDeaths = quickDeathsAfter(startedAt, quickDeaths);
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
      if (code === 0) finish(0);
      else {
        log.fatal({ code, signal, restarts }, 'workers keep dying while stopping');
        finish(code === WORKER_EXIT_FATAL ? WORKER_EXIT_FATAL : 1);
      }
      return;
    }
    if (code === WORKER_EXIT_FATAL) {
      log.fatal({ code }, 'worker cannot serve what it was given; stopping');
      finish(WORKER_EXIT_FATAL);
      return;
    }
    if (code === 0) {
      // A worker exits 0 only once it was asked to stop the daemon (its API's exit), and has signalled
      // this process: the signal may come after the exit.
      log.info('worker stopped; the daemon stops');
      finish(0);
      return;
    }
    restarts++;
    // A worker that cannot even start (bad work dir, broken install) must not be restarted forever.
    if (quickDeaths >= WORKER_MAX_QUICK_DEATHS) {
      log.fatal({ code, signal, restarts }, 'worker keeps dying right after start; giving up');
      finish(1);
      return;
    }
    log.error({ code, signal, restarts }, 'worker died; starting a new one');
    restartTimer = setTimeout(start, restartDelayMs(quickDeaths));
  };
  /**
   * The daemon ends with no worker left. Whatever a worker left mounted is taken down first (HeldFd.giveUp:
   * a fanotify mount outliving the group would read its unfetched ranges as zeros), then the fd is
   * closed. Signals no longer matter meanwhile: the fd must outlive every mount it serves.
   */
  const finish = (code: number) => {
    givingUp = true;
    const done = () => {
      relay?.close();
      dev.close();
      process.exit(code);
    };
    if (!dev.giveUp) return done();
    dev.giveUp(log).catch((e) => log.error({ err: (e as Error).message }, 'cannot take down what the workers left')).finally(done);
  };
  const stop = () => {
    if (stopping || givingUp) return;
    stopping = true;
    if (child) child.kill('SIGTERM');
    else if (restartTimer) {
      // A worker died and the next is due: it starts now, takes the mounts over and stops.
      clearTimeout(restartTimer);
      start();
    } else {
      finish(0);
    }
  };
  onStopSignals(stop, log);
  if (!adopted) {
    start();
    return;
  }
  log.info({ worker: adopted.pid }, 'supervisor started to adopt a worker whose supervisor died');
  // Its IPC channel (fd 7) leads to the adopted worker, its parent.
  if (process.send) relay?.keepWith(ipcKeeper(process as unknown as Pick<ChildProcess, 'send' | 'connected'>));
  child = { kill: (signal?: NodeJS.Signals | number) => {
    try {
      return process.kill(adopted.pid, signal);
    } catch {
      return false;  // gone already: its pipe says so
    }
  } };
  void adopted.ended.then((code) => exited(code, null));
  if (relay && opts.apiSock) {
    const apiRelay = relay;
    stopOnceSocketGone(opts.apiSock, () => {
      apiRelay.leavePaths();
      stop();
    }, log);
  }
}

/** How often an adoptive supervisor looks whether its API socket is still at its path. */
const SOCKET_WATCH_MS = 1_000;

/**
 * An adoptive supervisor's daemon is stopped through its API alone: whoever started the daemon knows
 * the pid of the supervisor that died, not this one's. nydus-snapshotter stops a daemon by signalling
 * that pid, then removes the API socket's directory; with the socket gone (or another's at its path)
 * no one can reach this daemon any more, and it would hold the cache (a new daemon's cachefiles bind
 * or fanotify marks) for good. So it stops then, as that signal would have stopped it.
 */
function stopOnceSocketGone(sock: string, stop: () => void, log: Logger): void {
  // The socket file as the worker handed it over, by its device, inode and birth (an inode number is
  // soon reused); null: gone. Only ENOENT and ENOTDIR say gone: any other failure to look is no news.
  const identity = (): string | null | undefined => {
    try {
      const st = fs.lstatSync(sock, { bigint: true });
      return `${st.dev}:${st.ino}:${st.birthtimeNs}`;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      return code === 'ENOENT' || code === 'ENOTDIR' ? null : undefined;
    }
  };
  const ours = identity();
  const check = () => {
    const now = identity();
    if (now === undefined || (now === ours && ours !== null)) return false;
    log.warn({ apisock: sock }, 'the API socket was removed (or replaced): no one can reach this daemon any more, which is how its starter stops a daemon whose supervisor died; stopping');
    stop();
    return true;
  };
  if (ours === undefined || check()) return;
  const timer = setInterval(() => {
    if (check()) clearInterval(timer);
  }, SOCKET_WATCH_MS);
  timer.unref();
}

/** How often the supervisor looks whether it was moved to other cgroups (cgroup-follow.ts). */
const CGROUP_FOLLOW_MS = 1_000;

/** The worker (`workerPid()`, when there is one) is moved into the cgroups this process is moved to: each failure told once. */
function followedByWorker(workerPid: () => number | null, log: Logger): void {
  const told = new Set<string>();
  setInterval(() => {
    const pid = workerPid();
    if (pid === null) return;
    let failures: string[];
    try {
      failures = followCgroups(pid);
    } catch (e) {
      failures = [(e as Error).message];
    }
    for (const f of failures) {
      if (told.has(f)) continue;
      told.add(f);
      log.warn({ worker: pid, err: f }, 'cannot move the worker into the supervisor\'s cgroup');
    }
  }, CGROUP_FOLLOW_MS).unref();
}

/** The lock file in a daemon's directory: flock(2)ed by the supervisor for its whole life (and by its workers, which inherit it). */
export const LOCK_FILE = 'nydusd.lock';

/**
 * Takes the daemon's lock on `dir` (made if missing), or fails naming the directory and the daemon
 * that holds it. One daemon per directory: two would overwrite each other's mounts file, truncate
 * each other's journal of pending events, and one would unmount or answer the other's mounts.
 * flock(2) belongs to the open file: it goes when the last process holding the fd ends, however it
 * ends (kill -9 too), so no stale lock is ever left behind. Returns the fd (kept open).
 */
export function lockDaemonDir(dir: string, what: string): number {
  ensureDirectory(dir, what);
  const file = path.join(dir, LOCK_FILE);
  const lock = lockFile(file, `${what} ${dir}`);
  if ('fd' in lock) return lock.fd;
  throw new NydusError(`${what} ${dir} is in use by another nydusd${lock.owner} (it holds ${file}): `
    + 'two daemons cannot share one directory; give each its own, or stop the other first');
}

/**
 * flock(2)s `file` (made if missing, never through a symlink) and writes this process' pid in it:
 * its fd, kept open for as long as the lock is held; or, while another open file holds the lock,
 * ` (pid N)` of the pid written there (empty when there is none). `what` names it in errors.
 */
export function lockFile(file: string, what: string): { fd: number } | { owner: string } {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
  } catch (e) {
    throw new NydusError(`${what}: cannot open its lock file: ${(e as Error).message}`);
  }
  let held: boolean;
  try {
    held = fscacheBinding().tryLock(fd);
    if (held) {
      fs.ftruncateSync(fd, 0);
      fs.writeSync(fd, `${process.pid}\n`, 0);
    }
  } catch (e) {
    fs.closeSync(fd);
    throw new NydusError(`${what}: cannot lock ${file}: ${(e as Error).message}`);
  }
  if (held) return { fd };
  let owner = '';
  try {
    owner = fs.readFileSync(file, 'utf8').trim();
  } catch { /* the pid is only for the message */ }
  fs.closeSync(fd);
  return { owner: /^\d+$/.test(owner) ? ` (pid ${owner})` : '' };
}

/** A mount a fanotify worker made, as its mounts file lists it (frontend/fanotify.ts). */
export interface ListedMount {
  mountpoint: string;
  bootstrap: string;
  /** st_dev of the mount's root, once mounted (absent: mount(2) was about to be called). */
  dev?: number;
}

/** The mounts file of a fanotify daemon's directory: what its workers mounted (or were mounting). */
export const MOUNTS_FILE = 'mounts.json';

/** The mounts file's records (written as `T`s, checked as ListedMounts); none when it is missing or unreadable. */
export function readMountsFile<T extends object = object>(file: string): Array<T & ListedMount> {
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8'));
    return Array.isArray(v) ? v.filter((m) => m && typeof m.mountpoint === 'string' && typeof m.bootstrap === 'string') : [];
  } catch {
    return [];
  }
}

/** mountinfo's octal escapes (\040 for a space...) undone. */
function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
}

/**
 * Whether a listed mount is there and on top at its mountpoint (what umount2 and readers there
 * reach), there under another mount, or gone. Ours is the file-backed EROFS mount of its bootstrap,
 * of the device it was mounted as when that is known: another mount later made there is never taken for it.
 */
export function listedMountState(m: ListedMount): 'top' | 'under' | 'absent' {
  const at: Array<{ ours: boolean }> = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length < 10 || unescapeMountinfo(f[4]) !== m.mountpoint) continue;
    const sep = f.indexOf('-', 6);
    const [maj, min] = f[2].split(':').map(Number);
    // glibc's makedev(), as Node's stat() gives st_dev.
    const dev = ((maj & 0xfff) << 8) + (min & 0xff) + ((min & ~0xff) * 4096) + (maj & ~0xfff) * 2 ** 32;
    at.push({ ours: sep > 0 && f[sep + 1] === 'erofs' && unescapeMountinfo(f[sep + 2] ?? '') === m.bootstrap && (m.dev === undefined || m.dev === dev) });
  }
  if (at.length && at[at.length - 1].ours) return 'top';
  return at.some((x) => x.ours) ? 'under' : 'absent';
}

const EIO = 5;

/**
 * The fanotify mode's group as the supervisor holds it, with the daemon's directory (its lock, the
 * mounts file and the journal of pending events).
 */
export class FanotifyHold implements HeldFd {
  readonly fd: number;

  constructor(private readonly group: FanotifyGroup, readonly dir: string, readonly lockFd: number) {
    this.fd = group.fd;
  }

  close(): void {
    this.group.close();
  }

  /**
   * No worker is left and none will be started: the mounts the workers left are unmounted before the
   * group is closed. Why the group is kept until then: closing it (fanotify_release) allows every
   * pending and later access of the marked cache files, and a mount that outlives it reads its
   * unfetched ranges as ZEROS, silently. So:
   *   - every event is answered EIO from now on: the events a dead worker read and left unanswered
   *     (the journal, by fd number: the kernel matches answers by number alone; answered before this
   *     process reads any event, so no number of ours can be taken for one of them), then each new
   *     one. Readers get an I/O error, never zeros and never a wait without end (and a reader held
   *     in an event would keep the mount busy);
   *   - each listed mount that is ours and on top is unmounted without MNT_DETACH (a lazy detach
   *     would leave open files reading through a released group: zeros again). A busy mount stays:
   *     it is tried again every second, its reads failing EIO meanwhile, for as long as it takes;
   *     the process does not exit, since exiting closes the group;
   *   - a mount of ours with another mounted over it cannot be unmounted either: it is held the same
   *     way until the mount over it goes. A mount that is gone, or that is not ours (another
   *     device, or not the image's EROFS), is left alone.
   * Cached data is not touched: cache files, their marks' state and the chunk state stay for the next daemon.
   */
  async giveUp(log: Logger): Promise<void> {
    const listed = readMountsFile(path.join(this.dir, MOUNTS_FILE));
    if (!listed.some((m) => listedMountState(m) !== 'absent')) return;
    this.failEveryRead(log);
    for (let tries = 0; ; tries++) {
      const left = listed.filter((m) => !this.takeDown(m, log, tries));
      if (!left.length) break;
      if (tries === 0) log.error({ mountpoints: left.map((m) => m.mountpoint) }, 'mounts left by the workers cannot be unmounted yet (busy); their reads fail with EIO until they are free, then they are unmounted and the daemon ends');
      await new Promise((r) => setTimeout(r, 1000));
    }
    this.group.stopEvents();
    log.info('every mount the workers left is unmounted');
  }

  /** Whether the mount is down (unmounted now, gone, or not ours); false while it must be held. */
  private takeDown(m: ListedMount, log: Logger, tries: number): boolean {
    const state = listedMountState(m);
    if (state === 'absent') return true;
    if (state === 'under') {
      if (tries % 60 === 0) log.error({ mountpoint: m.mountpoint }, 'a mount the workers left has another mounted over it; held until that one goes');
      return false;
    }
    try {
      umountPath(m.mountpoint);
      log.warn({ mountpoint: m.mountpoint }, 'unmounted a mount the workers left');
      return true;
    } catch (e) {
      if (tries % 60 === 0 && !(isSystemError(e) && e.code === 'EBUSY')) log.error({ mountpoint: m.mountpoint, err: (e as Error).message }, 'cannot unmount a mount the workers left; trying again');
      return false;
    }
  }

  private failEveryRead(log: Logger): void {
    const fail = (fd: number) => {
      try {
        this.group.respond(fd, EIO);
      } catch { /* ENOENT: no such pending event */ }
    };
    for (const p of PendingEventJournal.read(path.join(this.dir, 'pending-events'))) {
      if (Number.isInteger(p.fd) && p.fd >= 0 && p.fd <= 0x7fffffff) fail(p.fd);
    }
    this.group.onEvents((events) => {
      for (const e of events) {
        // An answered event's fd was closed by the addon already (none is, here: no ready blocks are set).
        if (e.fd < 0 || e.answered) continue;
        fail(e.fd);
        closeFd(e.fd);
      }
    }, (err) => log.warn({ err: err.message }, 'cannot read fanotify events'));
  }
}

/**
 * The fanotify mode supervisor's hold (run-fanotify.ts serves its group): the daemon's directory made
 * and locked (one daemon per directory), then the group; a clear error where the kernel has no pre-content events.
 */
export function openFanotifyGroup(dir: string): FanotifyHold {
  const lockFd = lockDaemonDir(dir, '--fanotify directory');
  // (The mounts file is kept: mounts a daemon killed with its supervisor left read holes as zeros
  // until its first worker serves them again, FanotifySession.restore.)
  try {
    return new FanotifyHold(FanotifyGroup.open(), dir, lockFd);
  } catch (e) {
    fs.closeSync(lockFd);
    throw new NydusError(`cannot start fanotify mode: ${(e as Error).message}`);
  }
}

/** How long a starting daemon waits for /dev/cachefiles held by one that is stopping (openDeviceWhenFree). */
const DEVICE_FREE_WAIT_MS = 5_000;
/** How often it tries meanwhile. */
const DEVICE_FREE_POLL_MS = 200;

/**
 * openDevice, waiting up to `waitMs` while the device is busy and nothing is at the API socket's
 * path: nydus-snapshotter removes a daemon's socket and starts the next one at once, and the one it
 * removed may still be stopping (an adoptive supervisor's, stopOnceSocketGone). Busy with a socket
 * there (another daemon serving, or one that died), or busy past the wait: the open's error. (`open`:
 * tests give the device's answers.)
 */
export async function openDeviceWhenFree<T = CachefilesDevice>(opts: Pick<DaemonOptions, 'apiSock' | 'fscacheDir' | 'tag'>, open: (o: typeof opts) => T = openDevice as (o: typeof opts) => T, waitMs = DEVICE_FREE_WAIT_MS): Promise<T> {
  const until = Date.now() + waitMs;
  for (;;) {
    try {
      return open(opts);
    } catch (e) {
      if ((e as NydusError).cause !== 'EBUSY' || Date.now() >= until || !opts.apiSock || (await socketLiveness(opts.apiSock)) !== 'absent') throw e;
    }
    await new Promise((r) => setTimeout(r, DEVICE_FREE_POLL_MS));
  }
}

/** Opens and binds the device; a failure keeps the system error's code as `cause` (EBUSY matters). */
export function openDevice(opts: Pick<DaemonOptions, 'fscacheDir' | 'tag'>): CachefilesDevice {
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
