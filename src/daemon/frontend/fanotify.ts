/**
 * FanotifySession: the fanotify pre-content front end (Linux 6.14+, no cachefiles on-demand needed).
 *   mount   -> the image registered; per blob a sparse cache file `<work_dir>/<blob id>.blob.data` of
 *              the blob's uncompressed size, marked FAN_PRE_ACCESS (or the file another mount of the
 *              same work_dir already serves: SharedCacheFile); EROFS mounted file-backed with the
 *              bootstrap as source and the cache files as `device=`, in blob table order
 *   event   -> the blob's BlobCacheFile fills the range (fetch, verify, write, mark) -> FAN_ALLOW;
 *              a range that cannot be served -> FAN_DENY_ERRNO(EIO): the reader gets EIO, never zeros
 *   umount  -> umount2; the files no other mount uses unmarked, their fds closed once their work drained
 *
 * How cache files are written without raising events of their own, and unmarked once complete:
 * fanotify-cache-file.ts.
 *
 * Restart: the supervisor keeps the group fd (run.ts), so a dead worker does not release the group
 * (fanotify_release answers every pending event FAN_ALLOW: readers would see holes as zeros) and the
 * marks stay. Events the worker had read and not answered are in the PendingEventJournal; the next
 * worker fills their ranges and answers them by fd number, then serves the queue as usual.
 */
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import { FAN_PRE_ACCESS, type EventJournal, type FanotifyEvent, closeFd, mountErofsFileBacked, umountPath } from '../../../native/fscache/fanotify.ts';
import { type SystemError, fscacheBinding } from '../../../native/fscache/index.ts';
import { ConfigError, absolutePathField, entryBodyFromFsConfig } from '../config.ts';
import type { ImageRegistry } from '../daemon.ts';
import type { DaemonState } from '../state.ts';
import { Limiter, type CacheCounters } from '../blob-cache.ts';
import { MarkedCacheFile, inodeKey, type MarkPort } from './fanotify-cache-file.ts';
import type { JournaledEvent, PendingEventJournal } from './fanotify-journal.ts';
import { badPathText, pseudoFsOf } from '../log.ts';
import { listedMountState, lockFile, readMountsFile } from '../run.ts';
import { RepeatedFailures, heldBack } from '../repeated-failure.ts';

/** What the session needs of the fanotify group (FanotifyGroup, or a fake in unit tests). */
export interface FanotifyPort extends MarkPort {
  respond(eventFd: number, errno: number): void;
  /** Each event delivered with an fd and not answered is in `journal` by then. */
  onEvents(handler: (events: FanotifyEvent[]) => void, onError: (err: SystemError) => void, journal: EventJournal): void;
  stopEvents(): void;
}

/** A mount as the API and the command line ask for it; what is kept to serve it again after a restart. */
export interface FanotifyMountRequest {
  mountpoint: string;
  /** The bootstrap file. */
  bootstrap: string;
  /** nydusd's FUSE-mode config (parsed: JSON or TOML, parseConfigText): backend, cache work_dir, prefetch. */
  config: unknown;
}

const EIO = 5;
const STOPPING = 'the daemon is stopping: no new mounts';
/** Why a relative path is refused (said after "must be an absolute path"). */
const NO_CWD = " (the daemon's working directory is no base for it)";

interface Mounted {
  request: FanotifyMountRequest;
  imageId: string;
  files: MarkedCacheFile[];
  /** The mount's device number (st_dev of its root): what is at the mountpoint later is ours only if it matches. */
  dev?: number;
  /** The bootstrap file the mount was made of (bootstrapIdentity): a successor serves it only while that file is the same. */
  bootstrapId?: string;
  /** When this worker began serving it. */
  servedSince: Date;
}

/**
 * What tells a bootstrap file from one put in its place or rewritten: its inode and its size and
 * times to the nanosecond. An EROFS mount reads the file it was made of, which a successor cannot
 * open by path once another is renamed over it; served with the other's chunk map, its reads
 * would get another image's bytes.
 */
