/** Blobs: HEAD, a verified byte stream (resumed with Range after a break), and Range reads. */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Action } from './auth.ts';
import { DigestMismatchError, RegistryError } from './errors.ts';
import type { Descriptor } from './media-types.ts';
import { checkDigest, formatReference, type ImageReference } from './reference.ts';
import { abortReason, contentRange, discard, drain, header, isRetryableNetworkError } from './transport.ts';
import { toRef, type RefLike, type RegistrySession } from './session.ts';
import { ShapeError, describeValue, parseImageConfig } from './validate.ts';

export interface BlobStreamOptions {
  /** The descriptor's size: more bytes is an error as soon as seen, fewer one at the end. */
  size?: number;
  /**
   * The blob from this byte on (a Range request): its sha256 is then not checked (the bytes before
   * it are never read), its size still is. Default 0: the whole blob, in a request without Range.
   */
  from?: number;
  /** Ends the download (and its retries) when aborted. */
  signal?: AbortSignal;
}

export interface GetBlobOptions extends BlobStreamOptions {
  /** Most bytes held (default MAX_BLOB_IN_MEMORY): a larger `size` is refused before any request, a longer body at the first byte past it. */
  maxSize?: number;
  /** Longest the whole download may take, ms (default: none, as for any blob). */
  deadlineMs?: number;
}

export interface RangeReadOptions {
  /** What to do when the registry ignores Range and sends the whole blob (200): 'slice' (default) or 'refuse'. */
  whenRangeIgnored?: 'slice' | 'refuse';
  /** Ends the read (and its retries) when aborted: a caller's deadline. */
  signal?: AbortSignal;
}

/** Default bound of getBlob, which holds a whole blob in memory (configs have their own, smaller one). */
export const MAX_BLOB_IN_MEMORY = 256 << 20;

/** A descriptor size given to a read: an integer >= 0, or the read is refused before it starts. */
function checkSize(size: unknown, where: { reference: string; method: string; path: string }): void {
  if (size !== undefined && (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0)) {
    throw new RegistryError({ ...where, detail: `blob size ${describeValue(size)} is not an integer >= 0` });
  }
}

function blobPath(ref: ImageReference, digest: string): string {
  return `/v2/${ref.repository}/blobs/${checkDigest(digest, formatReference(ref))}`;
}

/** Size of a blob, or undefined when the repository does not have it. */
export async function headBlob(s: RegistrySession, refLike: RefLike, digest: string, access: Action = 'pull', signal?: AbortSignal): Promise<{ size: number } | undefined> {
  const ref = toRef(refLike);
  const res = await s.call(ref, access, { method: 'HEAD', target: blobPath(ref, digest), followRedirects: true, signal });
  await drain(res.body);
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
  const { signal } = opts;
  async function* chunks(): AsyncGenerator<Buffer> {
    checkSize(opts.size, where);
    const from = opts.from ?? 0;
    if (!Number.isSafeInteger(from) || from < 0 || (opts.size !== undefined && from > opts.size)) {
      throw new RegistryError({ ...where, detail: `reading on from byte ${describeValue(from)}: not a byte of the blob` });
    }
    const hash = from === 0 ? createHash('sha256') : null;
    // The blob's size: given, or told by a 206's Content-Range. Read on from a byte, the digest is
    // not checked, and only the size tells a body that ended early from the blob's end.
    let size = opts.size;
    let got = from;
    let failures = 0;
    for (;;) {
      const headers: Record<string, string> = got ? { range: `bytes=${got}-` } : {};
      const res = await s.call(ref, 'pull', { method: 'GET', target: path, headers, followRedirects: true, signal });
      await s.expect(ref, 'GET', res, got ? 206 : 200, 200);
      const partial = got > 0 && holdsRange(res, got);
      if (partial) {
        const cr = contentRange(res.headers);
        // (nydus-backend-proxy's 200 gives the range's length for the total.)
        const total = res.status === 206 ? cr?.total : undefined;
        if (!cr || cr.first !== got || (total !== undefined && size !== undefined && total !== size)) {
          discard(res.body);
          throw new RegistryError({ ...where, status: res.status, detail: `reading on from byte ${got}${size === undefined ? '' : ` of ${size}`}, got Content-Range "${header(res.headers, 'content-range') ?? ''}"` });
        }
        size ??= total;
      }
      // A resumed request answered with the whole blob: skip what was already delivered.
      let skip = got && !partial ? got : 0;
      const before = got;
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
          if (size !== undefined && got > size) throw new DigestMismatchError(where, `${size} bytes`, `more than ${size} bytes`);
          hash?.update(buf);
          yield buf;
        }
        // A 206 may hold less than the rest asked for: what is missing is asked for again, while
        // each answer brings bytes.
        if (size === undefined || got >= size || got === before) break;
        continue;
      } catch (e) {
        if (e instanceof RegistryError) throw e;
        if (signal?.aborted) throw new RegistryError({ ...where, detail: `aborted at byte ${got}: ${abortReason(signal)}`, cause: e });
        if (!isRetryableNetworkError(e) || failures >= s.transport.retries) {
          throw new RegistryError({ ...where, detail: `reading body at byte ${got}: ${(e as Error).message}`, cause: e });
        }
        discard(res.body);
        await s.transport.pause(failures++, signal).catch((err) => {
          throw new RegistryError({ ...where, detail: `aborted at byte ${got}: ${signal?.aborted ? abortReason(signal) : (err as Error).message}`, cause: err });
        });
      }
    }
    if (size !== undefined && got !== size) throw new DigestMismatchError(where, `${size} bytes`, `${got} bytes`);
    if (!hash) return;
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== digest) throw new DigestMismatchError(where, digest, actual);
  }
  return Readable.from(chunks(), { objectMode: false });
}

