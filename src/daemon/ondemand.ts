/**
 * OnDemandSession: the kernel's on-demand requests in, cache-file writes out.
 *   OPEN  -> which object (bootstrap of an fsid, or blob of a device tag) -> copen with its size
 *   READ  -> bootstrap bytes, or the blob chunks covering the range (fetched, verified) -> write -> complete
 *   CLOSE -> close the object's fd
 * A READ that cannot be served is completed without data: the reader gets EIO, never wrong bytes.
 */
import fs from 'node:fs';
import type { Logger } from 'pino';
import type { CachefilesMessage, OpenMessage, ReadMessage } from '../../native/fscache/index.ts';
import type { BlobMap } from './blob-map.ts';
import type { ChunkRef } from '../builder/tree.ts';
import type { ChunkFetcher } from './chunk-fetcher.ts';
import type { DaemonState } from './state.ts';

/** What the session needs of the device (the addon's CachefilesDevice, or a fake in unit tests). */
export interface CachefilesPort {
  copen(msgId: number, sizeOrNegErrno: number): void;
  writeData(fd: number, offset: number, data: Uint8Array): Promise<void>;
  readComplete(fd: number, msgId: number): void;
  closeFd(fd: number): void;
}

export type ResolvedObject =
  | { kind: 'bootstrap'; path: string; size: number }
  | { kind: 'blob'; map: BlobMap; fetcher: ChunkFetcher; prefetch: readonly ChunkRef[] | null };

export interface ObjectResolver {
  /** `volume` is the fsid or domain id (the part after "erofs,"); `cookie` the fsid or device tag. */
  resolve(volume: string, cookie: string): ResolvedObject | null;
}

interface OpenObject {
  fd: number;
  volume: string;
  cookie: string;
  target: ResolvedObject;
}

