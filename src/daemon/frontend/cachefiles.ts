/**
 * OnDemandSession: the fscache front end. The kernel's on-demand requests in, cache-file writes out.
 *   OPEN  -> which object (bootstrap of an fsid, or blob of a device tag) -> copen with its size
 *   READ  -> bootstrap bytes, or the blob's BlobCacheFile fills the range -> complete
 *   CLOSE -> no more writes for the object; its fd is closed once the work still using it has drained
 * A READ that cannot be served is completed without data: the reader gets EIO, never wrong bytes.
 *
 * All work in flight belongs to an OpenObject, never to an fd number: after CLOSE the kernel may hand
 * the same number to the next OPEN, and nothing of the old object may reach the new one's cache file.
 */
import fsp from 'node:fs/promises';
import type { Logger } from 'pino';
import type { CachefilesMessage, OpenMessage, ReadMessage } from '../../../native/fscache/index.ts';
import { NydusError, EIO } from '../../../erofs/errors.ts';
import { type BlobMap, alignToChunk } from '../blob-map.ts';
import type { ChunkFetcher } from '../chunk-fetcher.ts';
import type { DaemonState } from '../state.ts';
import type { BlobAccessTrace } from '../access-trace.ts';
import { RepeatedFailures, heldBack } from '../repeated-failure.ts';
import { BlobCacheFile, Limiter, WorkGuard, type CacheCounters, type FillOptions, type PrefetchPlan } from '../blob-cache.ts';

/** What the session needs of the device (the addon's CachefilesDevice, or a fake in unit tests). */
export interface CachefilesPort {
  copen(msgId: number, sizeOrNegErrno: number): void;
  writeData(fd: number, offset: number, data: Uint8Array): Promise<void>;
  readComplete(fd: number, msgId: number): void;
  closeFd(fd: number): void;
  /** The ranges of [from, to) that the object's cache file really holds. */
  dataRanges(fd: number, from: number, to: number): Array<[number, number]>;
  /**
   * Whether an OPEN's fd is an fd of this process that verification jobs may pwrite through
   * themselves, as writeData does (a fake port's numbers are not).
   */
  readonly fdsWritable?: boolean;
}

export type ResolvedObject =
  | { kind: 'bootstrap'; path: string; size: number }
  | { kind: 'blob'; map: BlobMap; fetcher: ChunkFetcher; prefetch: PrefetchPlan | null; fill?: FillOptions; trace?: BlobAccessTrace };

export interface ObjectResolver {
  /** `volume` is the fsid or domain id (the part after "erofs,"); `cookie` the fsid or device tag. */
  resolve(volume: string, cookie: string): ResolvedObject | null;
}

const ENOENT = 2;


/** One object the kernel opened: its fd (alive while work uses it) and what it is. */
interface OpenObject {
  fd: number;
  guard: WorkGuard;
  cookie: string;
  /** The bootstrap's file, or the blob's cache file. */
  target: BootstrapTarget | { kind: 'blob'; file: BlobCacheFile; trace?: BlobAccessTrace };
}

/** A bootstrap as an open object: its file, opened on the first READ and kept while the object is open. */
interface BootstrapTarget {
  kind: 'bootstrap';
  path: string;
  size: number;
  handle?: Promise<fsp.FileHandle>;
  /** BOOTSTRAP_WINDOW-sized pieces of the bootstrap being written into the cache file, by index. */
  windows?: Map<number, Promise<void>>;
}

/**
 * A READ of a bootstrap fills the BOOTSTRAP_WINDOW-aligned pieces of the cache file around it, not
 * only the blocks asked for: metadata is read all over the bootstrap (inodes, directories), and each
 * READ is a round trip through the daemon, where a rootfs's whole bootstrap is a MiB or two.
 */
const BOOTSTRAP_WINDOW = 4 << 20;

export class OnDemandSession {
  private readonly objects = new Map<number, OpenObject>();
  private readonly limiter: Limiter;
  /** READs received and not yet completed, by message id: what GET /api/v1/metrics/inflight lists. */
  private readonly pending = new Map<number, { objectId: number; since: number }>();
  /** READs that failed, told once a minute per cookie and error (a full cache disk fails every READ). */
  private readonly readFailures = new RepeatedFailures();
  readonly stats: CacheCounters & { opens: number; reads: number; readBytes: number; readErrors: number } = {
    opens: 0, reads: 0, readBytes: 0, readErrors: 0, prefetchedChunks: 0, staleMarks: 0, chunksWrittenByVerifier: 0,
  };

