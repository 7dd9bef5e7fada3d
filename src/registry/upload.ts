/**
 * Blob uploads: monolithic (POST + PUT) for content of known digest, skipped when HEAD finds it or
 * mounted from another repository; chunked PATCHes for streams of unknown length, resumed from the
 * session's state after a failure.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { repositoryScope } from './auth.ts';
import { headBlob } from './blobs.ts';
import { DigestMismatchError, RegistryError } from './errors.ts';
import { checkDigest, formatReference, type ImageReference } from './reference.ts';
import { drain, header, isRetryableNetworkError, type HttpResponse } from './transport.ts';
import { sha256, toRef, type RefLike, type RegistrySession } from './session.ts';

/** A blob source of known size and digest: a function opening a fresh stream for each attempt. */
export interface StreamSource {
  open: () => Readable;
  size: number;
  digest: string;
}

export interface PushBlobOptions {
  /** Repositories on the same registry to mount the blob from before uploading it. */
  mountFrom?: string | string[];
}

export interface PushedBlob {
  digest: string;
  size: number;
  /** 'exists': HEAD found it; 'mounted': cross-repository mount; 'uploaded'. */
  how: 'exists' | 'mounted' | 'uploaded';
}

export interface PushStreamOptions {
  /** PATCH size (default the client's uploadChunkSize). */
  chunkSize?: number;
  /** Refuse to commit the blob unless its sha256 is this. */
  expectedDigest?: string;
}

function appendQuery(url: URL, key: string, value: string): string {
  const u = new URL(url.href);
  u.searchParams.set(key, value);
  return u.href;
}

/** Buffers of exactly `size` bytes (the last one shorter) from any byte stream. */
async function* rechunk(source: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let held = 0;
  for await (const piece of source) {
    let buf = Buffer.isBuffer(piece) ? piece : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
    while (held + buf.length >= size) {
      const take = size - held;
      parts.push(buf.subarray(0, take));
      yield Buffer.concat(parts);
      parts = [];
      held = 0;
      buf = buf.subarray(take);
    }
    if (buf.length) {
      parts.push(Buffer.from(buf));
      held += buf.length;
    }
  }
  if (held) yield Buffer.concat(parts);
}

/** The end offset (exclusive) a registry reports in an upload's `Range: 0-<last>` header. */
function uploadedUpTo(range: string | undefined): number | undefined {
  const m = range ? /^(?:bytes=)?0-(-?\d+)$/.exec(range.trim()) : null;
  return m ? Number(m[1]) + 1 : undefined;
}


async function startUpload(s: RegistrySession, ref: ImageReference): Promise<URL> {
  const res = await s.call(ref, 'push', { method: 'POST', target: `/v2/${ref.repository}/blobs/uploads/`, headers: { 'content-length': '0' } });
  await s.expect(ref, 'POST', res, 202);
  await drain(res.body);
  return s.location(ref, 'POST', res);
}

/** Tries a cross-repository mount: true when mounted, else the upload session the registry opened. */
async function mount(s: RegistrySession, ref: ImageReference, digest: string, from: string): Promise<true | URL> {
  const scopes = [repositoryScope(ref.repository, 'push'), repositoryScope(from, 'pull')];
  const target = `/v2/${ref.repository}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`;
  const res = await s.call(ref, scopes, { method: 'POST', target, headers: { 'content-length': '0' } });
  await s.expect(ref, 'POST', res, 201, 202);
  await drain(res.body);
  return res.status === 201 ? true : s.location(ref, 'POST', res);
}

async function finishUpload(s: RegistrySession, ref: ImageReference, location: URL, digest: string, body: Buffer | StreamSource, size: number): Promise<void> {
  const target = appendQuery(location, 'digest', digest);
  const res = await s.call(ref, 'push', {
    method: 'PUT',
    target,
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
    body: Buffer.isBuffer(body) ? body : body.open,
  });
  await s.expect(ref, 'PUT', res, 201);
  await drain(res.body);
  const served = header(res.headers, 'docker-content-digest');
  if (served && served !== digest) throw new DigestMismatchError({ reference: formatReference(ref), method: 'PUT', path: location.pathname }, digest, served);
}

/**
 * Pushes a blob of known content: skipped when HEAD finds it, mounted from `mountFrom` when the
 * registry can, else POST + one monolithic PUT.
 */
export async function pushBlob(s: RegistrySession, refLike: RefLike, source: Buffer | StreamSource, opts: PushBlobOptions = {}): Promise<PushedBlob> {
  const ref = toRef(refLike);
  const digest = Buffer.isBuffer(source) ? sha256(source) : checkDigest(source.digest, formatReference(ref));
  const size = Buffer.isBuffer(source) ? source.length : source.size;
  if (await headBlob(s, ref, digest, 'push')) return { digest, size, how: 'exists' };
  let location: URL | undefined;
  for (const from of [opts.mountFrom ?? []].flat()) {
    if (from === ref.repository) continue;
    const mounted = await mount(s, ref, digest, from);
    if (mounted === true) return { digest, size, how: 'mounted' };
    location = mounted;
    break; // The registry opened an upload instead (202): use it.
  }
  location ??= await startUpload(s, ref);
  await finishUpload(s, ref, location, digest, source, size);
  return { digest, size, how: 'uploaded' };
}