function bootstrapIdentity(file: string): string {
  const st = fs.statSync(file, { bigint: true });
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** The lock a daemon holds on each cache work_dir it serves mounts from (WORK_DIR_LOCK in it). */
interface WorkDirLock {
  fd: number;
  /** The mountpoints whose image's cache is there. */
  users: Set<string>;
}

/**
 * flock(2)ed by the daemon serving mounts from a work_dir. Two daemons (two groups) marking one
 * cache file deadlock: each one's writes, through fds opened after the other's mark, raise events
 * of the other group, which waits on its own.
 */
export const WORK_DIR_LOCK = 'nydusd-fanotify.lock';

/**
 * A marked cache file and the mounts that read it: mounts of one image, or of images that share the
 * blob (a common base layer), in one work_dir share its file, so that a chunk is fetched and stored
 * once. It runs on the chunk map, backend and prefetch of the image whose mount made it, or of the
 * last one that brought chunks of the blob the file's map lacked (MarkedCacheFile.join); those
 * images stay registered while the file is open, after their own mounts are gone.
 */
interface SharedCacheFile {
  file: MarkedCacheFile;
  /** The mountpoints of the mounts that use it. */
  users: Set<string>;
  /** The images it has run on. */
  images: Set<string>;
}


/**
 * Open files a mount needs left free: its cache files and blobs take a few, and the reads and the API
 * need room beside them. Out of fds, accepted mounts read EIO and libuv closes every API connection
 * unanswered (DELETE included): a mount is refused while fewer than this are free.
 */
const FD_HEADROOM = 64;

function refuseWithoutFds(): void {
  const [soft] = fscacheBinding().nofileLimit();
  if (soft < 0) return;
  const open = fs.readdirSync('/proc/self/fd').length;
  if (soft - open < FD_HEADROOM) {
    throw new ConfigError(`the daemon has ${open} of its ${soft} open files in use, and a mount needs ${FD_HEADROOM} free: unmount others, or raise its limit (--rlimit-nofile, the service's LimitNOFILE)`);
  }
}

export class FanotifySession {
  private readonly mounts = new Map<string, Mounted>();
  /** Mountpoints whose registration is under way. */
  private readonly mounting = new Set<string>();
  /** close() was called: no mount is made from then on. */
  private closing = false;
  /** Ranges that could not be served, told once a minute per file and error (a full cache disk fails every event). */
  private readonly rangeFailures = new RepeatedFailures();
  /** The cache files served, by inode (inodeKey): one file, whichever path a work_dir names it by. */
  private readonly files = new Map<string, SharedCacheFile>();
  /** The work_dirs locked, by real path. */
  private readonly workDirLocks = new Map<string, WorkDirLock>();
  private readonly limiter: Limiter;
  /** `answeredInAddon`: events the addon allowed as it read them (their blocks were in the file). */
  readonly stats: CacheCounters & { events: number; eventBytes: number; eventErrors: number; recovered: number; answeredInAddon: number } = {
    events: 0, eventBytes: 0, eventErrors: 0, recovered: 0, answeredInAddon: 0, prefetchedChunks: 0, staleMarks: 0, chunksWrittenByVerifier: 0,
  };

  constructor(
    private readonly group: FanotifyPort, private readonly registry: ImageRegistry, private readonly state: DaemonState,
    private readonly journal: PendingEventJournal, private readonly mountsFile: string, private readonly log: Logger, threads = 4,
    /** Paths of the daemon's own that no mount may hide (its state directory, API socket, log file), with what each is. */
    private readonly guarded: ReadonlyArray<{ path: string; what: string }> = [],
  ) {
    this.limiter = new Limiter(Math.max(1, threads));
  }

  /** Serves the group's events from now on. */
  start(): void {
    this.group.onEvents((events) => {
      for (const e of events) {
        try {
          this.event(e);
        } catch (err) {
          // Never left unanswered: its reader would wait for good (answering twice only fails ENOENT).
          this.log.error({ fd: e.fd, offset: e.offset, count: e.count, err: (err as Error).message }, 'cannot handle a fanotify event; answered EIO');
          if (!e.answered && e.fd >= 0) this.answer(e.fd, EIO, true);
        }
      }
    }, (err) => this.log.warn({ err: err.message }, 'cannot read fanotify events'), this.journal.native);
  }

  /**
   * The mounts a previous worker made (kept in the mounts file), served again without mounting: those
   * still there as it made them (the image's EROFS, of the device it recorded), even under another
   * mount. `fresh`: the previous worker's daemon is gone with its group (killed with its supervisor),
   * which allowed every read of its mounts from then on, holes as zeros: this daemon's group marks
   * their cache files again, so that they are served from now on.
   *
   * A mount that cannot be served (its cache file or bootstrap gone or changed) is unmounted; when it
   * is busy or covered it stays listed, every read of it failing EIO, until DELETE or the daemon's
   * stop can unmount it (a lazy detach would leave open files reading through nobody: zeros).
   */
  async restore(fresh = false): Promise<void> {
    const predecessor = fresh ? 'a daemon that was killed without unmounting it' : 'the previous worker';
    for (const { dev, bootstrapId, ...listed } of readMountsFile<FanotifyMountRequest & { bootstrapId?: string }>(this.mountsFile)) {
      const request: FanotifyMountRequest = { mountpoint: listed.mountpoint, bootstrap: listed.bootstrap, config: listed.config };
      const state = listedMountState({ mountpoint: request.mountpoint, bootstrap: request.bootstrap, dev });
      if (state === 'absent') {
        this.log.warn({ mountpoint: request.mountpoint }, `a mount of ${predecessor} is gone; not serving it`);
        continue;
      }
      const at = state === 'top' ? fs.statSync(request.mountpoint).dev : dev;
      try {
        if (bootstrapId !== undefined && bootstrapIdentity(request.bootstrap) !== bootstrapId) {
          throw new Error(`its bootstrap ${request.bootstrap} was replaced or changed since it was mounted (the mount reads the former file)`);
        }
        await this.attach(request, true);
        const m = this.mounts.get(request.mountpoint)!;
        m.dev = at;
        m.bootstrapId = bootstrapId;
        if (fresh) this.log.warn({ mountpoint: request.mountpoint }, `a mount of ${predecessor}: served again; what was read of it meanwhile may have read its unfetched ranges as zeros`);
      } catch (e) {
        const why = e instanceof Error && 'code' in e && e.code === 'ENOENT' ? `${(e as Error).message} (a cache file is gone: was its work_dir removed?)` : (e as Error).message;
        this.log.error({ mountpoint: request.mountpoint, err: why }, `cannot serve a mount of ${predecessor}; it is unmounted, its reads failing EIO until then`);
        // Listed with no image and no files: its reads fail EIO ('event on a file no mount serves').
        this.mounts.set(request.mountpoint, { request, imageId: '', files: [], dev: at, bootstrapId, servedSince: new Date() });
        try {
          this.umount(request.mountpoint);
        } catch (err) {
          this.log.error({ mountpoint: request.mountpoint, err: (err as Error).message }, 'cannot unmount it yet: kept listed until DELETE or the daemon\'s stop can');
        }
      }
    }
    this.saveMountsOrLog('after taking over');
  }

  /**
   * Fills and answers what a dead predecessor read and left unanswered (call after restore(), before
   * start()). `reserved` are the numbers the caller held for them (reserveFdNumber) before opening
   * anything: a new event must not take one meanwhile, since the kernel matches answers by number.
   * An event whose number could not be held is answered EIO now, before any new event is read.
   */
  recover(pending: readonly JournaledEvent[], reserved: ReadonlyMap<number, () => void>): void {
    for (const p of pending) {
      const release = reserved.get(p.fd);
      const f = this.files.get(inodeKey(p.dev, p.ino))?.file;
      this.stats.recovered++;
      if (!release) {
        this.answer(p.fd, EIO, false);
        continue;
      }
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

  /**
   * POST /api/v1/mount, or the command line's --bootstrap/--mountpoint. Both paths absolute; the
   * mountpoint (symbolic links resolved) a directory on a file system of files, hiding none of the
   * daemon's own paths, the bootstrap or the cache: anything else is a ConfigError naming it.
   */
  async mount(request: FanotifyMountRequest): Promise<void> {
    const asked = absolutePathField(request.mountpoint, 'mountpoint', NO_CWD);
    const bootstrap = absolutePathField(request.bootstrap, 'bootstrap', NO_CWD);
    let mountpoint: string;
    try {
      mountpoint = fs.realpathSync(asked);
    } catch (e) {
      throw new ConfigError(`mountpoint ${asked} cannot be used: ${(e as Error).message}`);
    }
    const req = { ...request, mountpoint, bootstrap };
    if (this.closing) throw new ConfigError(STOPPING);
    if (this.mounts.has(mountpoint) || this.mounting.has(mountpoint)) throw new ConfigError(`${mountpoint} is already mounted by this daemon`);
    if (!fs.statSync(mountpoint).isDirectory()) throw new ConfigError(`mountpoint ${asked} is not a directory`);
    const pseudo = pseudoFsOf(mountpoint);
    if (pseudo) throw new ConfigError(`mountpoint ${asked} is on ${pseudo}, a pseudo file system: a mount there would hide the kernel's files`);
    let boot: fs.Stats | undefined;
    try {
      boot = fs.statSync(bootstrap, { throwIfNoEntry: false });
    } catch (e) {
      throw new ConfigError(`bootstrap ${bootstrap} cannot be used: ${(e as Error).message}`);
    }
    if (!boot) throw new ConfigError(`bootstrap ${bootstrap} does not exist`);
    if (!boot.isFile()) throw new ConfigError(`bootstrap ${bootstrap} is not a regular file`);
    this.refuseHiding(mountpoint, asked, [...this.guarded, { path: bootstrap, what: 'the bootstrap' }]);
    refuseWithoutFds();
    // Registration validates the bootstrap on another thread: no second mount of this path meanwhile.
    this.mounting.add(mountpoint);
    try {
      await this.attach(req, false);
    } finally {
      this.mounting.delete(mountpoint);
    }
    const m = this.mounts.get(mountpoint)!;
    try {
      // The daemon began to stop while the image was registered: a mount made now would outlive it.
      if (this.closing) throw new ConfigError(STOPPING);
      const workDir = this.registry.list().find((e) => e.id === m.imageId)?.workDir;
      if (workDir) this.refuseHiding(mountpoint, asked, [{ path: workDir, what: 'the cache work_dir' }]);
      // Listed before mount(2): a worker that dies right after it leaves a mount its successor knows.
      m.bootstrapId = bootstrapIdentity(req.bootstrap);
      this.saveMounts();
      mountErofsFileBacked(req.bootstrap, m.files.map((f) => f.path), req.mountpoint);
      m.dev = fs.statSync(req.mountpoint).dev;
    } catch (e) {
      this.detach(m);
      this.saveMountsOrLog('after a failed mount');
      throw e;
    }
    this.saveMountsOrLog('after a mount');
    this.log.info({ mountpoint: req.mountpoint, bootstrap: req.bootstrap, blobs: m.files.length }, 'mounted');
  }

  /** A ConfigError when a mount at `mountpoint` would hide one of `paths` (it is that path or lies under it). */
  private refuseHiding(mountpoint: string, asked: string, paths: ReadonlyArray<{ path: string; what: string }>): void {
    for (const g of paths) {
      const p = realPathOf(g.path);
      if (p === mountpoint || p.startsWith(mountpoint === '/' ? '/' : `${mountpoint}/`)) {
        throw new ConfigError(`mountpoint ${asked} would hide ${g.what} (${g.path}): mount somewhere else`);
      }
    }
  }

  /** DELETE /api/v1/mount: unmounts; the files no other mount uses are unmarked and closed once their work drained. */
  umount(mountpoint: string): void {
    const m = this.mountAt(mountpoint);
    if (!m) throw new ConfigError(`${mountpoint} is not mounted by this daemon`);
    // Unmounted by someone else (umount(8)): nothing is left to unmount, and what may be mounted
    // there later (another device) is not ours to take down. Covered by another mount: it cannot be
    // unmounted by its path, and unserved it would read holes as zeros once the other goes: refused.
    const state = listedMountState({ mountpoint: m.request.mountpoint, bootstrap: m.request.bootstrap, dev: m.dev });
    if (state === 'under') {
      throw new Error(`${m.request.mountpoint} has another mount over it: unmount that one first (this one is served until then)`);
    }
    if (state === 'top') umountPath(m.request.mountpoint);
    else this.log.warn({ mountpoint: m.request.mountpoint }, 'the mount is gone (unmounted by someone else); no longer serving it');
    this.detach(m);
    this.saveMountsOrLog('after an unmount');
    this.log.info({ mountpoint: m.request.mountpoint }, 'unmounted');
  }

  /** A mount by the path it was asked with or its real path (mounts are kept by their real paths). */
  private mountAt(mountpoint: string): Mounted | undefined {
    const m = this.mounts.get(path.resolve(mountpoint));
    if (m || badPathText(mountpoint)) return m;
    try {
      return this.mounts.get(fs.realpathSync(mountpoint));
    } catch {
      return undefined;
    }
  }

  /** The image id a mountpoint's image is registered under (its access trace's id). */
  imageIdOf(mountpoint: string): string | undefined {
    return this.mountAt(mountpoint)?.imageId;
  }

  /**
   * What this daemon serves at `mountpoint` (a path as asked, symbolic links resolved): `'same'` the
   * image of `bootstrap`, `'other'` another one, null nothing.
   */
  servesAt(mountpoint: string, bootstrap: string): 'same' | 'other' | null {
    let real: string;
    try {
      real = fs.realpathSync(mountpoint);
    } catch {
      return null;
    }
    const m = this.mounts.get(real);
    if (!m) return null;
    return path.resolve(m.request.bootstrap) === path.resolve(bootstrap) ? 'same' : 'other';
  }

  /** Every mountpoint served, in mount order. */
  list(): string[] {
    return [...this.mounts.keys()];
  }

  /** Every mount served, in mount order: its mountpoint, image and since when this worker serves it. */
  served(): Array<{ mountpoint: string; imageId: string; since: Date }> {
    return [...this.mounts].map(([mountpoint, m]) => ({ mountpoint, imageId: m.imageId, since: m.servedSince }));
  }

  /**
   * The daemon stops: every mount is unmounted, events still answered meanwhile. A busy mount is not
   * detached lazily: once the daemon is gone its unfetched ranges would read as zeros (the group's
   * release allows every access). It is tried again until it is free; then the promise settles.
   */
  async close(): Promise<void> {
    this.closing = true;
    // A mount under way ends first (refused before its mount(2)), so that none is made after this.
    while (this.mounting.size) await new Promise((r) => setTimeout(r, 20));
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

  private async attach(req: FanotifyMountRequest, restored: boolean): Promise<void> {
    // (The id of the mountpoint's last image while a cache file another mount shares still runs on it: a suffix.)
    const base = `fanotify-${crypto.createHash('sha256').update(req.mountpoint).digest('hex').slice(0, 16)}`;
    const taken = new Set([...this.files.values()].flatMap((f) => [...f.images]));
    let imageId = base;
    for (let n = 2; taken.has(imageId); n++) imageId = `${base}-${n}`;
    const entry = await this.registry.add(entryBodyFromFsConfig(req.config, req.bootstrap, imageId), false, 'fs-config');
    const m: Mounted = { request: req, imageId, files: [], servedSince: new Date() };
    this.mounts.set(req.mountpoint, m);
    try {
      this.lockWorkDir(entry.workDir, req.mountpoint);
      for (const blobId of this.registry.blobsOf(imageId)) m.files.push(this.markCacheFile(entry.workDir, imageId, blobId, restored, req.mountpoint));
    } catch (e) {
      this.detach(m);
      throw e;
    }
  }

  private markCacheFile(workDir: string, imageId: string, blobId: string, restored: boolean, mountpoint: string): MarkedCacheFile {
    const resolved = this.registry.resolve(imageId, blobId);
    if (resolved?.kind !== 'blob') throw new Error(`blob ${blobId} of image ${imageId} cannot be resolved`);
    const file = path.join(workDir, `${blobId}.blob.data`);
    const st = fs.statSync(file, { throwIfNoEntry: false });
    const shared = st ? this.files.get(inodeKey(st.dev, st.ino)) : undefined;
    if (shared) {
      // (Its events cannot tell which mount read: they are traced in the image the file runs on.)
      if (shared.file.join(resolved)) shared.images.add(imageId);
      shared.users.add(mountpoint);
      return shared.file;
    }
    const f = new MarkedCacheFile(file, resolved, restored, this.group, this.state, this.stats, this.log);
    this.files.set(f.inode, { file: f, users: new Set([mountpoint]), images: new Set([imageId]) });
    return f;
  }

  /**
   * Takes this daemon's lock on a work_dir for a mount (once per work_dir, however many mounts use
   * it), or a ConfigError naming the daemon that holds it.
   */
  private lockWorkDir(workDir: string, mountpoint: string): void {
    const dir = realPathOf(workDir);
    const held = this.workDirLocks.get(dir);
    if (held) {
      held.users.add(mountpoint);
      return;
    }
    // (The work_dir is there: the image's registration made it.)
    const file = path.join(dir, WORK_DIR_LOCK);
    const lock = lockFile(file, `cache work_dir ${workDir}`);
    if (!('fd' in lock)) {
      throw new ConfigError(`cache work_dir ${workDir} is served by another nydusd${lock.owner} (it holds ${file}): `
        + 'two daemons cannot mark one cache file; give each daemon its own work_dir');
    }
    this.workDirLocks.set(dir, { fd: lock.fd, users: new Set([mountpoint]) });
  }

  private unlockWorkDirs(mountpoint: string): void {
    for (const [dir, lock] of this.workDirLocks) {
      if (!lock.users.delete(mountpoint) || lock.users.size) continue;
      this.workDirLocks.delete(dir);
      fs.closeSync(lock.fd);
    }
  }

  /** The mount is no longer served: the cache files no other mount uses are closed, its image forgotten once no file runs on it. */
  private detach(m: Mounted): void {
    this.mounts.delete(m.request.mountpoint);
    // (A cache file another mount shares keeps the lock through that mount's own use of the work_dir.)
    this.unlockWorkDirs(m.request.mountpoint);
    // (A broken mount, served by no image.)
    const images = new Set(m.imageId ? [m.imageId] : []);
    for (const f of m.files) {
      const shared = this.files.get(f.inode)!;
      shared.users.delete(m.request.mountpoint);
      if (shared.users.size) continue;
      this.files.delete(f.inode);
      f.close();
      for (const id of shared.images) images.add(id);
    }
    for (const id of images) {
      if ([...this.mounts.values()].some((o) => o.imageId === id) || [...this.files.values()].some((o) => o.images.has(id))) continue;
      // (Unmounted whatever the state database says: a failure to forget the image there is logged, and
      // a restarted daemon finds it registered with nothing mounted.)
      this.registry.remove({ domainId: '', id }).catch((e: Error) => {
        this.log.error({ mountpoint: m.request.mountpoint, image: id, err: e.message }, 'cannot forget the unmounted image in the state database');
      });
    }
  }

  private event(e: FanotifyEvent): void {
    if (e.fd < 0) {
      this.log.error({ mask: e.mask }, 'fanotify event without an fd (queue overflow?)');
      return;
    }
    if (e.dev < 0) {
      this.log.error({ fd: e.fd }, 'cannot stat an event fd; answered EIO');
      this.answer(e.fd, EIO, true);
      return;
    }
    const f = this.files.get(inodeKey(e.dev, e.ino))?.file;
    if (e.answered) {
      // Allowed by the addon (its bytes are in the file); what is left is what follows a read.
      this.stats.events++;
      this.stats.answeredInAddon++;
      this.stats.eventBytes += e.count;
      if (f && !f.closed) this.afterRead(f, e);
      return;
    }
    // (The reader thread has put the event in the journal.) A read from the end of the file on (by
    // anyone: the file is marked) has nothing to wait for.
    const fast = f !== undefined && !f.closed && (e.mask & FAN_PRE_ACCESS) !== 0 && e.offset >= 0 && (e.offset >= f.size || f.rangeCached(e.offset, e.count));
    if (!(e.mask & FAN_PRE_ACCESS)) {
      this.answer(e.fd, 0, true);
      return;
    }
    if (!f || f.closed) {
      this.log.warn({ file: fdPath(e.fd), pid: e.pid, offset: e.offset }, 'event on a file no mount serves; answered EIO');
      this.answer(e.fd, EIO, true);
      return;
    }
    try {
      f.adoptEventFd(e.fd);
    } catch (err) {
      this.log.error({ file: f.path, err: (err as Error).message }, 'cannot keep an event fd for writes; answered EIO');
      this.answer(e.fd, EIO, true);
      return;
    }
    if (fast) {
      this.stats.events++;
      this.stats.eventBytes += e.count;
      this.answer(e.fd, 0, true);
      this.afterRead(f, e);
      return;
    }
    if (e.pid !== process.pid && e.offset >= 0) f.trace?.record(e.offset, e.count);
    // Without a range record (never seen for reads), the whole file.
    void (e.offset < 0 ? this.serve(f, e.fd, 0, f.size, true) : this.serve(f, e.fd, e.offset, e.count, true));
  }

  /**
   * A read of bytes in the file: traced when it is a demand read (another process's: our own provokes
   * events to get a writer fd), and filled, which keeps the amplification window ahead of the reader.
   */
  private afterRead(f: MarkedCacheFile, e: FanotifyEvent): void {
    if (e.offset >= f.size) return;
    // The event is answered and its fd closed already: a failure here must not reach start()'s catch,
    // which would answer and close that fd number again (by now maybe another event's).
    try {
      if (e.pid !== process.pid && e.offset >= 0) f.trace?.record(e.offset, e.count);
      f.readOn(e.offset, e.count);
    } catch (err) {
      this.log.error({ file: f.path, offset: e.offset, count: e.count, err: (err as Error).message }, 'cannot follow an answered read');
    }
  }

  /** Fills the range, then answers: allowed only when every chunk of it is in the file. */
  private async serve(f: MarkedCacheFile, fd: number, offset: number, count: number, ownFd: boolean): Promise<void> {
    this.stats.events++;
    let errno = 0;
    try {
      await this.limiter.run(() => f.fill(offset, count));
      this.stats.eventBytes += count;
    } catch (e) {
      errno = EIO;
      this.stats.eventErrors++;
      const err = (e as Error).message;
      const told = this.rangeFailures.occur(`${f.path}\0${err}`);
      if (told) this.log.error({ file: f.path, offset, count, err, ...heldBack(told.held) }, 'range cannot be served; the reader gets EIO');
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

  /** The mounts file: each mount's request and its device once mounted (what run.ts's FanotifyHold reads if the daemon gives up). */
  private saveMounts(): void {
    const tmp = `${this.mountsFile}.tmp`;
    try {
      fs.writeFileSync(tmp, JSON.stringify([...this.mounts.values()].map((m) => ({ ...m.request, dev: m.dev, bootstrapId: m.bootstrapId }))), { mode: 0o600 });
      fs.renameSync(tmp, this.mountsFile);
    } catch (e) {
      fs.rmSync(tmp, { force: true });
      throw new Error(`cannot write the mounts file ${this.mountsFile}: ${(e as Error).message}`);
    }
  }

  /**
   * saveMounts where a failure (a full disk) must not fail what was done: the file then keeps the list
   * it had, and what it lists wrongly does no harm to a successor. An unmounted mount it still lists
   * is no longer there (restore skips it), nor is one whose mount(2) failed; one listed without its
   * device is taken as the EROFS of its bootstrap at its mountpoint. Before a mount, a failure refuses
   * the mount instead: a successor must know every mount made.
   */
  private saveMountsOrLog(when: string): void {
    try {
      this.saveMounts();
    } catch (e) {
      this.log.error({ err: (e as Error).message }, `${when}, the mounts file keeps the list it had`);
    }
  }
}

/** The path an fd was opened by, for messages ('' when it cannot be told). */
function fdPath(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return '';
  }
}

/** `p` with symbolic links resolved as far as it exists (the rest as given). */
function realPathOf(p: string): string {
  const abs = path.resolve(p);
  try {
    return fs.realpathSync(abs);
  } catch {
    const parent = path.dirname(abs);
    return parent === abs ? abs : path.join(realPathOf(parent), path.basename(abs));
  }
}