  constructor(
    private readonly dev: CachefilesPort, private readonly resolver: ObjectResolver,
    private readonly state: DaemonState,
    private readonly log: Logger, threads = 4,
  ) {
    this.limiter = new Limiter(Math.max(1, threads));
  }

  /**
   * One message of the kernel's. Nothing in it may throw out of here: the device's watcher calls this,
   * and an exception there would end the daemon, every other mount's READs with it.
   */
  handle(msg: CachefilesMessage): void {
    try {
      this.dispatch(msg);
    } catch (e) {
      this.log.error({ type: msg.type, err: (e as Error).message }, 'a message from the kernel could not be handled');
    }
  }

  private dispatch(msg: CachefilesMessage): void {
    if (msg.type === 'open') this.open(msg);
    else if (msg.type === 'read') {
      this.pending.set(msg.msgId, { objectId: msg.objectId, since: Date.now() });
      void this.limiter.run(() => this.read(msg)).finally(() => this.pending.delete(msg.msgId));
    }
    else {
      const obj = this.objects.get(msg.objectId);
      this.objects.delete(msg.objectId);
      obj?.guard.close();
      this.log.debug({ objectId: msg.objectId }, 'close');
    }
  }

  private open(msg: OpenMessage): void {
    const volume = msg.volumeKey.startsWith('erofs,') ? msg.volumeKey.slice('erofs,'.length) : '';
    const target = volume ? this.resolver.resolve(volume, msg.cookieKey) : null;
    if (!target) {
      this.log.warn({ volume: msg.volumeKey, cookie: msg.cookieKey }, 'open of an unknown object refused');
      try {
        this.dev.copen(msg.msgId, -ENOENT);
      } catch (e) {
        this.log.warn({ volume: msg.volumeKey, cookie: msg.cookieKey, err: (e as Error).message }, 'the refusal of an OPEN was not taken (withdrawn by the kernel?)');
      }
      this.dev.closeFd(msg.fd);
      return;
    }
    const size = target.kind === 'bootstrap' ? target.size : target.map.uncompressedSize;
    // An object id the kernel reuses without a CLOSE we saw: the old object is gone.
    this.objects.get(msg.objectId)?.guard.close();
    const fd = msg.fd;
    // Verification jobs write straight through the OPEN's fd (pages at page offsets, as writeData does).
    const writeTarget = this.dev.fdsWritable ? { fd } : null;
    const guard = new WorkGuard(() => {
      this.dev.closeFd(fd);
      // The bootstrap stays open while its object is: the kernel reads its metadata a READ at a time.
      if (obj.target.kind === 'bootstrap') void obj.target.handle?.then((h) => h.close(), () => undefined);
    });
    const obj: OpenObject = target.kind === 'bootstrap'
      ? { fd, guard, cookie: msg.cookieKey, target: { kind: 'bootstrap', path: target.path, size: target.size } }
      : {
        fd, guard, cookie: msg.cookieKey,
        target: {
          kind: 'blob',
          file: new BlobCacheFile(
            { volume: msg.volumeKey, cookie: msg.cookieKey }, target.map, target.fetcher,
            {
              asksOnlyForMissing: true,
              write: (offset, data) => this.dev.writeData(fd, offset, data),
              target: () => writeTarget,
              dataRanges: (from, to) => this.dev.dataRanges(fd, from, to),
            },
            guard, this.state, this.stats, this.log, target.fill,
          ),
          trace: target.trace,
        },
      };
    this.objects.set(msg.objectId, obj);
    this.stats.opens++;
    try {
      this.dev.copen(msg.msgId, size);
    } catch (e) {
      // The kernel withdrew the OPEN (EINVAL: its mount was interrupted) or will not have it: the
      // object never opened, no READ comes for it; its fd is closed.
      this.log.warn({ objectId: msg.objectId, volume, cookie: msg.cookieKey, err: (e as Error).message }, 'the answer to an OPEN was not taken (withdrawn by the kernel?); the object is dropped');
      if (this.objects.get(msg.objectId) === obj) this.objects.delete(msg.objectId);
      guard.close();
      return;
    }
    this.log.info({ objectId: msg.objectId, volume, cookie: msg.cookieKey, kind: target.kind, size }, 'open');
    if (obj.target.kind === 'blob') obj.target.file.start(target.kind === 'blob' ? target.prefetch : null);
  }

