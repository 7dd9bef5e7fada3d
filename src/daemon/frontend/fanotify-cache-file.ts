/**
 * MarkedCacheFile: one blob's cache file as the fanotify front end serves it: a sparse file of the
 * blob's uncompressed size, marked FAN_PRE_ACCESS, filled by a BlobCacheFile.
 *
 * Which fd writes: a write through any fd of a marked file opened after the mark raises an event of
 * its own, which the daemon would have to answer while waiting for its own write. The fds that raise
 * none are those the kernel decided at open time nobody watches (opened before the mark) and the
 * events' own fds (opened by fanotify with FMODE_NONOTIFY). So the writer is the fd the file was opened
 * with before being marked, or, when the mark is older than this process (a restarted worker), a dup
 * of the first event's fd for the file; writes that come before any event (a predecessor's journaled
 * event, prefetch) provoke one: a one-byte read through our own, watched, fd, served like any other.
 *
 * The bytes written are kept in a bitmap of 4 KiB blocks the addon's watcher reads: an event for
 * blocks all in the file is answered as it is read (FanotifyGroup.setReadyBlocks), so a read of what
 * was fetched ahead costs the reader a kernel round trip, not a turn of the event loop. The bitmap is
 * handed over once there is a writer and the chunk marks were checked against the file; before, the
 * session answers from the marks.
 *
 * Once the file holds every chunk its mark only costs an event per read: it is removed, and the kernel
 * reads the file directly. The file itself has the last word (SEEK_DATA/SEEK_HOLE over every chunk),
 * never the chunk marks alone: a hole left unmarked would read as zeros.
 */
import fs from 'node:fs';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { READY_BLOCK, closeFd, dupFd } from '../../../native/fscache/fanotify.ts';
import { dataRangesOf } from '../../../native/fscache/index.ts';
import type { BlobMap } from '../blob-map.ts';
import { ConfigError } from '../config.ts';
import type { ChunkFetcher } from '../chunk-fetcher.ts';
import type { CacheFileKey, DaemonState } from '../state.ts';
import type { BlobAccessTrace } from '../access-trace.ts';
import { BlobCacheFile, WorkGuard, covers, type CacheCounters, type FillOptions, type PrefetchPlan } from '../blob-cache.ts';

/** What a cache file needs of the fanotify group. */
export interface MarkPort {
  mark(path: string): void;
  unmark(path: string): void;
  setReadyBlocks(dev: number, ino: number, bits: Uint8Array | null): void;
}

/** A file is checked for completeness this long after an event (once per burst of events). */
const COMPLETE_CHECK_DELAY_MS = 100;

const pwrite = promisify(fs.write);

async function writeAll(fd: number, data: Uint8Array, offset: number): Promise<void> {
  let done = 0;
  while (done < data.length) done += (await pwrite(fd, data, done, data.length - done, offset + done)).bytesWritten;
}

/**
 * The ready bitmap's bytes for a map: as far as its chunks reach, not the blob's declared size (which
 * an image may inflate): the addon takes blocks past the bitmap for not ready, and their events come
 * to the session.
 */
const readyBytes = (map: BlobMap): number => Math.ceil(Math.ceil((map.chunkCount ? Math.min(map.uncompressedSize, map.rangeAt(map.chunkCount - 1)[1]) : 0) / READY_BLOCK) / 8);

/** How a file is known to the session: its device and inode numbers (what an event's fd fstat()s to). */
export const inodeKey = (dev: number, ino: number): string => `${dev}:${ino}`;

export interface CacheFileSource {
  map: BlobMap;
  fetcher: ChunkFetcher;
  prefetch: PrefetchPlan | null;
  /** The image's amplification window (config_v2 rafs.batch_size). */
  fill?: FillOptions;
  /** Where the blob's demand reads are traced. */
  trace?: BlobAccessTrace;
}

/**
 * A cache file opened as the regular file it must be: never through a symbolic link (the file it
 * names would be truncated to the blob's size and filled) and never a FIFO or a device (O_NONBLOCK:
 * opening a FIFO waits for a writer). Anything else at its path is an error naming it, no fd left open.
 */