/**
 * A whole blob in memory, verified (for configs and other small blobs): never more than `maxSize`
 * bytes (default MAX_BLOB_IN_MEMORY) are held, and a descriptor size above it is refused before any
 * request; with `deadlineMs`, a download not done by then is aborted.
 */
export async function getBlob(s: RegistrySession, refLike: RefLike, digest: string, opts: GetBlobOptions = {}): Promise<Buffer> {
  const ref = toRef(refLike);
  const where = { reference: formatReference(ref), method: 'GET', path: blobPath(ref, digest) };
  const max = opts.maxSize ?? MAX_BLOB_IN_MEMORY;
  checkSize(opts.size, where);
  if (opts.size !== undefined && opts.size > max) throw new RegistryError({ ...where, detail: `blob of ${opts.size} bytes is larger than the ${max} bytes read into memory` });
  const deadline = opts.deadlineMs !== undefined ? AbortSignal.timeout(opts.deadlineMs) : undefined;
  const signal = deadline && opts.signal ? AbortSignal.any([deadline, opts.signal]) : deadline ?? opts.signal;
  const parts: Buffer[] = [];
  let n = 0;
  const stream = blobStream(s, ref, digest, { size: opts.size, signal });
  try {
    for await (const b of stream) {
      n += (b as Buffer).length;
      if (n > max) throw new RegistryError({ ...where, detail: `blob longer than the ${max} bytes read into memory` });
      parts.push(b as Buffer);
    }
  } catch (e) {
    if (deadline?.aborted) throw new RegistryError({ ...where, detail: `not received whole within ${opts.deadlineMs! / 1000} s (${n} bytes came)`, cause: e });
    throw e;
  } finally {
    stream.destroy();
  }
  return Buffer.concat(parts, n);
}

export interface ImageConfig {
  /** The bytes served, verified against the descriptor's digest and size. */
  bytes: Buffer;
  /** Parsed: a JSON object (rootfs, config and history, when present, of their types). */
  json: Record<string, unknown>;
}

/**
 * An image's config, read as small documents are: its descriptor's size must be at most the config
 * cap (default 4 MiB) before anything is asked for, the body arrive within the document deadline, and
 * the bytes be a JSON object (parseImageConfig). Errors name the image and the config digest.
 */
