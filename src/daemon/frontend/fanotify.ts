/**
 * FanotifySession: the fanotify pre-content front end (Linux 6.14+, no cachefiles on-demand needed).
 *   mount   -> the image registered; per blob a sparse cache file `<work_dir>/<blob id>.blob.data` of
 *              the blob's uncompressed size, marked FAN_PRE_ACCESS; EROFS mounted file-backed with
 *              the bootstrap as source and the cache files as `device=`, in blob table order
 *   event   -> the blob's BlobCacheFile fills the range (fetch, verify, write, mark) -> FAN_ALLOW;
 *              a range that cannot be served -> FAN_DENY_ERRNO(EIO): the reader gets EIO, never zeros
 *   umount  -> umount2, marks removed, the files' fds closed once their work drained
 *
 * Which fd writes: a write through any fd of a marked file opened after the mark raises an event of
 * its own, which this daemon would have to answer while waiting for its own write. The fds that raise
 * none are the ones the kernel decided at open time nobody watches (opened before the mark) and the
 * events' own fds (opened by fanotify with FMODE_NONOTIFY). So each cache file's writer is the fd it
 * was opened with before being marked, or, after a restart (the mark is older than any fd we could
 * open), a dup of the first event's fd for that file; background writes that come before any event
 * provoke one: a one-byte read through our own (watched) fd, served like any other event.
 *
 * Restart: the supervisor keeps the group fd (run.ts), so a dead worker does not release the group
 * (fanotify_release answers every pending event FAN_ALLOW: readers would see holes as zeros) and the
 * marks stay. Events the worker had read and not answered are in the PendingEventJournal; the next
 * worker fills their ranges and answers them by fd number, then serves the queue as usual.
 */
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import {
  FAN_PRE_ACCESS, type FanotifyEvent, closeFd, dataRangesOf, dupFd, mountErofsFileBacked, umountPath,
} from '../../../native/fscache/fanotify.ts';
import type { SystemError } from '../../../native/fscache/index.ts';
import { ConfigError, entryBodyFromFsConfig } from '../config.ts';
import type { ImageRegistry } from '../daemon.ts';
import type { BlobMap } from '../blob-map.ts';
import type { CacheFileKey, DaemonState } from '../state.ts';
import { BlobCacheFile, Limiter, WorkGuard, type CacheCounters } from '../blob-cache.ts';
import type { JournaledEvent, PendingEventJournal } from './fanotify-journal.ts';

/** What the session needs of the fanotify group (FanotifyGroup, or a fake in unit tests). */
export interface FanotifyPort {
  mark(path: string): void;
  unmark(path: string): void;
  respond(eventFd: number, errno: number): void;
  onEvents(handler: (events: FanotifyEvent[]) => void, onError: (err: SystemError) => void): void;
  stopEvents(): void;
}

/** A mount as the API and the command line ask for it; what is kept to serve it again after a restart. */
export interface FanotifyMountRequest {
  mountpoint: string;
  /** The bootstrap file. */
  bootstrap: string;
  /** nydusd's FUSE-mode config (parsed JSON): backend, cache work_dir, prefetch. */
  config: unknown;
}

const EIO = 5;

/** One blob's cache file, marked. */
interface MarkedFile {
  path: string;
  key: CacheFileKey;
  size: number;
  /** O_RDONLY, for SEEK_DATA/SEEK_HOLE (lseek raises no events) and for provoking an event. */
  probeFd: number;
  /** An fd whose writes raise no events (see the module comment); null until one is known. */
  writerFd: number | null;
  writerWaiters: Array<(fd: number) => void>;
  guard: WorkGuard;
  file: BlobCacheFile;
  map: BlobMap;
  /** Every chunk is in the file and the mark is gone: reads no longer raise events. */
  complete: boolean;
  /** A completeness check is scheduled. */
  checkPending: boolean;
  /** Chunks marked at the last check: while the count grows (read-ahead, prefetch) the check comes again. */
  lastCount: number;
}

/** A file is checked for completeness this long after an event (once per burst of events). */
const COMPLETE_CHECK_DELAY_MS = 100;

interface Mounted {
  request: FanotifyMountRequest;
  imageId: string;
  files: MarkedFile[];
}

const pwrite = promisify(fs.write);

async function writeAll(fd: number, data: Uint8Array, offset: number): Promise<void> {
  let done = 0;
  while (done < data.length) done += (await pwrite(fd, data, done, data.length - done, offset + done)).bytesWritten;
}

const inodeKey = (dev: number, ino: number) => `${dev}:${ino}`;