/** Asks an upload session how much it holds (GET on its Location: 204 with `Range: 0-<last>`). */
async function uploadStatus(s: RegistrySession, ref: ImageReference, location: URL): Promise<{ upTo: number; location: URL }> {
  const res = await s.call(ref, 'push', { method: 'GET', target: location.href });
  await s.expect(ref, 'GET', res, 204);
  await drain(res.body);
  const upTo = uploadedUpTo(header(res.headers, 'range'));
  if (upTo === undefined) throw new RegistryError({ reference: formatReference(ref), method: 'GET', path: location.pathname, status: res.status, detail: 'upload status without a Range header' });
  return { upTo, location: header(res.headers, 'location') ? s.location(ref, 'GET', res) : location };
}

/** PATCHes `chunk` at `offset`; after a failure resumes from what the registry reports it holds. */
async function patchChunk(s: RegistrySession, ref: ImageReference, location: URL, chunk: Buffer, offset: number): Promise<URL> {
  let sent = 0;
  for (let failures = 0; ; ) {
    const part = chunk.subarray(sent);
    const start = offset + sent;
    let res: HttpResponse | undefined;
    let failure: unknown;
    try {
      res = await s.call(ref, 'push', {
        method: 'PATCH',
        target: location.href,
        headers: { 'content-type': 'application/octet-stream', 'content-range': `${start}-${start + part.length - 1}`, 'content-length': String(part.length) },
        body: part,
        retries: 0,
      });
    } catch (e) {
      if (!(e instanceof RegistryError) || !isRetryableNetworkError(e.cause)) throw e;
      failure = e;
    }
    if (res && res.status === 202) {
      await drain(res.body);
      const next = s.location(ref, 'PATCH', res);
      const upTo = uploadedUpTo(header(res.headers, 'range'));
      if (upTo !== undefined && upTo !== offset + chunk.length) {
        throw new RegistryError({ reference: formatReference(ref), method: 'PATCH', path: location.pathname, status: 202, detail: `registry holds ${upTo} bytes after a chunk ending at ${offset + chunk.length}` });
      }
      return next;
    }
    if (res && !(res.status >= 500 || res.status === 429)) await s.expect(ref, 'PATCH', res, 202);
    if (res) await drain(res.body);
    if (failures >= s.transport.retries) {
      if (failure) throw failure;
      await s.expect(ref, 'PATCH', res!, 202);
    }
    await s.transport.pause(failures++);
    const status = await uploadStatus(s, ref, location);
    location = status.location;
    if (offset === 0 && status.upTo === 1) {
      // `Range: 0-0` is what distribution answers for an empty session and for one of a byte alike:
      // nothing before this chunk is lost by starting the upload over in a session of its own.
      location = await startUpload(s, ref);
      sent = 0;
      continue;
    }
    if (status.upTo < offset || status.upTo > offset + chunk.length) {
      throw new RegistryError({ reference: formatReference(ref), method: 'PATCH', path: location.pathname, detail: `cannot resume: registry holds ${status.upTo} bytes, chunk is ${offset}-${offset + chunk.length - 1}` });
    }
    sent = status.upTo - offset;
    if (sent === chunk.length) return location;
  }
}

/**
 * Pushes a stream of unknown length with chunked PATCH uploads, hashing as it goes; the digest is
 * known (and the blob committed with PUT ?digest=) only at the end.
 */
export async function pushBlobStream(s: RegistrySession, refLike: RefLike, stream: AsyncIterable<Uint8Array>, opts: PushStreamOptions = {}): Promise<PushedBlob> {
  const ref = toRef(refLike);
  if (opts.expectedDigest) checkDigest(opts.expectedDigest, formatReference(ref));
  let location = await startUpload(s, ref);
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of rechunk(stream, opts.chunkSize ?? s.chunkSize)) {
    hash.update(chunk);
    location = await patchChunk(s, ref, location, chunk, size);
    size += chunk.length;
  }
  const digest = `sha256:${hash.digest('hex')}`;
  if (opts.expectedDigest && digest !== opts.expectedDigest) {
    await s.call(ref, 'push', { method: 'DELETE', target: location.href, retries: 0 }).then((r) => drain(r.body), () => undefined);
    throw new DigestMismatchError({ reference: formatReference(ref), method: 'PUT', path: location.pathname }, opts.expectedDigest, digest);
  }
  await finishUpload(s, ref, location, digest, Buffer.alloc(0), 0);
  return { digest, size, how: 'uploaded' };
}