export async function getConfig(s: RegistrySession, refLike: RefLike, desc: Descriptor): Promise<ImageConfig> {
  const ref = toRef(refLike);
  const where = { reference: formatReference(ref), method: 'GET', path: blobPath(ref, desc.digest) };
  if (typeof desc.size !== 'number' || !Number.isSafeInteger(desc.size) || desc.size < 0) {
    throw new RegistryError({ ...where, detail: `image config size ${describeValue(desc.size)} is not an integer >= 0` });
  }
  if (desc.size > s.maxConfigSize) throw new RegistryError({ ...where, detail: `image config of ${desc.size} bytes is larger than ${s.maxConfigSize}` });
  const bytes = await getBlob(s, ref, desc.digest, { size: desc.size, maxSize: s.maxConfigSize, deadlineMs: s.transport.documentTimeoutMs });
  try {
    return { bytes, json: parseImageConfig(bytes) };
  } catch (e) {
    if (!(e instanceof ShapeError)) throw e;
    throw new RegistryError({ ...where, detail: `image config ${desc.digest}: ${e.message}` });
  }
}

/**
 * Whether the answer to a Range GET holds the range rather than the whole blob: a 206, or a 200 whose
 * Content-Range names the range asked (from `first`, to `last` when a last byte was asked), as nydus's
 * own nydus-backend-proxy (Rust) answers a range, and nydusd takes it. Any other 200 is the whole blob.
 */
function holdsRange(res: { status: number; headers: Parameters<typeof header>[0] }, first: number, last?: number): boolean {
  if (res.status === 206) return true;
  const cr = res.status === 200 ? contentRange(res.headers) : null;
  return !!cr && cr.first === first && (last === undefined || cr.last === last);
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
  const { signal } = opts;
  for (let failures = 0; ; failures++) {
    const res = await s.call(ref, 'pull', { method: 'GET', target: path, headers: { range: `bytes=${offset}-${last}` }, followRedirects: true, signal });
    await s.expect(ref, 'GET', res, 206, 200);
    const rangeWhere = { ...where, status: res.status };
    const partial = holdsRange(res, offset, last);
    if (!partial && opts.whenRangeIgnored === 'refuse') {
      discard(res.body);
      throw new RegistryError({ ...rangeWhere, detail: `asked for bytes ${offset}-${last}, the registry sent the whole blob (200) instead of 206` });
    }
    if (partial) {
      const cr = header(res.headers, 'content-range');
      // A 206 must say which bytes it holds (RFC 9110 15.3.7): without it, they could be any.
      const m = contentRange(res.headers);
      if (!m || m.first !== offset || m.last !== last) {
        discard(res.body);
        throw new RegistryError({ ...rangeWhere, detail: `asked for bytes ${offset}-${last}, got ${cr === undefined ? 'no Content-Range' : `Content-Range "${cr}"`}` });
      }
    }
    // Copy only the window [offset, offset+length) of what arrives; stop reading once it is full.
    const out = Buffer.allocUnsafe(length);
    let filled = 0;
    let pos = partial ? offset : 0;
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
      if (signal?.aborted) throw new RegistryError({ ...rangeWhere, detail: `reading bytes ${offset}-${last}: aborted: ${abortReason(signal)}`, cause: e });
      if (!isRetryableNetworkError(e) || failures >= s.transport.retries) {
        throw new RegistryError({ ...rangeWhere, detail: `reading bytes ${offset}-${last}: ${(e as Error).message}`, cause: e });
      }
      await s.transport.pause(failures, signal).catch((err) => {
        throw new RegistryError({ ...rangeWhere, detail: `reading bytes ${offset}-${last}: aborted: ${signal?.aborted ? abortReason(signal) : (err as Error).message}`, cause: err });
      });
      continue;
    } finally {
      discard(res.body);
    }
    if (filled !== length || (partial && pos > offset + length)) {
      const why = filled !== length ? `got ${filled} of ${length} bytes at ${offset} (blob shorter?)` : `206 body longer than the ${length} bytes asked for`;
      throw new RegistryError({ ...rangeWhere, detail: why });
    }
    return out;
  }
}
