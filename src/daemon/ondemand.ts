/**
 * OnDemandSession: the kernel's on-demand requests in, cache-file writes out.
 *   OPEN  -> which object (bootstrap of an fsid, or blob of a device tag) -> copen with its size
 *   READ  -> bootstrap bytes, or the blob chunks covering the range (fetched, verified) -> write -> complete
 *   CLOSE -> no more writes for the object; its fd is closed once the work still using it has drained
 * A READ that cannot be served is completed without data: the reader gets EIO, never wrong bytes.
 *
 * All work in flight belongs to an OpenObject, never to an fd number: after CLOSE the kernel may hand
 * the same number to the next OPEN, and nothing of the old object may reach the new one's cache file.
 */
import fsp from 'node:fs/promises';
import type { Logger } from 'pino';
import type { CachefilesMessage, OpenMessage, ReadMessage } from '../../native/fscache/index.ts';
import { NydusError, EIO } from '../../erofs/errors.ts';
import type { BlobMap } from './blob-map.ts';
import type { ChunkRef } from '../builder/tree.ts';
import type { ChunkFetcher } from './chunk-fetcher.ts';
import type { CacheFileKey, DaemonState } from './state.ts';
import type { PrefetchConfig } from './config.ts';

/** What the session needs of the device (the addon's CachefilesDevice, or a fake in unit tests). */
export interface CachefilesPort {
  copen(msgId: number, sizeOrNegErrno: number): void;
  writeData(fd: number, offset: number, data: Uint8Array): Promise<void>;
  readComplete(fd: number, msgId: number): void;
  closeFd(fd: number): void;
  /** The ranges of [from, to) that the object's cache file really holds. */
  dataRanges(fd: number, from: number, to: number): Array<[number, number]>;
}

/** Background prefetch of one blob: its chunks in order (positions in its blob map), and how to fetch them. */
export interface PrefetchPlan {
  order: Uint32Array;
  config: Pick<PrefetchConfig, 'threads' | 'batchSize' | 'bandwidthLimit'>;
}

export type ResolvedObject =
  | { kind: 'bootstrap'; path: string; size: number }
  | { kind: 'blob'; map: BlobMap; fetcher: ChunkFetcher; prefetch: PrefetchPlan | null };

export interface ObjectResolver {
  /** `volume` is the fsid or domain id (the part after "erofs,"); `cookie` the fsid or device tag. */
  resolve(volume: string, cookie: string): ResolvedObject | null;
}

const ENOENT = 2;
const ENOBUFS = 105;
/** Chunks fetched ahead of the kernel after each READ of a blob. */
const READ_AHEAD_CHUNKS = 2;
/** The kernel attaches the cache file to the object right after copen; until then lseek says ENOBUFS. */
const ATTACH_WAIT_MS = 5;
const ATTACH_TRIES = 400;

const roundUp4k = (n: number) => Math.ceil(n / 4096) * 4096;

/** One object the kernel opened, and everything still working on its cache file. */
class OpenObject {
  closed = false;
  /** Chunks on their way into this object's cache file, by chunk index. */
  readonly materializing = new Map<number, Promise<void>>();
  /** Settles once the chunk marks were checked against the cache file (see OnDemandSession.reconcile). */
  marksChecked: Promise<void> = Promise.resolve();
  private users = 0;

  constructor(
    readonly objectId: number, readonly fd: number, readonly file: CacheFileKey, readonly target: ResolvedObject,
    private readonly closeFd: (fd: number) => void,
  ) {}

  /** Runs work that uses the fd; the fd stays open (its number ours) until every such work settled. */
  async use<T>(fn: () => Promise<T>): Promise<T> {
    this.users++;
    try {
      return await fn();
    } finally {
      if (--this.users === 0 && this.closed) this.closeFd(this.fd);
    }
  }

  close(): void {
    this.closed = true;
    if (this.users === 0) this.closeFd(this.fd);
  }
}

/** Bounds concurrent work to the configured thread count. */
class Limiter {
  private running = 0;
  private readonly queue: Array<() => void> = [];
  constructor(private readonly max: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.running >= this.max) await new Promise<void>((r) => this.queue.push(r));
    this.running++;
    try {
      return await fn();
    } finally {
      this.running--;
      this.queue.shift()?.();
    }
  }
}