export class FanotifySession {
  private readonly mounts = new Map<string, Mounted>();
  private readonly byInode = new Map<string, MarkedFile>();
  private readonly byPath = new Map<string, string>();
  private readonly limiter: Limiter;
  readonly stats: CacheCounters & { events: number; eventBytes: number; eventErrors: number; recovered: number } = {
    events: 0, eventBytes: 0, eventErrors: 0, recovered: 0, prefetchedChunks: 0, staleMarks: 0,
  };

  constructor(
    private readonly group: FanotifyPort, private readonly registry: ImageRegistry, private readonly state: DaemonState,
    private readonly journal: PendingEventJournal, private readonly mountsFile: string, private readonly log: Logger, threads = 4,
  ) {
    this.limiter = new Limiter(Math.max(1, threads));
  }

  /** Serves the group's events from now on. */
  start(): void {
    this.group.onEvents((events) => {
      for (const e of events) this.event(e);
    }, (err) => this.log.warn({ err: err.message }, 'cannot read fanotify events'));
  }

  /** The mounts a previous worker made (kept in the mounts file), served again without mounting. */
  restore(): void {
    const mounted = mountedPaths();
    for (const request of readMounts(this.mountsFile)) {
      if (!mounted.has(request.mountpoint)) {
        this.log.warn({ mountpoint: request.mountpoint }, 'a mount of the previous worker is gone; not serving it');
        continue;
      }
      try {
        this.attach(request, true);
      } catch (e) {
        this.log.error({ mountpoint: request.mountpoint, err: (e as Error).message }, 'cannot serve a mount of the previous worker');
      }
    }
    this.saveMounts();
  }

  /**
   * Fills and answers what a dead predecessor read and left unanswered (call after restore(), before
   * start()). `reserved` are the numbers the caller held for them (reserveFdNumber) before opening
   * anything: a new event must not take one meanwhile, since the kernel matches answers by number.
   */
  recover(pending: readonly JournaledEvent[], reserved: ReadonlyMap<number, () => void>): void {
    for (const p of pending) {
      const release = reserved.get(p.fd) ?? (() => undefined);
      const f = this.byInode.get(inodeKey(p.dev, p.ino));
      this.stats.recovered++;
      if (!f) {
        this.log.warn({ fd: p.fd }, "a predecessor's event is about a file no mount uses; answered EIO");
        this.answer(p.fd, EIO, false);
        release();
        continue;
      }
      this.log.info({ fd: p.fd, file: f.path, offset: p.offset, count: p.count }, "serving a predecessor's event");
      void this.serve(f, p.fd, p.offset, p.count, false).finally(release);
    }
  }

  /** POST /api/v1/mount, or the command line's --bootstrap/--mountpoint. */
  mount(request: FanotifyMountRequest): void {
    const req = { ...request, mountpoint: path.resolve(request.mountpoint), bootstrap: path.resolve(request.bootstrap) };
    if (this.mounts.has(req.mountpoint)) throw new ConfigError(`${req.mountpoint} is already mounted by this daemon`);
    if (!fs.statSync(req.mountpoint, { throwIfNoEntry: false })?.isDirectory()) throw new ConfigError(`mountpoint ${req.mountpoint} is not a directory`);
    this.attach(req, false);
    const m = this.mounts.get(req.mountpoint)!;
    try {
      mountErofsFileBacked(req.bootstrap, m.files.map((f) => f.path), req.mountpoint);
    } catch (e) {
      this.detach(m);
      throw e;
    }
    this.saveMounts();
    this.log.info({ mountpoint: req.mountpoint, bootstrap: req.bootstrap, blobs: m.files.length }, 'mounted');
  }

  /** DELETE /api/v1/mount: unmounts, removes the marks, closes the files once their work drained. */
  umount(mountpoint: string): void {
    const m = this.mounts.get(path.resolve(mountpoint));
    if (!m) throw new ConfigError(`${mountpoint} is not mounted by this daemon`);
    umountPath(m.request.mountpoint);
    this.detach(m);
    this.saveMounts();
    this.log.info({ mountpoint: m.request.mountpoint }, 'unmounted');
  }

  /** Every mountpoint served, in mount order. */
  list(): string[] {
    return [...this.mounts.keys()];
  }

  /**
   * The daemon stops: every mount is unmounted, events still answered meanwhile. A busy mount is not
   * detached lazily: once the daemon is gone its unfetched ranges would read as zeros (the group's
   * release allows every access). It is tried again until it is free; then the promise settles.
   */
  async close(): Promise<void> {
    for (let tries = 0; this.mounts.size; tries++) {
      for (const mp of [...this.mounts.keys()]) {
        try {
          this.umount(mp);
        } catch (e) {
          if (tries % 20 === 0) this.log.error({ mountpoint: mp, err: (e as Error).message }, 'cannot unmount; still serving it until it is free');
        }
      }
      if (this.mounts.size) await new Promise((r) => setTimeout(r, 500));
    }
    this.group.stopEvents();
  }