const ENOENT = 2;
/** Chunks fetched ahead of the kernel after each READ of a blob. */
const READ_AHEAD_CHUNKS = 2;

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
  /** Chunks on their way into a cache file, by `${fd}:${chunk index}`. */
  private readonly materializing = new Map<string, Promise<void>>();
  private readonly limiter: Limiter;
  readonly stats = { opens: 0, reads: 0, readBytes: 0, readErrors: 0, prefetchedChunks: 0 };

  constructor(
    private readonly dev: CachefilesPort, private readonly resolver: ObjectResolver,
    private readonly state: DaemonState,
    private readonly log: Logger, threads = 4,
  ) {
    this.limiter = new Limiter(Math.max(1, threads));
  }

  handle(msg: CachefilesMessage): void {
    if (msg.type === 'open') this.open(msg);
    else if (msg.type === 'read') void this.limiter.run(() => this.read(msg));
    else {
      const obj = this.objects.get(msg.objectId);
      this.objects.delete(msg.objectId);
      if (obj) this.dev.closeFd(obj.fd);
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
    this.objects.set(msg.objectId, { fd: msg.fd, volume, cookie: msg.cookieKey, target });
    this.stats.opens++;
    this.dev.copen(msg.msgId, size);
    this.log.info({ objectId: msg.objectId, volume, cookie: msg.cookieKey, kind: target.kind, size }, 'open');
    if (target.kind === 'blob') {
      this.reconcile(target.map.blobId, msg.fd);
      if (target.prefetch) void this.prefetch(msg.objectId);
    }
  }

  /**
   * The state says which chunks are in the cache file; the cache file has the last word. A cache file
   * with no data at all (a new cache directory, a culled object) means none of the marks hold.
   */
  private reconcile(blobId: string, fd: number): void {
    let allocated: number;
    try {
      allocated = fs.fstatSync(fd).blocks;
    } catch {
      return;
    }
    const marked = this.state.count(blobId);
    if (allocated === 0 && marked > 0) {
      this.state.clear(blobId);
      this.log.warn({ blob: blobId, marked }, 'the cache file is empty: dropped the chunk marks of its blob');
    }
  }

  private async read(msg: ReadMessage): Promise<void> {
    const obj = this.objects.get(msg.objectId);
    if (!obj) {
      this.log.warn({ objectId: msg.objectId }, 'read of an object that is not open');
      return;
    }
    this.stats.reads++;
    try {
      if (obj.target.kind === 'bootstrap') await this.readBootstrap(obj, obj.target.path, msg);
      else {
        this.readAhead(obj, obj.target.map, obj.target.fetcher, msg.offset + msg.len);
        await this.readBlob(obj, obj.target.map, obj.target.fetcher, msg.offset, msg.len);
      }
      this.stats.readBytes += msg.len;
    } catch (e) {
      this.stats.readErrors++;
      this.log.error({ objectId: msg.objectId, cookie: obj.cookie, offset: msg.offset, len: msg.len, err: (e as Error).message }, 'read failed; the reader gets EIO');
    } finally {
      try {
        this.dev.readComplete(obj.fd, msg.msgId);
      } catch (e) {
        this.log.warn({ err: (e as Error).message, msgId: msg.msgId }, 'read complete failed');
      }
    }
  }

  private async readBootstrap(obj: OpenObject, file: string, msg: ReadMessage): Promise<void> {
    const start = Math.floor(msg.offset / 4096) * 4096;
    const buf = Buffer.alloc(Math.ceil((msg.offset + msg.len) / 4096) * 4096 - start);
    const fd = fs.openSync(file, 'r');
    try {
      fs.readSync(fd, buf, 0, buf.length, start);
    } finally {
      fs.closeSync(fd);
    }
    await this.dev.writeData(obj.fd, start, buf);
  }

  /** Writes every chunk covering the range into the cache file, then marks them. */
  private async readBlob(obj: OpenObject, map: BlobMap, fetcher: ChunkFetcher, offset: number, len: number): Promise<void> {
    const chunks = map.chunksIn(offset, len);
    await Promise.all(chunks.map((c) => this.materialize(obj, map, fetcher, c)));
  }

  /**
   * Puts one chunk into the object's cache file and marks it. Concurrent callers for the same chunk
   * (a READ and the read-ahead, or two READs) share one fetch and one write; a chunk already marked
   * is in the cache file (marks follow writes, and open() drops marks of an emptied cache file), so a
   * READ that raced with its write needs nothing more.
   */
  private materialize(obj: OpenObject, map: BlobMap, fetcher: ChunkFetcher, c: ChunkRef): Promise<void> {
    const key = `${obj.fd}:${c.indexInBlob}`;
    let p = this.materializing.get(key);
    if (!p && this.state.isCached(map.blobId, c.indexInBlob)) return Promise.resolve();
    if (!p) {
      p = (async () => {
        const data = await fetcher.fetch(map, c);
        await this.dev.writeData(obj.fd, c.uncompressedOffset, data);
        this.state.mark(map.blobId, [c.indexInBlob]);
      })().finally(() => this.materializing.delete(key));
      this.materializing.set(key, p);
    }
    return p;
  }

  /**
   * Reads ahead in the blob's order: the chunks after a READ are usually the next ones the kernel asks
   * for (files are laid out sequentially), so fetching them now overlaps the backend and the digest
   * work with the reader. Best effort: a failure here only means the kernel will ask itself.
   */
  private readAhead(obj: OpenObject, map: BlobMap, fetcher: ChunkFetcher, end: number): void {
    for (const c of map.chunksAfter(end, READ_AHEAD_CHUNKS)) {
      if (this.materializing.has(`${obj.fd}:${c.indexInBlob}`) || this.state.isCached(map.blobId, c.indexInBlob)) continue;
      this.materialize(obj, map, fetcher, c).catch((e) => {
        this.log.debug({ blob: map.blobId, chunk: c.indexInBlob, err: (e as Error).message }, 'read-ahead failed');
      });
    }
  }

  /** Fills a blob's cache file ahead of reads, skipping chunks the state says are there. */
  private async prefetch(objectId: number): Promise<void> {
    const obj = this.objects.get(objectId);
    if (!obj || obj.target.kind !== 'blob' || !obj.target.prefetch) return;
    const { map, fetcher, prefetch } = obj.target;
    const have = this.state.cached(map.blobId);
    for (const c of prefetch) {
      if (have.has(c.indexInBlob)) continue;
      if (!this.objects.has(objectId)) return;
      try {
        await this.limiter.run(() => this.materialize(obj, map, fetcher, c));
        this.stats.prefetchedChunks++;
      } catch (e) {
        this.log.warn({ blob: map.blobId, chunk: c.indexInBlob, err: (e as Error).message }, 'prefetch of a chunk failed');
      }
    }
  }

  closeAll(): void {
    for (const o of this.objects.values()) this.dev.closeFd(o.fd);
    this.objects.clear();
  }
}

