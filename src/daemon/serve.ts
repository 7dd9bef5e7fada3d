/**
 * nydusd's daemon proper, the worker of run.ts's supervisor or a process of its own under an external
 * supervisor: the state, the images, the device and the API. Loaded only by the process that serves.
 */
import path from 'node:path';
import os from 'node:os';
import type { Logger } from 'pino';
import { CachefilesDevice } from '../../native/fscache/index.ts';
import { NydusError } from '../../erofs/errors.ts';
import { startApi } from './api.ts';
import { socketLiveness } from './unix-socket.ts';
import { ImageRegistry } from './daemon.ts';
import { DaemonLifecycle } from './lifecycle.ts';
import { DaemonState } from './state.ts';
import { VerifyPool } from './verify-pool.ts';
import { warmUpVerifiers } from '../blob/verify.ts';
import { RegistrationPool } from './registration-pool.ts';
import { makeLogger } from './log.ts';
import { type DaemonOptions, inheritedKernelFd, onStopSignals, openDeviceWhenFree, stopSupervisor, watchSupervisor, workerApiSocket } from './run.ts';
import { heldBack } from './repeated-failure.ts';

/**
 * Where the /dev/cachefiles fd comes from: inherited from our own supervisor process, opened and bound
 * here (a supervisor of the snapshotter's keeps a copy through sendfd), or taken over from that
 * supervisor later (the daemon waits in INIT: --upgrade, or a crashed predecessor's device still held).
 */
export type DeviceSource = { kind: 'inherited' } | { kind: 'device'; dev: CachefilesDevice } | { kind: 'takeover' };

/**
 * How a daemon with an external supervisor starts (nydus's create_daemon): it binds the cache, unless
 * /dev/cachefiles is busy (only one open at a time) while the API socket of a dead daemon is left
 * behind: then its predecessor crashed, the supervisor holds the device, and it waits for takeover.
 */
export async function startupMode(opts: DaemonOptions): Promise<DeviceSource> {
  try {
    return { kind: 'device', dev: await openDeviceWhenFree(opts) };
  } catch (e) {
    if ((e as NydusError).cause !== 'EBUSY') throw e;
    if (await socketLiveness(opts.apiSock) === 'dead') return { kind: 'takeover' };
    throw new NydusError(`/dev/cachefiles is held by another process and no crashed daemon left ${opts.apiSock} behind: is another nydusd running?`);
  }
}

/** What both front ends serve from: the chunk state in `stateDir`, chunk verification, the images. */
export function openDaemonCore(stateDir: string, threads: number, log: Logger): { state: DaemonState; registry: ImageRegistry; registration: RegistrationPool } {
  // The database failing while the daemon runs is logged; the daemon goes on (DaemonState.flush).
  const state = new DaemonState(stateDir, (f) => {
    if (f.kind === 'recovered') log.info({ file: f.file }, 'the state database takes writes again; the chunk marks kept in memory are written');
    else if (f.kind === 'write') log.error({ file: f.file, err: f.error.message, pending: f.pending, ...heldBack(f.held) }, 'cannot write the state database; chunk marks are kept in memory and written once it takes writes (a crash meanwhile fetches their chunks again)');
    else log.error({ file: f.file, err: f.error.message, what: f.what, ...heldBack(f.held) }, 'cannot read the state database; taken as no marks, the chunks are fetched again when read');
  });
  // Verification on libuv's threads, a job per core at most: the event loop stays free for the kernel's
  // requests. A reader's job may run beside `size` background ones (VerifyPool), and file reads and
  // writes need a thread too: two of libuv's threads stay out of the pool's reach (a worker's libuv
  // has twice the threads, run.ts; a daemon run as one process, --supervisor, node's default 4).
  const libuvThreads = Number(process.env.UV_THREADPOOL_SIZE) || 4;
  const pool = new VerifyPool(Math.max(1, Math.min(os.availableParallelism(), threads, libuvThreads - 2)));
  // Jobs land on any of libuv's threads (the supervisor sizes the pool): each pays its first job's
  // cost now, in the background, rather than during a container's first reads.
  void warmUpVerifiers(libuvThreads).then(
    (how) => log.info(how, 'verification threads warmed up'),
    (e: Error) => log.warn({ err: e.message }, 'cannot warm up the verification threads'),
  );
  // Bootstraps are read and validated on their own thread, one image at a time; the thread stays
  // through a burst of registrations (a warm one validates about twice as fast as a new one), and
  // goes soon after it: an idle thread with its heap is 18 MiB of the daemon's RSS while the
  // containers just started read their images (the Debian rootfs read: peak 104 MiB with it, 86 without).
  const registration = new RegistrationPool({ workers: 1, idleMs: 2_000 });
  return { state, registry: new ImageRegistry(state, log, pool, registration), registration };
}

export async function runDaemon(opts: DaemonOptions, source: DeviceSource): Promise<void> {
  const log = makeLogger(opts.logLevel, opts.logFile, opts.logRotationSize);
  const { state, registry, registration } = openDaemonCore(path.join(opts.fscacheDir, 'nydus-ts'), opts.threads, log);
  // Before the device is served: the kernel's requests after a restart name these images. A daemon
  // that waits for a takeover has no device yet: its API comes up at once, in INIT, and the takeover
  // waits for these. (The snapshotter's failover gives the new nydusd 2 s to answer in INIT, and
  // re-validating every image of a busy node can take longer.)
  const restored = registry.restore();
  if (source.kind !== 'takeover') await restored;
  const lifecycle = new DaemonLifecycle({ id: opts.id, cacheDir: opts.fscacheDir, threads: opts.threads, supervisor: opts.supervisor, restored }, registry, state, log);
  if (source.kind === 'inherited') {
    const { fd, restarted } = inheritedKernelFd();
    lifecycle.bind(CachefilesDevice.fromFd(fd), restarted);
  } else if (source.kind === 'device') {
    lifecycle.bind(source.dev, false);
    log.info({ dir: opts.fscacheDir, tag: opts.tag }, 'cachefiles bound in on-demand mode');
  } else {
    log.info({ supervisor: opts.supervisor }, 'waiting in INIT for a takeover');
  }
  let server: Awaited<ReturnType<typeof startApi>> | null = null;
  let stopping = false;
  const shutdown = () => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down');
    server?.close();
    lifecycle.stop();
    void Promise.all([registry.close(), registration.close()]).finally(() => {
      state.close();
      // Our own supervisor restarts a worker that exits; asked to exit, the whole daemon stops.
      if (source.kind === 'inherited') stopSupervisor();
      process.exit(0);
    });
  };
  // A worker of our supervisor serves the socket the supervisor relays the API socket to.
  server = await startApi(workerApiSocket(opts.apiSock), { id: opts.id, supervisor: opts.supervisor, registry, state, lifecycle, exit: shutdown, log });
  log.info({ apisock: opts.apiSock, state: lifecycle.state }, 'nydusd ready');
  onStopSignals(shutdown, log);
  if (source.kind === 'inherited') watchSupervisor(log);
  // Started while the daemon stops (its predecessor died stopping): stop, having taken over.
  if (source.kind === 'inherited' && inheritedKernelFd().stopAtOnce) shutdown();
}