  private attach(req: FanotifyMountRequest, restored: boolean): void {
    const imageId = `fanotify-${crypto.createHash('sha256').update(req.mountpoint).digest('hex').slice(0, 16)}`;
    const entry = this.registry.add(entryBodyFromFsConfig(req.config, req.bootstrap, imageId), false);
    const m: Mounted = { request: req, imageId, files: [] };
    this.mounts.set(req.mountpoint, m);
    try {
      for (const blobId of this.registry.blobsOf(imageId)) m.files.push(this.markCacheFile(entry.workDir, imageId, blobId, restored, req.mountpoint));
    } catch (e) {
      this.detach(m);
      throw e;
    }
  }

  private markCacheFile(workDir: string, imageId: string, blobId: string, restored: boolean, mountpoint: string): MarkedFile {
    const resolved = this.registry.resolve(imageId, blobId);
    if (resolved?.kind !== 'blob') throw new Error(`blob ${blobId} of image ${imageId} cannot be resolved`);
    const { map, fetcher, prefetch } = resolved;
    const file = path.join(workDir, `${blobId}.blob.data`);
    const user = this.byPath.get(file);
    if (user) throw new ConfigError(`cache file ${file} is in use by the mount at ${user}: give each mount its own cache work_dir`);
    const key: CacheFileKey = { volume: `fanotify,${workDir}`, cookie: blobId };
    let writerFd: number | null = null;
    if (!restored) {
      // Opened before the mark: its writes raise no events.
      writerFd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
      if (fs.fstatSync(writerFd).size !== map.uncompressedSize) {
        fs.ftruncateSync(writerFd, 0);
        fs.ftruncateSync(writerFd, map.uncompressedSize);
        this.state.clear(key);
      }
    }
    let probeFd = -1;
    try {
      this.group.mark(file);
      probeFd = fs.openSync(file, fs.constants.O_RDONLY);
    } catch (e) {
      if (writerFd !== null) fs.closeSync(writerFd);
      throw e;
    }
    const st = fs.fstatSync(probeFd);
    const guard = new WorkGuard(() => {
      fs.closeSync(f.probeFd);
      if (f.writerFd !== null) closeFd(f.writerFd);
    });
    const f: MarkedFile = {
      path: file, key, size: map.uncompressedSize, probeFd, writerFd, writerWaiters: [], guard, file: undefined!, map, complete: false, checkPending: false, lastCount: -1,
    };
    f.file = new BlobCacheFile(key, map, fetcher, {
      write: async (offset, data) => writeAll(await this.writer(f), data, offset),
      dataRanges: (from, to) => dataRangesOf(f.probeFd, from, to),
    }, guard, this.state, this.stats, this.log);
    this.byInode.set(inodeKey(st.dev, st.ino), f);
    this.byPath.set(file, mountpoint);
    f.file.start(prefetch);
    this.unmarkIfComplete(f);
    return f;
  }

  private detach(m: Mounted): void {
    for (const f of m.files) {
      try {
        if (!f.complete) this.group.unmark(f.path);
      } catch (e) {
        this.log.warn({ file: f.path, err: (e as Error).message }, 'cannot remove the mark');
      }
      for (const [k, v] of this.byInode) if (v === f) this.byInode.delete(k);
      this.byPath.delete(f.path);
      f.guard.close();
    }
    this.mounts.delete(m.request.mountpoint);
    void this.registry.remove({ domainId: '', id: m.imageId });
  }

  /**
   * Once a cache file holds every chunk its mark only costs an event per read: it is removed, and the
   * kernel reads the file directly. The file itself has the last word (SEEK_DATA/SEEK_HOLE over every
   * chunk), never the chunk marks alone: a hole left unmarked would read as zeros.
   */
  private unmarkIfComplete(f: MarkedFile): void {
    f.checkPending = false;
    if (f.complete || f.guard.closed) return;
    const marked = this.state.count(f.key);
    if (marked < f.map.chunkCount) {
      if (marked !== f.lastCount) this.scheduleCompleteCheck(f);
      f.lastCount = marked;
      return;
    }
    const ranges = dataRangesOf(f.probeFd, 0, f.size);
    const holds = (start: number, end: number) => ranges.some(([s, e]) => s <= start && e >= end);
    if (!f.map.all().every((c) => holds(c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize))) return;
    try {
      this.group.unmark(f.path);
      f.complete = true;
      this.log.info({ file: f.path }, 'cache file complete; its mark is removed');
    } catch (e) {
      this.log.warn({ file: f.path, err: (e as Error).message }, 'cannot remove the mark of a complete cache file');
    }
  }