export class OnDemandSession {
  private readonly objects = new Map<number, OpenObject>();
  private readonly limiter: Limiter;
  /** READs received and not yet completed, by message id: what GET /api/v1/metrics/inflight lists. */
  private readonly pending = new Map<number, { objectId: number; since: number }>();
  readonly stats = { opens: 0, reads: 0, readBytes: 0, readErrors: 0, prefetchedChunks: 0, staleMarks: 0 };

  constructor(
    private readonly dev: CachefilesPort, private readonly resolver: ObjectResolver,
    private readonly state: DaemonState,
    private readonly log: Logger, threads = 4,
  ) {
    this.limiter = new Limiter(Math.max(1, threads));
  }

  handle(msg: CachefilesMessage): void {
    if (msg.type === 'open') this.open(msg);
    else if (msg.type === 'read') {
      this.pending.set(msg.msgId, { objectId: msg.objectId, since: Date.now() });
      void this.limiter.run(() => this.read(msg)).finally(() => this.pending.delete(msg.msgId));
    }
    else {
      const obj = this.objects.get(msg.objectId);
      this.objects.delete(msg.objectId);
      obj?.close();
      this.log.debug({ objectId: msg.objectId }, 'close');
    }
  }

  private open(msg: OpenMessage): void {
    const volume = msg.volumeKey.startsWith('erofs,') ? msg.volumeKey.slice('erofs,'.length) : '';
    const target = volume ? this.resolver.resolve(volume, msg.cookieKey) : null;
    if (!target) {
      this.log.warn({ volume: msg.volumeKey, cookie: msg.cookieKey }, 'open of an unknown object refused');
      this.dev.copen(msg.msgId, -ENOENT);
      this.dev.closeFd(msg.fd);
      return;
    }
    const size = target.kind === 'bootstrap' ? target.size : target.map.uncompressedSize;
    // An object id the kernel reuses without a CLOSE we saw: the old object is gone.
    this.objects.get(msg.objectId)?.close();
    const obj = new OpenObject(msg.objectId, msg.fd, { volume: msg.volumeKey, cookie: msg.cookieKey }, target, (fd) => this.dev.closeFd(fd));
    this.objects.set(msg.objectId, obj);
    this.stats.opens++;
    this.dev.copen(msg.msgId, size);
    this.log.info({ objectId: msg.objectId, volume, cookie: msg.cookieKey, kind: target.kind, size }, 'open');
    if (target.kind === 'blob') {
      obj.marksChecked = obj.use(() => this.reconcile(obj, target.map));
      if (target.prefetch) void obj.use(() => this.prefetch(obj, target.map, target.fetcher, target.prefetch!));
    }
  }

