/** Opening a bootstrap from disk, validating it and finding its blobs: shared by every reader. */
import fs from 'node:fs';
import path from 'node:path';
import { NydusError } from '../../erofs/errors.ts';
import { ErofsImage } from '../../erofs/image.ts';
import { LocalBlobReader } from '../blob/blob-reader.ts';
import { type ValidatedBlob, type ValidatedImage, validateImage } from './validate.ts';

/** The largest bootstrap read: metadata of this size is far beyond any image's (the file is read whole). */
export const BOOTSTRAP_MAX_BYTES = 1 << 30;

export function openBootstrap(file: string): ErofsImage {
  let buf: Buffer;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new NydusError(`bootstrap ${file} is not a regular file`);
    if (st.size > BOOTSTRAP_MAX_BYTES) throw new NydusError(`bootstrap ${file} is too large (${st.size} bytes) for a metadata image`);
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

/** Refuses, in one error naming them all, the blobs that have no file where the caller said to look. */
function requireBlobs(file: string, blobs: Array<{ id: string; path: string | undefined }>, where: BlobLocation): void {
  if (blobs.some((b) => !b.path)) {
    const given = where.blobPaths?.length ?? 0;
    throw new NydusError(`${file} names ${blobs.length} blobs but ${given} blob path${given === 1 ? ' was' : 's were'} given; give a blob directory (-D) or a blob path (--blob) for each`);
  }
  const missing = blobs.filter((b) => !fs.existsSync(b.path!));
  if (missing.length === 0) return;
  const place = where.blobDir && !where.blobPaths ? `blob directory ${where.blobDir}` : 'the given blob paths';
  throw new NydusError(`${file}: ${missing.length} of the ${blobs.length} blobs it names ${missing.length === 1 ? 'is' : 'are'} missing from ${place}: `
    + missing.map((b) => (where.blobPaths ? b.path : b.id)).join(', '));
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
  const blobPath = (index: number, id: string): string | undefined => where!.blobPaths?.[index] ?? (where!.blobDir ? path.join(where!.blobDir, id) : undefined);
  let allFound = false;
  const reader = (b: ValidatedBlob): LocalBlobReader => {
    // Before the first blob is opened (the blob table is validated by then), every blob the
    // bootstrap names is looked for: one error lists all that are missing.
    if (!allFound) {
      requireBlobs(file, raw.blobs.map((_, i) => ({ id: raw.blobId(i), path: blobPath(i, raw.blobId(i)) })), where!);
      allFound = true;
    }
    let r = readers.get(b.index);
    if (!r) {
      r = new LocalBlobReader(blobPath(b.index, b.id)!, b.compressor, b.digester);
      readers.set(b.index, r);
    }
    return r;
  };
  try {
    // A bootstrap inlined in its blob names that blob by a placeholder, not by its digest: taken when
    // the caller gives each blob's file (nydus-snapshotter's Unpack: `unpack --blob <its image.blob>`).
    const image = validateImage(raw, { inlinedBlobId: (where?.blobPaths?.length ?? 0) >= raw.blobs.length });
    const blobs = where ? image.blobs.map(reader) : undefined;
    return { image, blobs, close };
  } catch (e) {
    close();
    throw e;
  }
}
