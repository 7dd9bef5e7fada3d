/**
 * The localfs backend: blobs are files named by their ids in a directory (or the next of nydus's
 * `alt_dirs` that has a blob, or nydus's one `blob_file` for every id). Counts what it reads.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { constants as fsConstants } from 'node:fs';
import { NydusError, EIO } from '../../../erofs/errors.ts';
import { type BackendMetrics, type MetricsSink, countRead, countStream, newBackendMetrics } from './metrics.ts';
import type { LocalFsBackendConfig } from '../config.ts';

/** Where a localfs backend looks for its blobs: its config less the type. */
type BlobPlaces = Omit<LocalFsBackendConfig, 'type'>;

export { type BackendMetrics, newBackendMetrics };

export interface BlobBackend {
  readonly type: string;
  read(blobId: string, offset: number, size: number): Promise<Buffer>;
  size(blobId: string): Promise<number>;
  /** Releases what the backend holds (file handles, connections); reads after it open them again. */
  close(): Promise<void>;
  /**
   * New credentials (nydus's `registry_auth`: base64 of user:password) for the reads from now on;
   * only backends that authenticate have it.
   */
  updateAuth?(auth: string): void;
  /**
   * For a blob that is a file on this machine: runs `read` with its fd, open until `read` settles, so
   * that a verification job reads its bytes itself (ChunkFetcher). Counted as a read of `size` bytes;
   * `read` rejects when the file could not be read. Only localfs has it.
   */
  readLocal?<T>(blobId: string, size: number, read: (fd: number) => Promise<T>): Promise<T>;
  /**
   * The blob's bytes from `from` to its end, in order, in one request where the backend makes
   * requests (nydus's `stream_prefetch`: a GET without Range for a whole blob); `signal` ends it.
   * Counted as one read of the bytes it gave. A failure is an EIO naming the blob.
   */
  stream(blobId: string, from: number, signal: AbortSignal): AsyncIterable<Buffer>;
}

/** The pieces a blob file is streamed in (BlobBackend.stream). */
const STREAM_PIECE = 1 << 20;

/**
 * A blob file opened for reading: O_NONBLOCK so that a FIFO in its place does not wait for a writer
 * (it would hang the daemon), and refused unless it is a regular file.
 */
async function openRegularFile(file: string): Promise<fs.FileHandle> {
  const h = await fs.open(file, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  try {
    if (!(await h.stat()).isFile()) throw new NydusError(`blob ${file} is not a regular file`, EIO);
  } catch (e) {
    await h.close();
    throw e;
  }
  return h;
}

export class LocalFsBackend implements BlobBackend {
  readonly type = 'localfs';
  private readonly handles = new Map<string, Promise<fs.FileHandle>>();
  /** readLocal calls running: close waits for them (their jobs read through the handles' fds). */
  private readonly localReads = new Set<Promise<unknown>>();

  private readonly places: BlobPlaces;

  /** `places`: the blobs' directory, or the config's places (dir, alt_dirs, blob_file). */
  constructor(places: string | BlobPlaces, private readonly metrics: MetricsSink = newBackendMetrics()) {
    this.places = typeof places === 'string' ? { dir: places } : places;
  }

  /**
   * Where a blob is read: the blob_file, else `<dir>/<id>` unless it is missing or empty and an alt
   * dir has one that is not (as nydus looks; `<dir>/<id>` when none has, so that its error names it).
   */
  private async pathOf(blobId: string): Promise<string> {
    const { dir, altDirs = [], blobFile } = this.places;
    if (blobFile) return blobFile;
    const usable = async (file: string) => (await fs.stat(file).catch(() => null))?.size ? true : false;
    const first = path.join(dir, blobId);
    if (!altDirs.length || (dir && await usable(first))) return first;
    for (const d of altDirs) if (await usable(path.join(d, blobId))) return path.join(d, blobId);
    return dir ? first : path.join(altDirs[0], blobId);
  }

  private handle(blobId: string): Promise<fs.FileHandle> {
    let h = this.handles.get(blobId);
    if (!h) {
      h = this.pathOf(blobId).then(openRegularFile);
      h.catch(() => this.handles.delete(blobId));
      this.handles.set(blobId, h);
    }
    return h;
  }

  async size(blobId: string): Promise<number> {
    return (await (await this.handle(blobId)).stat()).size;
  }

  read(blobId: string, offset: number, size: number): Promise<Buffer> {
    return countRead(this.metrics, async () => {
      try {
        const h = await this.handle(blobId);
        // Uninitialized: every byte is read into it (a zeroed buffer costs a pass over it, and page faults).
        const buf = Buffer.allocUnsafe(size);
        let done = 0;
        while (done < size) {
          const { bytesRead } = await h.read(buf, done, size - done, offset + done);
          if (bytesRead === 0) throw new Error(`short read at ${offset + done}`);
          done += bytesRead;
        }
        return buf;
      } catch (e) {
        throw this.readError(blobId, e as Error);
      }
    });
  }

  stream(blobId: string, from: number, signal: AbortSignal): AsyncIterable<Buffer> {
    const self = this;
    // Positional reads through the backend's handle, which every read of the blob shares: a
    // ReadStream made on it would close it when destroyed (its taker leaving, or the abort).
    async function* pieces(): AsyncGenerator<Buffer> {
      try {
        const h = await self.handle(blobId);
        for (let at = from; ;) {
          signal.throwIfAborted();
          const buf = Buffer.allocUnsafe(STREAM_PIECE);
          const { bytesRead } = await h.read(buf, 0, STREAM_PIECE, at);
          if (bytesRead === 0) return;
          at += bytesRead;
          yield buf.subarray(0, bytesRead);
        }
      } catch (e) {
        throw self.readError(blobId, e as Error);
      }
    }
    return countStream(this.metrics, pieces(), signal);
  }

  /** (Its latency in the metrics is the whole job's: the read, the verification and the write.) */
  readLocal<T>(blobId: string, size: number, read: (fd: number) => Promise<T>): Promise<T> {
    const p = countRead(this.metrics, async () => {
      try {
        return await read((await this.handle(blobId)).fd);
      } catch (e) {
        throw this.readError(blobId, e as Error);
      }
    }, () => size);
    const tracked = p.catch(() => undefined).finally(() => this.localReads.delete(tracked));
    this.localReads.add(tracked);
    return p;
  }

  /** A failed read of a blob, naming its file. */
  private readError(blobId: string, e: Error): NydusError {
    const { dir, altDirs = [], blobFile } = this.places;
    const where = blobFile ? `file ${blobFile}` : [dir, ...altDirs].filter(Boolean).map((d) => path.join(d, blobId)).join(' or ');
    return new NydusError(`localfs backend: blob ${blobId} (${where}): ${e.message}`, EIO);
  }

  async close(): Promise<void> {
    await Promise.all(this.localReads);
    const open = [...this.handles.values()];
    this.handles.clear();
    for (const h of open) await (await h.catch(() => null))?.close();
  }
}