  /**
   * The state says which chunks are in the cache file; the cache file has the last word. The OPEN's
   * fd forwards lseek to the cache file, so SEEK_DATA/SEEK_HOLE show what it really holds (fstat of
   * that anonymous fd shows nothing). Marks of chunks it does not hold (a culled or new cache file)
   * are dropped. When the cache file cannot be asked, marks stay: demand READs check for themselves.
   */
  private async reconcile(obj: OpenObject, map: BlobMap): Promise<void> {
    const marked = this.state.cached(obj.file);
    if (marked.size === 0) return;
    let ranges: Array<[number, number]> | null = null;
    for (let i = 0; i < ATTACH_TRIES && !obj.closed && !ranges; i++) {
      try {
        ranges = this.dev.dataRanges(obj.fd, 0, roundUp4k(map.uncompressedSize));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).errno !== ENOBUFS) break;
        await new Promise((r) => setTimeout(r, ATTACH_WAIT_MS));
      }
    }
    if (!ranges) {
      this.log.warn({ cookie: obj.file.cookie, volume: obj.file.volume }, 'cannot see the cache file; its chunk marks are kept unchecked');
      return;
    }
    const stale: number[] = [];
    for (let pos = 0; pos < map.chunkCount; pos++) {
      if (marked.has(map.indexAt(pos)) && !covers(ranges, map.rangeAt(pos))) stale.push(map.indexAt(pos));
    }
    if (stale.length) {
      this.state.unmark(obj.file, stale);
      this.stats.staleMarks += stale.length;
      this.log.warn({ cookie: obj.file.cookie, volume: obj.file.volume, stale: stale.length, marked: marked.size }, 'dropped chunk marks the cache file does not hold');
    }
  }

  private async read(msg: ReadMessage): Promise<void> {
    const obj = this.objects.get(msg.objectId);
    if (!obj) {
      this.log.warn({ objectId: msg.objectId }, 'read of an object that is not open');
      return;
    }
    this.stats.reads++;
    await obj.use(async () => {
      try {
        if (obj.target.kind === 'bootstrap') await this.readBootstrap(obj, obj.target.path, obj.target.size, msg);
        else {
          this.readAhead(obj, obj.target.map, obj.target.fetcher, msg.offset + msg.len);
          await this.readBlob(obj, obj.target.map, obj.target.fetcher, msg.offset, msg.len);
        }
        this.stats.readBytes += msg.len;
      } catch (e) {
        this.stats.readErrors++;
        this.log.error({ objectId: msg.objectId, cookie: obj.file.cookie, offset: msg.offset, len: msg.len, err: (e as Error).message }, 'read failed; the reader gets EIO');
      }
      if (obj.closed) return;
      try {
        this.dev.readComplete(obj.fd, msg.msgId);
      } catch (e) {
        this.log.warn({ err: (e as Error).message, msgId: msg.msgId }, 'read complete failed');
      }
    });
  }

  /** The bootstrap's blocks covering the READ, all of them or an error: a short read is never zeros. */
  private async readBootstrap(obj: OpenObject, file: string, size: number, msg: ReadMessage): Promise<void> {
    const start = Math.floor(msg.offset / 4096) * 4096;
    const end = Math.min(roundUp4k(msg.offset + msg.len), roundUp4k(size));
    if (start >= end) throw new NydusError(`bootstrap ${file}: read at ${msg.offset} is beyond its ${size} bytes`, EIO);
    const want = Math.min(end, size) - start;
    const buf = Buffer.alloc(end - start);
    const fh = await fsp.open(file, 'r');
    try {
      let done = 0;
      while (done < want) {
        const { bytesRead } = await fh.read(buf, done, want - done, start + done);
        if (bytesRead === 0) throw new NydusError(`bootstrap ${file}: short read at ${start + done} (registered with ${size} bytes; was it truncated?)`, EIO);
        done += bytesRead;
      }
    } finally {
      await fh.close();
    }
    if (obj.closed) return;
    await this.dev.writeData(obj.fd, start, buf);
  }

  /** Writes every chunk covering the range into the cache file, then marks them. */
  private async readBlob(obj: OpenObject, map: BlobMap, fetcher: ChunkFetcher, offset: number, len: number): Promise<void> {
    const chunks = map.chunksIn(offset, len);
    await Promise.all(chunks.map((c) => this.materialize(obj, c, true, () => fetcher.fetch(map, c))));
  }

  /**
   * Puts one chunk into the object's cache file and marks it. Concurrent callers for the same chunk
   * (a READ and the read-ahead, or two READs) share one fetch and one write. Read-ahead and prefetch
   * trust the marks (checked on open); a demand READ of a marked chunk means the kernel did not find
   * it, so the cache file itself is asked, and a mark it contradicts is dropped and the chunk written.
   */
  private materialize(obj: OpenObject, c: ChunkRef, demand: boolean, load: () => Promise<Buffer>): Promise<void> {
    const pending = obj.materializing.get(c.indexInBlob);
    if (pending) return pending;
    if (this.state.isCached(obj.file, c.indexInBlob)) {
      if (!demand || this.holds(obj, c)) return Promise.resolve();
      this.state.unmark(obj.file, [c.indexInBlob]);
      this.stats.staleMarks++;
    }
    const p = obj.use(async () => {
      const data = await load();
      // Never write after CLOSE: the kernel is done with this cache file.
      if (obj.closed) return;
      await this.dev.writeData(obj.fd, c.uncompressedOffset, data);
      this.state.mark(obj.file, [c.indexInBlob]);
    }).finally(() => obj.materializing.delete(c.indexInBlob));
    obj.materializing.set(c.indexInBlob, p);
    return p;
  }

  /** Whether the cache file holds the chunk's bytes. */
  private holds(obj: OpenObject, c: ChunkRef): boolean {
    try {
      return covers(this.dev.dataRanges(obj.fd, c.uncompressedOffset, c.uncompressedOffset + roundUp4k(c.uncompressedSize)), [c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize]);
    } catch {
      return false;
    }
  }

  /**
   * Reads ahead in the blob's order: the chunks after a READ are usually the next ones the kernel asks
   * for (files are laid out sequentially), so fetching them now overlaps the backend and the digest
   * work with the reader. Best effort: a failure here only means the kernel will ask itself.
   */
  private readAhead(obj: OpenObject, map: BlobMap, fetcher: ChunkFetcher, end: number): void {
    void obj.marksChecked.then(() => {
      for (const c of map.chunksAfter(end, READ_AHEAD_CHUNKS)) {
        if (obj.closed) return;
        this.materialize(obj, c, false, () => fetcher.fetch(map, c)).catch((e) => {
          this.log.debug({ blob: map.blobId, chunk: c.indexInBlob, err: (e as Error).message }, 'read-ahead failed');
        });
      }
    });
  }

  /**
   * Fills a blob's cache file ahead of reads, skipping chunks it holds; stops on CLOSE. `threads`
   * batches are in flight at once; a batch is chunks stored back to back, up to `batchSize` bytes,
   * fetched in one backend read; `bandwidthLimit` paces the bytes read from the backend.
   */
  private async prefetch(obj: OpenObject, map: BlobMap, fetcher: ChunkFetcher, plan: PrefetchPlan): Promise<void> {
    await obj.marksChecked;
    const have = this.state.cached(obj.file);
    const todo: ChunkRef[] = [];
    for (const pos of plan.order) if (!have.has(map.indexAt(pos))) todo.push(map.at(pos));
    const batches = batchChunks(todo, plan.config.batchSize);
    const pace = new Pacer(plan.config.bandwidthLimit);
    let next = 0;
    const worker = async () => {
      while (next < batches.length && !obj.closed) {
        const batch = batches[next++];
        await pace.take(batch.reduce((n, c) => n + c.compressedSize, 0));
        if (obj.closed) return;
        const fetched = fetcher.fetchBatch(map, batch);
        await Promise.all(batch.map(async (c, i) => {
          try {
            await this.materialize(obj, c, false, () => fetched[i]);
            this.stats.prefetchedChunks++;
          } catch (e) {
            this.log.warn({ blob: map.blobId, chunk: c.indexInBlob, err: (e as Error).message }, 'prefetch of a chunk failed');
          } finally {
            // A chunk another caller was already writing does not wait for this fetch: its failure is no one's.
            fetched[i].catch(() => undefined);
          }
        }));
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, plan.config.threads) }, worker));
  }

  /** The READs in flight, oldest first. */
  inflight(): Array<{ msgId: number; objectId: number; since: number }> {
    return [...this.pending].map(([msgId, p]) => ({ msgId, ...p }));
  }

  closeAll(): void {
    for (const o of this.objects.values()) o.close();
    this.objects.clear();
  }
}

