/** Opening a bootstrap from disk, validating it and finding its blobs: shared by every reader. */
import fs from 'node:fs';
import path from 'node:path';
import { NydusError } from '../../erofs/errors.ts';
import { ErofsImage } from '../../erofs/image.ts';
import { LocalBlobReader } from '../blob/blob-reader.ts';
import { type ValidatedBlob, type ValidatedImage, validateImage } from './validate.ts';

export function openBootstrap(file: string): ErofsImage {
  let buf: Buffer;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new NydusError(`bootstrap ${file} is not a regular file`);
    if (st.size > 1 << 30) throw new NydusError(`bootstrap ${file} is too large (${st.size} bytes) for a metadata image`);
    buf = fs.readFileSync(file);
  } catch (e) {
    if (e instanceof NydusError) throw e;
    throw new NydusError(`cannot read bootstrap ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  return new ErofsImage(buf, file);
}

/** Where a reader finds the blobs: a directory of files named by blob id, or explicit paths. */
export interface BlobLocation {
  blobDir?: string;
  blobPaths?: string[];
}

export interface OpenedImage {
  image: ValidatedImage;
  /** One reader per blob, when a blob location was given. */
  blobs?: LocalBlobReader[];
  close(): void;
}

/**
 * Reads and validates a bootstrap; with a blob location, also opens its blobs (by validated id only,
 * so an id from the image never names anything outside the blob directory).
 */
export function openImage(file: string, where?: BlobLocation): OpenedImage {
  const raw = openBootstrap(file);
  const readers = new Map<number, LocalBlobReader>();
  const close = () => {
    for (const r of readers.values()) r.close();
  };
  const reader = (b: ValidatedBlob): LocalBlobReader => {
    let r = readers.get(b.index);
    if (!r) {
      const p = where!.blobPaths?.[b.index] ?? (where!.blobDir ? path.join(where!.blobDir, b.id) : undefined);
      if (!p) throw new NydusError(`${file}: blob ${b.id} is needed; give a blob directory (-D) or a blob path (--blob)`);
      r = new LocalBlobReader(p, b.compressor, b.digester);
      readers.set(b.index, r);
    }
    return r;
  };
  try {
    const image = validateImage(raw, where ? { blobChunkInfos: (b) => reader(b).readChunkInfos() } : {});
    const blobs = where ? image.blobs.map(reader) : undefined;
    return { image, blobs, close };
  } catch (e) {
    close();
    throw e;
  }
}