  private async read(msg: ReadMessage): Promise<void> {
    const obj = this.objects.get(msg.objectId);
    if (!obj) {
      this.log.warn({ objectId: msg.objectId }, 'read of an object that is not open');
      return;
    }
    this.stats.reads++;
    await obj.guard.use(async () => {
      try {
        if (obj.target.kind === 'bootstrap') await this.readBootstrap(obj, obj.target, msg);
        else {
          // A READ is the kernel asking for data it does not hold: a demand read, traced as such.
          obj.target.trace?.record(msg.offset, msg.len);
          await obj.target.file.fill(msg.offset, msg.len);
        }
        this.stats.readBytes += msg.len;
      } catch (e) {
        this.stats.readErrors++;
        const err = (e as Error).message;
        const told = this.readFailures.occur(`${obj.cookie}\0${err}`);
        if (told) this.log.error({ objectId: msg.objectId, cookie: obj.cookie, offset: msg.offset, len: msg.len, err, ...heldBack(told.held) }, 'read failed; the reader gets EIO');
      }
      if (obj.guard.closed) return;
      try {
        this.dev.readComplete(obj.fd, msg.msgId);
      } catch (e) {
        this.log.warn({ err: (e as Error).message, msgId: msg.msgId }, 'read complete failed');
      }
    });
  }

  /**
   * The bootstrap's windows covering the READ (BOOTSTRAP_WINDOW); READs at once share a window's
   * write. A READ after it is written asks for bytes the file lost (the kernel asks only for holes):
   * it is written again, as a failed one is.
   */
  private async readBootstrap(obj: OpenObject, target: BootstrapTarget, msg: ReadMessage): Promise<void> {
    const { path: file, size } = target;
    if (msg.offset >= alignToChunk(size) || msg.len <= 0) throw new NydusError(`bootstrap ${file}: read at ${msg.offset} is beyond its ${size} bytes`, EIO);
    const windows = (target.windows ??= new Map());
    const last = Math.floor((Math.min(msg.offset + msg.len, size) - 1) / BOOTSTRAP_WINDOW);
    const pending: Array<Promise<void>> = [];
    for (let w = Math.floor(msg.offset / BOOTSTRAP_WINDOW); w <= last; w++) {
      let writing = windows.get(w);
      if (!writing) {
        const start = w * BOOTSTRAP_WINDOW;
        const p = this.writeBootstrap(obj, target, start, Math.min(start + BOOTSTRAP_WINDOW, alignToChunk(size)));
        const forget = () => {
          if (windows.get(w) === p) windows.delete(w);
        };
        p.then(forget, forget);
        windows.set(w, (writing = p));
      }
      pending.push(writing);
    }
    await Promise.all(pending);
  }

  /** The bootstrap's blocks [start, end), all of them or an error: a short read is never zeros. */
  private async writeBootstrap(obj: OpenObject, target: BootstrapTarget, start: number, end: number): Promise<void> {
    const { path: file, size } = target;
    const want = Math.min(end, size) - start;
    const buf = Buffer.alloc(end - start);
    if (!target.handle) {
      const opening = fsp.open(file, 'r');
      target.handle = opening;
      // A failed open is not kept: the next READ tries again.
      opening.catch(() => {
        if (target.handle === opening) target.handle = undefined;
      });
    }
    const fh = await target.handle;
    let done = 0;
    while (done < want) {
      const { bytesRead } = await fh.read(buf, done, want - done, start + done);
      if (bytesRead === 0) throw new NydusError(`bootstrap ${file}: short read at ${start + done} (registered with ${size} bytes; was it truncated?)`, EIO);
      done += bytesRead;
    }
    if (obj.guard.closed) return;
    await this.dev.writeData(obj.fd, start, buf);
  }

  /** The READs in flight, oldest first. */
  inflight(): Array<{ msgId: number; objectId: number; since: number }> {
    return [...this.pending].map(([msgId, p]) => ({ msgId, ...p }));
  }

  closeAll(): void {
    for (const o of this.objects.values()) o.guard.close();
    this.objects.clear();
  }
}
