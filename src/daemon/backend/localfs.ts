/** The localfs backend: blobs are files named by their ids in one directory. Counts what it reads. */
import fs from 'node:fs/promises';
import path from 'node:path';
import { NydusError, EIO } from '../../../erofs/errors.ts';
import { type BackendMetrics, countRead, newBackendMetrics } from './metrics.ts';

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
}

export class LocalFsBackend implements BlobBackend {
  readonly type = 'localfs';
  private readonly handles = new Map<string, Promise<fs.FileHandle>>();

  constructor(private readonly dir: string, private readonly metrics: BackendMetrics = newBackendMetrics()) {}

  private handle(blobId: string): Promise<fs.FileHandle> {
    let h = this.handles.get(blobId);
    if (!h) {
      h = fs.open(path.join(this.dir, blobId), 'r');
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
        throw new NydusError(`localfs backend: blob ${path.join(this.dir, blobId)}: ${(e as Error).message}`, EIO);
      }
    });
  }

  async close(): Promise<void> {
    const open = [...this.handles.values()];
    this.handles.clear();
    for (const h of open) await (await h.catch(() => null))?.close();
  }
}