  private scheduleCompleteCheck(f: MarkedFile): void {
    if (f.checkPending || f.complete) return;
    f.checkPending = true;
    setTimeout(() => this.unmarkIfComplete(f), COMPLETE_CHECK_DELAY_MS).unref();
  }

  /** The file's writer fd; when there is none yet, one event for the file is provoked (module comment). */
  private writer(f: MarkedFile): Promise<number> {
    if (f.writerFd !== null) return Promise.resolve(f.writerFd);
    return new Promise((resolve) => {
      f.writerWaiters.push(resolve);
      if (f.writerWaiters.length > 1) return;
      fs.read(f.probeFd, Buffer.alloc(1), 0, 1, 0, (err) => {
        if (err) this.log.debug({ file: f.path, err: err.message }, 'the read that provoked an event failed');
      });
    });
  }

  private setWriter(f: MarkedFile, fd: number): void {
    f.writerFd = fd;
    for (const w of f.writerWaiters.splice(0)) w(fd);
  }

  private event(e: FanotifyEvent): void {
    if (e.fd < 0) {
      this.log.error({ mask: e.mask }, 'fanotify event without an fd (queue overflow?)');
      return;
    }
    let st: fs.Stats;
    try {
      st = fs.fstatSync(e.fd);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'cannot stat an event fd; answered EIO');
      this.respond(e.fd, EIO);
      closeFd(e.fd);
      return;
    }
    this.journal.add({ fd: e.fd, dev: st.dev, ino: st.ino, offset: e.offset, count: e.count });
    const f = this.byInode.get(inodeKey(st.dev, st.ino));
    if (!(e.mask & FAN_PRE_ACCESS)) {
      this.answer(e.fd, 0, true);
      return;
    }
    if (!f || f.guard.closed) {
      this.log.warn({ pid: e.pid, offset: e.offset }, 'event on a file no mount uses; answered EIO');
      this.answer(e.fd, EIO, true);
      return;
    }
    if (f.writerFd === null) {
      try {
        this.setWriter(f, dupFd(e.fd));
      } catch (err) {
        this.log.error({ file: f.path, err: (err as Error).message }, 'cannot keep an event fd for writes; answered EIO');
        this.answer(e.fd, EIO, true);
        return;
      }
    }
    // Without a range record (never seen for reads), the whole file.
    void (e.offset < 0 ? this.serve(f, e.fd, 0, f.size, true) : this.serve(f, e.fd, e.offset, e.count, true));
  }

  /** Fills the range, then answers: allowed only when every chunk of it is in the file. */
  private async serve(f: MarkedFile, fd: number, offset: number, count: number, ownFd: boolean): Promise<void> {
    this.stats.events++;
    let errno = 0;
    try {
      await this.limiter.run(() => f.guard.use(() => f.file.fill(offset, count)));
      // A file closed meanwhile skipped its writes: its holes must not be allowed.
      if (f.guard.closed) throw new Error('the mount was removed while the range was being filled');
      this.stats.eventBytes += count;
      this.scheduleCompleteCheck(f);
    } catch (e) {
      errno = EIO;
      this.stats.eventErrors++;
      this.log.error({ file: f.path, offset, count, err: (e as Error).message }, 'range cannot be served; the reader gets EIO');
    }
    this.answer(fd, errno, ownFd);
  }

  /** Answers an event, closes its fd when it is ours, and clears it from the journal. */
  private answer(fd: number, errno: number, ownFd: boolean): void {
    this.respond(fd, errno);
    if (ownFd) closeFd(fd);
    this.journal.done(fd);
  }

  private respond(fd: number, errno: number): void {
    try {
      this.group.respond(fd, errno);
    } catch (e) {
      // ENOENT: no such pending event (a predecessor answered it before dying).
      this.log.warn({ fd, errno, err: (e as Error).message }, 'fanotify response failed');
    }
  }

  private saveMounts(): void {
    const tmp = `${this.mountsFile}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify([...this.mounts.values()].map((m) => m.request)), { mode: 0o600 });
    fs.renameSync(tmp, this.mountsFile);
  }
}

function readMounts(file: string): FanotifyMountRequest[] {
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8'));
    return Array.isArray(v) ? v : [];
  } catch {
    return [];
  }
}

/** The mount points of this mount namespace (/proc/self/mountinfo's fifth field, octal escapes undone). */
function mountedPaths(): Set<string> {
  const out = new Set<string>();
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4];
    if (mp) out.add(mp.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8))));
  }
  return out;
}