/** Splits chunks (in their order) into runs stored back to back, each at most `maxBytes` (one chunk at least). */
export function batchChunks(chunks: readonly ChunkRef[], maxBytes: number): ChunkRef[][] {
  const out: ChunkRef[][] = [];
  let cur: ChunkRef[] = [];
  let bytes = 0;
  for (const c of chunks) {
    const last = cur[cur.length - 1];
    const follows = last && c.compressedOffset === last.compressedOffset + last.compressedSize;
    if (cur.length && (!follows || bytes + c.compressedSize > maxBytes)) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(c);
    bytes += c.compressedSize;
  }
  if (cur.length) out.push(cur);
  return out;
}

/** Paces bytes to a rate (bytes per second; 0: no limit). */
class Pacer {
  private next = Date.now();
  constructor(private readonly rate: number) {}
  async take(bytes: number): Promise<void> {
    if (!this.rate) return;
    const now = Date.now();
    const at = Math.max(now, this.next);
    this.next = at + (bytes / this.rate) * 1000;
    if (at > now) await new Promise((r) => setTimeout(r, at - now));
  }
}

/** Whether data ranges cover a chunk's bytes [start, end) (the padding after a blob's last chunk may lie past EOF). */
function covers(ranges: ReadonlyArray<readonly [number, number]>, [start, end]: readonly [number, number]): boolean {
  return ranges.some(([s, e]) => s <= start && e >= end);
}
