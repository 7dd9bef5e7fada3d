/**
 * nydusd in fanotify mode (`--fanotify <dir>`): the supervisor (run.ts, openFanotifyGroup) makes the
 * pre-content group and keeps its fd for its whole life; the worker serves the group's events, the mounts and the API.
 * When a worker dies the group lives on in the supervisor (its marks with it, and its events pending),
 * and the next worker serves the same mounts: what its predecessor left unanswered first (the
 * journal), then the queue. `<dir>` holds the chunk state, the mounts served and that journal.
 */
import fs from 'node:fs';
import path from 'node:path';
import { FanotifyGroup, reserveFdNumber } from '../../native/fscache/fanotify.ts';
import { startApi } from './api.ts';
import { FanotifySession, type FanotifyMountRequest } from './frontend/fanotify.ts';
import { PendingEventJournal } from './frontend/fanotify-journal.ts';
import { makeLogger } from './log.ts';
import { WORKER_EXIT_FATAL, inheritedKernelFd } from './run.ts';
import { openDaemonCore } from './serve.ts';

export interface FanotifyDaemonOptions {
  /** The daemon's own directory (chunk state, mounts served, pending events); not tmpfs. */
  dir: string;
  apiSock?: string;
  /** Events served at once. */
  threads: number;
  logLevel: string;
  logFile?: string;
  logRotationSize: number;
  /** The command line's --bootstrap/--mountpoint/--config: mounted by the first worker. */
  initial?: FanotifyMountRequest;
}

export async function runFanotifyWorker(opts: FanotifyDaemonOptions): Promise<void> {
  const { fd, restarted, stopAtOnce } = inheritedKernelFd();
  const journalFile = path.join(opts.dir, 'pending-events');
  // Before anything opens an fd: the numbers of the predecessor's unanswered events are held.
  const pending = restarted ? PendingEventJournal.read(journalFile) : [];
  const reserved = new Map(pending.map((p) => [p.fd, reserveFdNumber(p.fd)] as const));
  const log = makeLogger(opts.logLevel, opts.logFile, opts.logRotationSize);
  fs.mkdirSync(opts.dir, { recursive: true });
  const { state, registry, registration } = openDaemonCore(opts.dir, opts.threads, log);
  const journal = new PendingEventJournal(journalFile, pending);
  const mountsFile = path.join(opts.dir, 'mounts.json');
  if (!restarted) fs.rmSync(mountsFile, { force: true });
  const session = new FanotifySession(FanotifyGroup.fromFd(fd), registry, state, journal, mountsFile, log, opts.threads);
  if (restarted) {
    await session.restore();
    session.recover(pending, reserved);
    log.info({ mounts: session.list().length, pending: pending.length }, 'took over from a dead worker');
  }
  session.start();
  if (!restarted && opts.initial) {
    try {
      await session.mount(opts.initial);
    } catch (e) {
      log.fatal({ err: (e as Error).message }, 'cannot mount');
      process.stderr.write(`nydusd: cannot mount ${opts.initial.mountpoint}: ${(e as Error).message}\n`);
      process.exit(WORKER_EXIT_FATAL);
    }
  }
  let server: Awaited<ReturnType<typeof startApi>> | null = null;
  let stopping = false;
  const shutdown = () => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down');
    server?.close();
    void session.close().then(() => Promise.all([registry.close(), registration.close()])).finally(() => {
      state.close();
      journal.close();
      // The supervisor restarts a worker that exits; asked to exit, the whole daemon stops.
      process.kill(process.ppid, 'SIGTERM');
      process.exit(0);
    });
  };
  if (opts.apiSock) server = await startApi(opts.apiSock, { id: '', registry, state, lifecycle: null, mounts: session, exit: shutdown, log });
  log.info({ apisock: opts.apiSock, dir: opts.dir, mounts: session.list() }, 'nydusd ready (fanotify)');
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  if (stopAtOnce) shutdown();
}
