/**
 * nydusd in fanotify mode (`--fanotify <dir>`): the supervisor (run.ts, openFanotifyGroup) makes the
 * pre-content group and keeps its fd for its whole life; the worker serves the group's events, the mounts and the API.
 * When a worker dies the group lives on in the supervisor (its marks with it, and its events pending),
 * and the next worker serves the same mounts: what its predecessor left unanswered first (the
 * journal), then the queue. `<dir>` holds the chunk state, the mounts served and that journal.
 */
import path from 'node:path';
import { FanotifyGroup, reserveFdNumber } from '../../native/fscache/fanotify.ts';
import { startApi } from './api.ts';
import { FanotifySession, type FanotifyMountRequest } from './frontend/fanotify.ts';
import { type JournaledEvent, PendingEventJournal } from './frontend/fanotify-journal.ts';
import { makeLogger } from './log.ts';
import { MOUNTS_FILE, WORKER_EXIT_FATAL, inheritedKernelFd, onStopSignals, readyForParkedConnections, stopSupervisor, watchSupervisor, workerApiSocket } from './run.ts';
import { openDaemonCore } from './serve.ts';
import { StateDbError } from './state.ts';
import { NydusError } from '../../erofs/errors.ts';
import type { Logger } from 'pino';

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
  // Before anything opens an fd: the numbers of the predecessor's unanswered events are held. What
  // goes wrong meanwhile is said once the logger is there (opening its file takes an fd).
  const warnings: Array<{ fd: number; why: string }> = [];
  const journaled = restarted ? predecessorEvents(journalFile, warnings) : [];
  const reserved = new Map<number, () => void>();
  const pending: JournaledEvent[] = [];
  for (const p of journaled) {
    try {
      reserved.set(p.fd, reserveFdNumber(p.fd));
      pending.push(p);
    } catch (e) {
      // A RangeError: no fd of this process, nor of its predecessor (same limit), can have that
      // number (not below RLIMIT_NOFILE): skipped. Any other failure to hold it: recover() answers
      // it EIO at once, before any new event can take its number.
      if (e instanceof RangeError) {
        warnings.push({ fd: p.fd, why: `no process of this daemon has an fd of that number (${e.message}); skipped` });
      } else {
        pending.push(p);
        warnings.push({ fd: p.fd, why: `cannot hold its fd number (${(e as Error).message}); answered EIO` });
      }
    }
  }
  // The predecessor's numbers are held: the supervisor may park idle API connections here now.
  readyForParkedConnections();
  const log = makeLogger(opts.logLevel, opts.logFile, opts.logRotationSize);
  for (const w of warnings) log.warn({ journal: journalFile, fd: w.fd }, `a record of the pending-events journal is not served: ${w.why}`);
  try {
    await serveFanotify(opts, { fd, restarted, stopAtOnce, journalFile, pending, reserved, log });
  } catch (e) {
    // Start-up failures reach the log file (the supervisor's stderr may be nowhere).
    const fatal = e instanceof StateDbError || e instanceof WorkerStartError;
    log.fatal({ err: (e as Error).message }, fatal ? 'worker cannot start with its state; the daemon stops' : 'worker cannot start');
    process.stderr.write(`nydusd: ${fatal ? 'error' : 'worker cannot start'}: ${(e as Error).message}\n`);
    process.exit(fatal ? WORKER_EXIT_FATAL : 1);
  }
}

/** A failure of the daemon's directory (its journal, its mounts file) or its API socket: a restarted worker would meet it again. */
class WorkerStartError extends NydusError {}

/**
 * The unanswered events a dead predecessor's journal lists, without records whose fd cannot have been
 * one of its fds (negative, past an int): those are skipped with a warning, never acted on (an fd
 * number truncated to another would answer someone else's event).
 */
function predecessorEvents(file: string, warnings: Array<{ fd: number; why: string }>): JournaledEvent[] {
  const out: JournaledEvent[] = [];
  for (const p of PendingEventJournal.read(file)) {
    if (Number.isInteger(p.fd) && p.fd >= 0 && p.fd <= 0x7fffffff) out.push(p);
    else warnings.push({ fd: p.fd, why: 'no process has an fd of that number; skipped' });
  }
  return out;
}

interface WorkerStart {
  fd: number;
  restarted: boolean;
  stopAtOnce: boolean;
  journalFile: string;
  pending: JournaledEvent[];
  reserved: Map<number, () => void>;
  log: Logger;
}

async function serveFanotify(opts: FanotifyDaemonOptions, { fd, restarted, stopAtOnce, journalFile, pending, reserved, log }: WorkerStart): Promise<void> {
  const { state, registry, registration } = openDaemonCore(opts.dir, opts.threads, log);
  let journal: PendingEventJournal;
  try {
    journal = new PendingEventJournal(journalFile, pending, (e) => {
      log.error({ journal: journalFile, err: e.message }, 'cannot write the journal of pending events; it was emptied: events are served on, but a worker that dies meanwhile leaves its readers waiting');
    });
  } catch (e) {
    throw new WorkerStartError(`the journal of pending events ${journalFile} cannot be written: ${(e as Error).message}`);
  }
  const mountsFile = path.join(opts.dir, MOUNTS_FILE);
  const guarded = [
    { path: opts.dir, what: "the daemon's directory" },
    ...(opts.apiSock ? [{ path: opts.apiSock, what: 'the API socket' }, { path: workerApiSocket(opts.apiSock), what: "the worker's API socket" }] : []),
    ...(opts.logFile ? [{ path: opts.logFile, what: 'the log file' }] : []),
  ];
  const session = new FanotifySession(FanotifyGroup.fromFd(fd), registry, state, journal, mountsFile, log, opts.threads, guarded);
  if (restarted) {
    await session.restore();
    session.recover(pending, reserved);
    log.info({ mounts: session.list().length, pending: pending.length }, 'took over from a dead worker');
  } else {
    // A daemon killed with its supervisor left its mounts unserved: they read holes as zeros until
    // a group marks their cache files again.
    await session.restore(true);
  }
  session.start();
  // The command line's mount may be one a daemon killed with its supervisor left, served again now
  // (restore): that is the mount asked for, not a second one over it (which would have failed the
  // start and taken every mount down with it).
  const left = opts.initial ? session.servesAt(opts.initial.mountpoint, opts.initial.bootstrap) : null;
  if (left === 'same') log.info({ mountpoint: opts.initial!.mountpoint }, "the command line's mount was left by the daemon before and is served again; its config is the one it was made with");
  if (!restarted && opts.initial && left !== 'same') {
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
      stopSupervisor();
      process.exit(0);
    });
  };
  if (opts.apiSock) {
    try {
      server = await startApi(workerApiSocket(opts.apiSock), { id: '', registry, state, lifecycle: null, mounts: session, exit: shutdown, log });
    } catch (e) {
      throw new WorkerStartError(`cannot serve the API: ${(e as Error).message}`);
    }
  }
  log.info({ apisock: opts.apiSock, dir: opts.dir, mounts: session.list() }, 'nydusd ready (fanotify)');
  onStopSignals(shutdown, log);
  watchSupervisor(log);
  if (stopAtOnce) shutdown();
}