function openCacheFile(path: string, flags: number): { fd: number; st: fs.Stats } {
  let fd: number;
  try {
    fd = fs.openSync(path, flags | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK, 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ELOOP') throw new ConfigError(`cache file ${path} is a symbolic link, not a regular file`);
    throw e;
  }
  const st = fs.fstatSync(fd);
  if (!st.isFile()) {
    fs.closeSync(fd);
    throw new ConfigError(`cache file ${path} is not a regular file`);
  }
  return { fd, st };
}

export class MarkedCacheFile {
  readonly size: number;
  /** `<dev>:<ino>`: how an event's fd is told to be about this file. */
  readonly inode: string;
  private readonly guard: WorkGuard;
  /** O_RDONLY, for SEEK_DATA/SEEK_HOLE (lseek raises no events) and for provoking an event. */
  private readonly probeFd: number;
  private blob: BlobCacheFile;
  private writerFd: number | null;
  /** The writer as verification jobs write through it (BlobCacheFile's target), once there is one. */
  private writeTarget: { fd: number } | null = null;
  private readonly writerWaiters: Array<{ resolve: (fd: number) => void; reject: (e: Error) => void }> = [];
  /** Every chunk is in the file and the mark is gone. */
  private complete = false;
  private checkPending = false;
  /** Chunks marked at the last check: while the count grows (read-ahead, prefetch) the check comes again. */
  private lastCount = -1;
  /** When the file was last checked at once, every chunk marked (scheduleCompleteCheck). */
  private lastImmediateCheck = -Infinity;
  /** Which 4 KiB blocks hold written bytes (the module comment); handed to the group once `readyShared`. */
  private ready: Uint8Array;
  private readyShared = false;
  private readonly dev: number;
  private readonly ino: number;
  private readonly key: CacheFileKey;

  /**
   * Opens (or makes) `<workDir>/<blob id>.blob.data` and marks it. `restored`: the mark is kept from a
   * predecessor's run, the file must exist, and no fd we open now is a writer.
   */
  constructor(
    readonly path: string, private source: CacheFileSource, restored: boolean, private readonly group: MarkPort,
    private readonly state: DaemonState, private readonly counters: CacheCounters, private readonly log: Logger,
  ) {
    const { map } = source;
    this.size = map.uncompressedSize;
    this.key = { volume: `fanotify,${dirname(this.path)}`, cookie: map.blobId };
    this.writerFd = null;
    let probeFd: number;
    let st: fs.Stats;
    try {
      let writer: fs.Stats | null = null;
      if (!restored) {
        // Opened before the mark: its writes raise no events.
        const opened = openCacheFile(this.path, fs.constants.O_RDWR | fs.constants.O_CREAT);
        this.writerFd = opened.fd;
        writer = opened.st;
        this.writeTarget = { fd: this.writerFd };
        if (writer.size !== this.size) {
          fs.ftruncateSync(this.writerFd, 0);
          fs.ftruncateSync(this.writerFd, this.size);
          state.clear(this.key);
        }
      }
      group.mark(this.path);
      ({ fd: probeFd, st } = openCacheFile(this.path, fs.constants.O_RDONLY));
      if (writer && (writer.dev !== st.dev || writer.ino !== st.ino)) {
        fs.closeSync(probeFd);
        throw new ConfigError(`cache file ${this.path} was replaced while it was opened`);
      }
    } catch (e) {
      if (this.writerFd !== null) fs.closeSync(this.writerFd);
      throw e;
    }
    this.probeFd = probeFd;
    this.dev = st.dev;
    this.ino = st.ino;
    this.inode = inodeKey(st.dev, st.ino);
    this.ready = new Uint8Array(readyBytes(map));
    this.guard = new WorkGuard(() => {
      fs.closeSync(probeFd);
      if (this.writerFd !== null) closeFd(this.writerFd);
    });
    this.blob = this.serve(source, source.prefetch);
    this.unmarkIfComplete();
  }

  /** A BlobCacheFile over this file for `source`'s chunk map, started (its prefetch, when given). */
  private serve(source: CacheFileSource, prefetch: PrefetchPlan | null): BlobCacheFile {
    const blob = new BlobCacheFile(this.key, source.map, source.fetcher, {
      asksOnlyForMissing: false,
      write: async (offset, data) => {
        await writeAll(await this.writer(), data, offset);
        this.setReady(offset, offset + data.length);
      },
      target: () => this.writeTarget,
      written: (from, to) => this.setReady(from, to),
      marked: () => this.unmarkOnceComplete(),
      dataRanges: (from, to) => dataRangesOf(this.probeFd, from, to),
    }, this.guard, this.state, this.counters, this.log, source.fill);
    blob.start(prefetch);
    void blob.whenMarksChecked().then(() => this.shareReady());
    // A prefetch that filled the file: its mark goes now, not at the next read's event.
    if (prefetch) void blob.whenPrefetched().then(() => this.scheduleCompleteCheck());
    return blob;
  }

  /**
   * The mount of another image reads this file (its blob is one of that image's): that image's chunk
   * map of the blob joins the file's (BlobMap.union). When it brings chunks the file's map lacks
   * (the file was made for an image that hides files of the layer, or references a chunk dictionary's
   * blob in part), the file runs on the union from now on, with that image's backend and trace (and
   * its prefetch where the union is its own map), and is marked again if it was complete. Work under
   * way on the former map ends as it would. Returns whether the file now runs on `source`'s image; a
   * ConfigError when the maps are not one blob's.
   */
  join(source: CacheFileSource): boolean {
    if (this.source.map.includes(source.map)) return false;
    const map = this.source.map.union(source.map);
    if (!map) {
      throw new ConfigError(`cache file ${this.path} holds blob ${source.map.blobId} as another image's chunk table has it, and this image's disagrees with it (another chunk at one place, or another size or compressor): give this mount its own cache work_dir`);
    }
    const own = map.chunkCount === source.map.chunkCount;
    this.source = { ...source, map };
    const bytes = readyBytes(map);
    if (bytes > this.ready.length) {
      const ready = new Uint8Array(bytes);
      ready.set(this.ready);
      this.ready = ready;
      if (this.readyShared) this.group.setReadyBlocks(this.dev, this.ino, this.ready);
    }
    if (this.complete) {
      this.group.mark(this.path);
      this.complete = false;
      this.lastCount = -1;
      this.log.info({ file: this.path }, 'cache file marked again: an image with more of its blob\'s chunks mounts it');
    }
    this.blob = this.serve(this.source, own ? source.prefetch : null);
    this.scheduleCompleteCheck();
    return true;
  }

  get closed(): boolean {
    return this.guard.closed;
  }

  /** Where the blob's demand reads are traced. */
  get trace(): BlobAccessTrace | undefined {
    return this.source.trace;
  }

  /** An event for this file arrived: its fd becomes the writer if there is none yet. Throws when it cannot be kept. */
  adoptEventFd(fd: number): void {
    if (this.writerFd !== null) return;
    this.writerFd = dupFd(fd);
    this.writeTarget = { fd: this.writerFd };
    for (const w of this.writerWaiters.splice(0)) w.resolve(this.writerFd);
    this.shareReady();
  }

  /** Every chunk covering the range is in the file when this settles; throws otherwise. */
  async fill(offset: number, count: number): Promise<void> {
    await this.guard.use(() => this.blob.fill(offset, count));
    // A file closed meanwhile skipped its writes: its holes must not be allowed.
    if (this.guard.closed) throw new Error('the last mount of the file was removed while the range was being filled');
    this.scheduleCompleteCheck();
  }

  /** A read of bytes the file holds was allowed: the amplification window follows it (BlobCacheFile.readOn). */
  readOn(offset: number, count: number): void {
    if (this.guard.closed) return;
    this.blob.readOn(offset, count);
    this.scheduleCompleteCheck();
  }

  /** Whether every chunk covering the range is in the file (by the chunk marks, checked against the file on open). */
  rangeCached(offset: number, count: number): boolean {
    return this.blob.rangeCached(offset, count);
  }

  /** The last mount using the file is gone: the mark removed, the fds closed once the work using them drained. */
  close(): void {
    if (this.readyShared) this.group.setReadyBlocks(this.dev, this.ino, null);
    try {
      if (!this.complete) this.group.unmark(this.path);
    } catch (e) {
      this.log.warn({ file: this.path, err: (e as Error).message }, 'cannot remove the mark');
    }
    // Writes waiting for a writer fd get none now (no event comes for an unmarked file): they fail,
    // so that the work holding the guard ends and the fds are closed.
    for (const w of this.writerWaiters.splice(0)) w.reject(this.noWriter());
    this.guard.close();
  }

  /** Blocks [from, to) rounded out hold written bytes (a chunk starts on a block; the rest of its last block is padding). */
  private setReady(from: number, to: number): void {
    const last = Math.ceil(to / READY_BLOCK);
    for (let b = Math.floor(from / READY_BLOCK); b < last; b++) this.ready[b >> 3] |= 1 << (b & 7);
  }

  /**
   * Hands the bitmap to the group once events may be answered without us: a writer is there (else
   * the first event's fd must become it), and the marks were checked against the file (the bitmap
   * starts from them).
   */
  private shareReady(): void {
    if (this.readyShared || this.writerFd === null || this.guard.closed || !this.blob.marksTrusted) return;
    const marked = this.state.cached(this.key);
    const { map } = this.source;
    for (let pos = 0; pos < map.chunkCount; pos++) {
      if (marked.has(map.indexAt(pos))) {
        const [start, end] = map.rangeAt(pos);
        this.setReady(start, end);
      }
    }
    this.readyShared = true;
    this.group.setReadyBlocks(this.dev, this.ino, this.ready);
  }

  private unmarkIfComplete(): void {
    if (this.complete || this.guard.closed) return;
    const { map } = this.source;
    const marked = this.state.count(this.key);
    if (marked < map.chunkCount) {
      if (marked !== this.lastCount) this.scheduleCompleteCheck();
      this.lastCount = marked;
      return;
    }
    let ranges: Array<[number, number]>;
    try {
      ranges = dataRangesOf(this.probeFd, 0, this.size);
    } catch (e) {
      // (Called from timers and after markings: a throw would end the worker.) The mark stays; the
      // next marking or read checks again.
      this.log.warn({ file: this.path, err: (e as Error).message }, 'cannot tell whether the cache file is complete');
      return;
    }
    for (let pos = 0; pos < map.chunkCount; pos++) if (!covers(ranges, map.rangeAt(pos))) return;
    try {
      this.group.unmark(this.path);
      this.complete = true;
      this.log.info({ file: this.path }, 'cache file complete; its mark is removed');
    } catch (e) {
      this.log.warn({ file: this.path, err: (e as Error).message }, 'cannot remove the mark of a complete cache file');
    }
  }

  /**
   * Chunks were marked: once every chunk is, the file is checked at once, not at the next event or a
   * timer's turn. The reads from then on raise no events, and each event costs its reader two
   * context switches, far more when the CPUs are busy. On the host, the big workload read cold with
   * prefetch on, the window's last chunks often came after the prefetch's end: in 5 runs of 6 the mark
   * went only after the read had ended; now with the last chunk, 61-151 events a read against 126-401.
   */
  private unmarkOnceComplete(): void {
    if (!this.complete && !this.guard.closed && this.allMarked()) this.unmarkIfComplete();
  }

  /** Whether every chunk of the file's map is marked (the count is kept, not counted). */
  private allMarked(): boolean {
    return this.state.count(this.key) >= this.source.map.chunkCount;
  }

  private scheduleCompleteCheck(): void {
    if (this.checkPending || this.complete || this.guard.closed) return;
    // Every chunk marked with no marking since that could check (another image's map joined onto
    // marked chunks; a file that disagreed with its marks at their last one): checked at once, so
    // that the reads from here on no longer wait for an event each. At most once a delay while the
    // file disagrees with the marks. (Files completed by a marking are checked then: unmarkOnceComplete.)
    const now = performance.now();
    if (this.allMarked() && now - this.lastImmediateCheck >= COMPLETE_CHECK_DELAY_MS) {
      this.lastImmediateCheck = now;
      this.unmarkIfComplete();
      if (this.complete) return;
    }
    this.checkPending = true;
    setTimeout(() => {
      this.checkPending = false;
      this.unmarkIfComplete();
    }, COMPLETE_CHECK_DELAY_MS).unref();
  }

  /** What a write waiting for a writer fd fails with once the file is closed. */
  private noWriter(): Error {
    return new Error(`${this.path}: closed before an event gave a writer fd`);
  }

  /** The writer fd; when there is none yet, one event for the file is provoked (module comment). */
  private writer(): Promise<number> {
    if (this.writerFd !== null) return Promise.resolve(this.writerFd);
    if (this.guard.closed) return Promise.reject(this.noWriter());
    return new Promise((resolve, reject) => {
      this.writerWaiters.push({ resolve, reject });
      if (this.writerWaiters.length > 1) return;
      fs.read(this.probeFd, Buffer.alloc(1), 0, 1, 0, (err) => {
        if (err) this.log.debug({ file: this.path, err: err.message }, 'the read that provoked an event failed');
      });
    });
  }
}
