/** Blobs: HEAD, a verified byte stream (resumed with Range after a break), and Range reads. */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Action } from './auth.ts';
import { DigestMismatchError, RegistryError } from './errors.ts';
import { checkDigest, formatReference, type ImageReference } from './reference.ts';
import { discard, header, isRetryableNetworkError } from './transport.ts';
import { toRef, type RefLike, type RegistrySession } from './session.ts';

export interface BlobStreamOptions {
  /** The descriptor's size: more bytes is an error as soon as seen, fewer one at the end. */
  size?: number;
}

export interface RangeReadOptions {
  /** What to do when the registry ignores Range and sends the whole blob (200): 'slice' (default) or 'refuse'. */
  whenRangeIgnored?: 'slice' | 'refuse';
}

function blobPath(ref: ImageReference, digest: string): string {
  return `/v2/${ref.repository}/blobs/${checkDigest(digest, formatReference(ref))}`;
}

/** Size of a blob, or undefined when the repository does not have it. */
export async function headBlob(s: RegistrySession, refLike: RefLike, digest: string, access: Action = 'pull'): Promise<{ size: number } | undefined> {
  const ref = toRef(refLike);
  const res = await s.call(ref, access, { method: 'HEAD', target: blobPath(ref, digest), followRedirects: true });
  await res.body.dump();
  if (res.status === 404) return undefined;
  await s.expect(ref, 'HEAD', res, 200);
  const size = Number(header(res.headers, 'content-length') ?? NaN);
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new RegistryError({ reference: formatReference(ref), method: 'HEAD', path: res.url.pathname, status: 200, detail: 'no valid Content-Length' });
  }
  return { size };
}

/**
 * The blob as a byte stream. Its sha256 (and size, when given) is checked while reading: a mismatch
 * makes the stream fail after the last byte instead of ending. A connection that breaks or stalls
 * mid-body is resumed with a Range request (up to the retry limit).
 */
export function blobStream(s: RegistrySession, refLike: RefLike, digest: string, opts: BlobStreamOptions = {}): Readable {
  const ref = toRef(refLike);
  const path = blobPath(ref, digest);
  const where = { reference: formatReference(ref), method: 'GET', path };
  async function* chunks(): AsyncGenerator<Buffer> {
    const hash = createHash('sha256');
    let got = 0;
    let failures = 0;
    for (;;) {
      const headers: Record<string, string> = got ? { range: `bytes=${got}-` } : {};
      const res = await s.call(ref, 'pull', { method: 'GET', target: path, headers, followRedirects: true });
      await s.expect(ref, 'GET', res, got ? 206 : 200, 200);
      if (res.status === 206) {
        const start = /^bytes (\d+)-/.exec(header(res.headers, 'content-range') ?? '')?.[1];
        if (Number(start) !== got) {
          discard(res.body);
          throw new RegistryError({ ...where, status: 206, detail: `resuming at byte ${got}, got Content-Range "${header(res.headers, 'content-range')}"` });
        }
      }
      // A resumed request answered with the whole blob: skip what was already delivered.
      let skip = got && res.status === 200 ? got : 0;
      try {
        for await (const piece of res.body as AsyncIterable<Buffer>) {
          let buf = piece;
          if (skip) {
            const n = Math.min(skip, buf.length);
            skip -= n;
            buf = buf.subarray(n);
            if (!buf.length) continue;
          }
          got += buf.length;
          if (opts.size !== undefined && got > opts.size) throw new DigestMismatchError(where, `${opts.size} bytes`, `more than ${opts.size} bytes`);
          hash.update(buf);
          yield buf;
        }
        break;
      } catch (e) {
        if (e instanceof RegistryError || !isRetryableNetworkError(e) || failures >= s.transport.retries) {
          if (e instanceof RegistryError) throw e;
          throw new RegistryError({ ...where, detail: `reading body at byte ${got}: ${(e as Error).message}`, cause: e });
        }
        discard(res.body);
        await s.transport.pause(failures++);
      }
    }
    if (opts.size !== undefined && got !== opts.size) throw new DigestMismatchError(where, `${opts.size} bytes`, `${got} bytes`);
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== digest) throw new DigestMismatchError(where, digest, actual);
  }
  return Readable.from(chunks(), { objectMode: false });
}

/** A whole blob in memory, verified (for configs and other small blobs). */
export async function getBlob(s: RegistrySession, refLike: RefLike, digest: string, opts: BlobStreamOptions = {}): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of blobStream(s, refLike, digest, opts)) parts.push(b as Buffer);
  return Buffer.concat(parts);
}

/**
 * `length` bytes of a blob from `offset` (Range GET; 206 expected). Not verified against the blob's
 * digest (only the whole blob has one): the caller checks what it reads (nydus chunk digests).
 */
export async function readBlobRange(s: RegistrySession, refLike: RefLike, digest: string, offset: number, length: number, opts: RangeReadOptions = {}): Promise<Buffer> {
  const ref = toRef(refLike);
  const path = blobPath(ref, digest);
  const where = { reference: formatReference(ref), method: 'GET', path };
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new RegistryError({ ...where, detail: `invalid range offset ${offset} length ${length}` });
  }
  if (length === 0) return Buffer.alloc(0);
  const last = offset + length - 1;
  for (let failures = 0; ; failures++) {
    const res = await s.call(ref, 'pull', { method: 'GET', target: path, headers: { range: `bytes=${offset}-${last}` }, followRedirects: true });
    await s.expect(ref, 'GET', res, 206, 200);
    const rangeWhere = { ...where, status: res.status };
    if (res.status === 200 && opts.whenRangeIgnored === 'refuse') {
      discard(res.body);
      throw new RegistryError({ ...rangeWhere, detail: `asked for bytes ${offset}-${last}, the registry sent the whole blob (200) instead of 206` });
    }
    if (res.status === 206) {
      const cr = header(res.headers, 'content-range');
      const m = cr ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(cr.trim()) : null;
      if (cr && (!m || Number(m[1]) !== offset || Number(m[2]) !== last)) {
        discard(res.body);
        throw new RegistryError({ ...rangeWhere, detail: `asked for bytes ${offset}-${last}, got Content-Range "${cr}"` });
      }
    }
    // Copy only the window [offset, offset+length) of what arrives; stop reading once it is full.
    const out = Buffer.allocUnsafe(length);
    let filled = 0;
    let pos = res.status === 206 ? offset : 0;
    try {
      for await (const piece of res.body as AsyncIterable<Buffer>) {
        const from = Math.max(0, offset - pos);
        const to = Math.min(piece.length, offset + length - pos);
        if (to > from) {
          piece.copy(out, filled, from, to);
          filled += to - from;
        }
        pos += piece.length;
        if (filled === length) break;
      }
    } catch (e) {
      if (!isRetryableNetworkError(e) || failures >= s.transport.retries) {
        throw new RegistryError({ ...rangeWhere, detail: `reading bytes ${offset}-${last}: ${(e as Error).message}`, cause: e });
      }
      await s.transport.pause(failures);
      continue;
    } finally {
      discard(res.body);
    }
    if (filled !== length || (res.status === 206 && pos > offset + length)) {
      const why = filled !== length ? `got ${filled} of ${length} bytes at ${offset} (blob shorter?)` : `206 body longer than the ${length} bytes asked for`;
      throw new RegistryError({ ...rangeWhere, detail: why });
    }
    return out;
  }
}
