/**
 * A small OCI distribution-spec client: manifests (OCI and Docker schema 2, indexes with platform
 * selection), blobs (streamed with their sha256 verified, HEAD, Range reads) and uploads (monolithic,
 * chunked, cross-repository mount). Authorization and retries come from auth.ts and transport.ts.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { Authorizer, repositoryScope, type Action } from './auth.ts';
import { dockerConfigCredentials, type Credentials } from './credentials.ts';
import { NydusError } from '../../erofs/errors.ts';
import { DigestMismatchError, EACCES, RegistryError, describeErrorBody } from './errors.ts';
import {
  MANIFEST_ACCEPT, isImageManifestType, isIndexType,
  type Descriptor, type ImageIndex, type ImageManifest, type Platform,
} from './media-types.ts';
import { defaultPlatform, formatPlatform, selectPlatforms } from './platform.ts';
import { checkDigest, formatReference, manifestTarget, parseReference, withDigest, type ImageReference } from './reference.ts';
import { Transport, discard, header, isRetryableNetworkError, type HttpRequest, type HttpResponse, type TransportOptions } from './transport.ts';

export interface RegistryClientOptions extends TransportOptions {
  /** Credentials for every registry, or per registry (`host[:port]` as written in references). */
  credentials?: Credentials | ((registry: string) => Credentials | undefined);
  /** Read docker's config.json when no explicit credentials apply (default true). */
  dockerConfig?: boolean;
  /** PATCH size of chunked uploads (default 8 MiB). */
  uploadChunkSize?: number;
  /** Largest manifest accepted, bytes (default 4 MiB, as distribution's limit). */
  maxManifestSize?: number;
}

/** A reference object or its string form. */
export type RefLike = ImageReference | string;

export interface FetchedManifest {
  reference: ImageReference;
  /** sha256 of `bytes`: the manifest's identity. */
  digest: string;
  mediaType: string;
  size: number;
  /** The exact bytes served (push these, not a re-serialization, to keep the digest). */
  bytes: Buffer;
  /** Parsed JSON: an ImageManifest or an ImageIndex according to `mediaType`. */
  json: ImageManifest | ImageIndex;
}

export interface ManifestHead {
  digest?: string;
  size?: number;
  mediaType?: string;
}

export interface PlatformImage {
  /** The index entry, absent when the reference names an image manifest directly. */
  descriptor?: Descriptor;
  platform?: Platform;
  manifest: FetchedManifest & { json: ImageManifest };
}

export interface ResolvedImage {
  /** What the reference names: an index (or manifest list), or an image manifest. */
  root: FetchedManifest;
  images: PlatformImage[];
}

export interface BlobStreamOptions {
  /** The descriptor's size: more bytes is an error as soon as seen, fewer one at the end. */
  size?: number;
}

export interface RangeReadOptions {
  /** What to do when the registry ignores Range and sends the whole blob (200): 'slice' (default) or 'refuse'. */
  whenRangeIgnored?: 'slice' | 'refuse';
}

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

function sha256(data: Uint8Array): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

function toRef(r: RefLike): ImageReference {
  return typeof r === 'string' ? parseReference(r) : r;
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

export class RegistryClient {
  private readonly transport: Transport;
  private readonly authorizers = new Map<string, Authorizer>();
  private readonly chunkSize: number;
  private readonly maxManifestSize: number;

  constructor(private readonly opts: RegistryClientOptions = {}) {
    this.transport = new Transport(opts);
    this.chunkSize = opts.uploadChunkSize ?? 8 << 20;
    this.maxManifestSize = opts.maxManifestSize ?? 4 << 20;
  }

  /** Retries made so far, over all requests. */
  get retryCount(): number {
    return this.transport.retryCount;
  }

  /** Token requests made so far for `registry`. */
  tokenRequests(registry: string): number {
    return this.authorizers.get(registry)?.tokenRequests ?? 0;
  }

  /** Closes the connections once requests in flight are done. */
  async close(): Promise<void> {
    await this.transport.close();
  }

  /** Aborts every request in flight (a failed conversion stops its other layers) and closes. */
  async destroy(): Promise<void> {
    await this.transport.destroy();
  }

  // ---- requests with authorization ----

  private credentialsFor(registry: string): Credentials | undefined {
    const c = this.opts.credentials;
    const explicit = typeof c === 'function' ? c(registry) : c;
    if (explicit) return explicit;
    if (this.opts.dockerConfig === false) return undefined;
    return dockerConfigCredentials(registry, this.opts.env ?? process.env);
  }

  private authorizer(ref: ImageReference): Authorizer {
    let a = this.authorizers.get(ref.registry);
    if (!a) {
      a = new Authorizer(ref.registry, this.credentialsFor(ref.registry), async (url, headers) => {
        const res = await this.transport.send(url.host, { method: 'GET', target: url.href, headers, reference: formatReference(ref) });
        return { status: res.status, body: await res.body.text() };
      });
      this.authorizers.set(ref.registry, a);
    }
    return a;
  }

  /** Sends with the cached authorization; on 401 answers the challenge and sends once more. */
  private async call(ref: ImageReference, access: Action | string[], req: Omit<HttpRequest, 'reference'>): Promise<HttpResponse> {
    const scopes = typeof access === 'string' ? [repositoryScope(ref.repository, access)] : access;
    const auth = this.authorizer(ref);
    let authorization = auth.header(scopes);
    for (let refreshed = false; ; refreshed = true) {
      const headers = { ...req.headers, ...(authorization ? { authorization } : {}) };
      const res = await this.transport.send(ref.endpoint, { ...req, headers, reference: formatReference(ref) });
      if (res.status !== 401 || refreshed) return res;
      await res.body.dump();
      try {
        authorization = await auth.challenge(header(res.headers, 'www-authenticate'), scopes);
      } catch (e) {
        if (e instanceof RegistryError) throw e;
        const detail = (e as Error).message.replace(`registry ${ref.registry}: `, '');
        throw new RegistryError({ reference: formatReference(ref), method: req.method, path: res.url.pathname, status: 401, detail, cause: e }, (e as NydusError).errno ?? EACCES);
      }
    }
  }

  /** Throws a RegistryError naming the reference, the path and the status unless `res.status` is expected. */
  private async expect(ref: ImageReference, method: string, res: HttpResponse, ...ok: number[]): Promise<void> {
    if (ok.includes(res.status)) return;
    const text = method === 'HEAD' ? '' : await res.body.text().catch(() => '');
    if (method === 'HEAD') await res.body.dump().catch(() => undefined);
    throw new RegistryError({ reference: formatReference(ref), method, path: res.url.pathname, status: res.status, ...describeErrorBody(text) });
  }

  // ---- manifests ----

  async getManifest(refLike: RefLike): Promise<FetchedManifest> {
    const ref = toRef(refLike);
    const path = `/v2/${ref.repository}/manifests/${manifestTarget(ref)}`;
    const res = await this.call(ref, 'pull', { method: 'GET', target: path, headers: { accept: MANIFEST_ACCEPT } });
    await this.expect(ref, 'GET', res, 200);
    const where = { reference: formatReference(ref), method: 'GET', path };
    const declared = Number(header(res.headers, 'content-length'));
    if (declared > this.maxManifestSize) {
      await res.body.dump();
      throw new RegistryError({ ...where, detail: `manifest of ${declared} bytes is larger than ${this.maxManifestSize}` });
    }
    const bytes = Buffer.from(await res.body.arrayBuffer());
    if (bytes.length > this.maxManifestSize) throw new RegistryError({ ...where, detail: `manifest larger than ${this.maxManifestSize} bytes` });
    const digest = sha256(bytes);
    if (ref.digest && digest !== ref.digest) throw new DigestMismatchError(where, ref.digest, digest);
    const served = header(res.headers, 'docker-content-digest');
    if (served?.startsWith('sha256:') && served !== digest) throw new DigestMismatchError(where, served, digest);
    let json: ImageManifest | ImageIndex & { schemaVersion?: number; mediaType?: string };
    try {
      json = JSON.parse(bytes.toString('utf8'));
    } catch (e) {
      throw new RegistryError({ ...where, detail: `manifest is not JSON: ${(e as Error).message}` });
    }
    const contentType = header(res.headers, 'content-type')?.split(';')[0].trim();
    const mediaType = json.mediaType ?? contentType ?? '';
    if (json.schemaVersion !== 2 || !(isImageManifestType(mediaType) || isIndexType(mediaType))) {
      throw new RegistryError({ ...where, detail: `unsupported manifest (schemaVersion ${json.schemaVersion}, media type "${mediaType}")` });
    }
    return { reference: ref, digest, mediaType, size: bytes.length, bytes, json };
  }

  /** HEAD of a manifest: its digest, size and type, or undefined when the registry has none. */
  async headManifest(refLike: RefLike): Promise<ManifestHead | undefined> {
    const ref = toRef(refLike);
    const path = `/v2/${ref.repository}/manifests/${manifestTarget(ref)}`;
    const res = await this.call(ref, 'pull', { method: 'HEAD', target: path, headers: { accept: MANIFEST_ACCEPT } });
    await res.body.dump();
    if (res.status === 404) return undefined;
    await this.expect(ref, 'HEAD', res, 200);
    const size = header(res.headers, 'content-length');
    return {
      digest: header(res.headers, 'docker-content-digest'),
      size: size !== undefined ? Number(size) : undefined,
      mediaType: header(res.headers, 'content-type')?.split(';')[0].trim(),
    };
  }

  /**
   * PUTs a manifest at the reference's tag (or digest). `manifest` is the exact bytes, or an object
   * serialized here. Returns its descriptor (for an index entry); a registry that reports another
   * digest is an error.
   */
  async putManifest(refLike: RefLike, manifest: Buffer | ImageManifest | ImageIndex, mediaType?: string): Promise<Descriptor> {
    const ref = toRef(refLike);
    const bytes = Buffer.isBuffer(manifest) ? manifest : Buffer.from(JSON.stringify(manifest));
    const path = `/v2/${ref.repository}/manifests/${manifestTarget(ref)}`;
    const where = { reference: formatReference(ref), method: 'PUT', path };
    let type = mediaType ?? (Buffer.isBuffer(manifest) ? undefined : manifest.mediaType);
    if (!type && Buffer.isBuffer(manifest)) {
      try {
        type = (JSON.parse(bytes.toString('utf8')) as { mediaType?: string }).mediaType;
      } catch (e) {
        throw new RegistryError({ ...where, detail: `manifest is not JSON: ${(e as Error).message}` });
      }
    }
    if (!type) throw new RegistryError({ ...where, detail: 'manifest has no mediaType and none was given' });
    const digest = sha256(bytes);
    if (ref.digest && ref.digest !== digest) throw new DigestMismatchError(where, ref.digest, digest);
    const res = await this.call(ref, 'push', { method: 'PUT', target: path, headers: { 'content-type': type }, body: bytes });
    await this.expect(ref, 'PUT', res, 201, 200);
    await res.body.dump();
    const served = header(res.headers, 'docker-content-digest');
    if (served && served !== digest) throw new DigestMismatchError(where, digest, served);
    return { mediaType: type, digest, size: bytes.length };
  }

  /**
   * The image manifests the reference stands for on `platform` (default: linux and this machine's
   * architecture, as nydusify) or on 'all' platforms of an index. Children are fetched by digest.
   */
  async resolveImage(refLike: RefLike, platform: Platform | 'all' = defaultPlatform()): Promise<ResolvedImage> {
    const ref = toRef(refLike);
    const root = await this.getManifest(ref);
    if (!isIndexType(root.mediaType)) return { root, images: [{ manifest: root as PlatformImage['manifest'] }] };
    const index = root.json as ImageIndex;
    const chosen = selectPlatforms(index.manifests ?? [], platform);
    if (!chosen.length) {
      const offered = (index.manifests ?? []).filter((d) => d.platform).map((d) => formatPlatform(d.platform!)).join(', ') || 'none';
      const wanted = platform === 'all' ? 'any platform' : formatPlatform(platform);
      throw new RegistryError({ reference: formatReference(ref), method: 'GET', path: `/v2/${ref.repository}/manifests/${manifestTarget(ref)}`, detail: `index has no image for ${wanted} (offers: ${offered})` });
    }
    const images: PlatformImage[] = [];
    for (const d of chosen) {
      const m = await this.getManifest(withDigest(ref, d.digest));
      if (!isImageManifestType(m.mediaType)) {
        throw new RegistryError({ reference: formatReference(ref), method: 'GET', path: `/v2/${ref.repository}/manifests/${d.digest}`, detail: `index entry is a ${m.mediaType}, not an image manifest` });
      }
      images.push({ descriptor: d, platform: d.platform, manifest: m as PlatformImage['manifest'] });
    }
    return { root, images };
  }

  // ---- blobs ----

  private blobPath(ref: ImageReference, digest: string): string {
    return `/v2/${ref.repository}/blobs/${checkDigest(digest, formatReference(ref))}`;
  }

  /** Size of a blob, or undefined when the repository does not have it. */
  async headBlob(refLike: RefLike, digest: string, access: Action = 'pull'): Promise<{ size: number } | undefined> {
    const ref = toRef(refLike);
    const res = await this.call(ref, access, { method: 'HEAD', target: this.blobPath(ref, digest), followRedirects: true });
    await res.body.dump();
    if (res.status === 404) return undefined;
    await this.expect(ref, 'HEAD', res, 200);
    return { size: Number(header(res.headers, 'content-length') ?? NaN) };
  }

  /**
   * The blob as a byte stream. Its sha256 (and size, when given) is checked while reading: a mismatch
   * makes the stream fail after the last byte instead of ending. A connection that breaks or stalls
   * mid-body is resumed with a Range request (up to the retry limit).
   */
  blobStream(refLike: RefLike, digest: string, opts: BlobStreamOptions = {}): Readable {
    const ref = toRef(refLike);
    const path = this.blobPath(ref, digest);
    const where = { reference: formatReference(ref), method: 'GET', path };
    const self = this;
    async function* chunks(): AsyncGenerator<Buffer> {
      const hash = createHash('sha256');
      let got = 0;
      let failures = 0;
      for (;;) {
        const headers: Record<string, string> = got ? { range: `bytes=${got}-` } : {};
        const res = await self.call(ref, 'pull', { method: 'GET', target: path, headers, followRedirects: true });
        await self.expect(ref, 'GET', res, got ? 206 : 200, 200);
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
          if (e instanceof RegistryError || !isRetryableNetworkError(e) || failures >= self.transport.retries) {
            if (e instanceof RegistryError) throw e;
            throw new RegistryError({ ...where, detail: `reading body at byte ${got}: ${(e as Error).message}`, cause: e });
          }
          discard(res.body);
          await self.transport.pause(failures++);
        }
      }
      if (opts.size !== undefined && got !== opts.size) throw new DigestMismatchError(where, `${opts.size} bytes`, `${got} bytes`);
      const actual = `sha256:${hash.digest('hex')}`;
      if (actual !== digest) throw new DigestMismatchError(where, digest, actual);
    }
    return Readable.from(chunks(), { objectMode: false });
  }

  /** A whole blob in memory, verified (for configs and other small blobs). */
  async getBlob(refLike: RefLike, digest: string, opts: BlobStreamOptions = {}): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const b of this.blobStream(refLike, digest, opts)) parts.push(b as Buffer);
    return Buffer.concat(parts);
  }

  /**
   * `length` bytes of a blob from `offset` (Range GET; 206 expected). Not verified against the blob's
   * digest (only the whole blob has one): the caller checks what it reads (nydus chunk digests).
   */
  async readBlobRange(refLike: RefLike, digest: string, offset: number, length: number, opts: RangeReadOptions = {}): Promise<Buffer> {
    const ref = toRef(refLike);
    const path = this.blobPath(ref, digest);
    const where = { reference: formatReference(ref), method: 'GET', path };
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new RegistryError({ ...where, detail: `invalid range offset ${offset} length ${length}` });
    }
    if (length === 0) return Buffer.alloc(0);
    const last = offset + length - 1;
    for (let failures = 0; ; failures++) {
      const res = await this.call(ref, 'pull', { method: 'GET', target: path, headers: { range: `bytes=${offset}-${last}` }, followRedirects: true });
      await this.expect(ref, 'GET', res, 206, 200);
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
        if (!isRetryableNetworkError(e) || failures >= this.transport.retries) {
          throw new RegistryError({ ...rangeWhere, detail: `reading bytes ${offset}-${last}: ${(e as Error).message}`, cause: e });
        }
        await this.transport.pause(failures);
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

  // ---- uploads ----

  /** Location of an upload session from a 202 answer, made absolute against the answering URL. */
  private location(ref: ImageReference, method: string, res: HttpResponse): URL {
    const loc = header(res.headers, 'location');
    if (!loc) throw new RegistryError({ reference: formatReference(ref), method, path: res.url.pathname, status: res.status, detail: 'upload answer without Location' });
    return new URL(loc, res.url);
  }

  private async startUpload(ref: ImageReference): Promise<URL> {
    const res = await this.call(ref, 'push', { method: 'POST', target: `/v2/${ref.repository}/blobs/uploads/`, headers: { 'content-length': '0' } });
    await this.expect(ref, 'POST', res, 202);
    await res.body.dump();
    return this.location(ref, 'POST', res);
  }

  /** Tries a cross-repository mount: true when mounted, else the upload session the registry opened. */
  private async mount(ref: ImageReference, digest: string, from: string): Promise<true | URL> {
    const scopes = [repositoryScope(ref.repository, 'push'), repositoryScope(from, 'pull')];
    const target = `/v2/${ref.repository}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`;
    const res = await this.call(ref, scopes, { method: 'POST', target, headers: { 'content-length': '0' } });
    await this.expect(ref, 'POST', res, 201, 202);
    await res.body.dump();
    return res.status === 201 ? true : this.location(ref, 'POST', res);
  }

  private async finishUpload(ref: ImageReference, location: URL, digest: string, body: Buffer | StreamSource, size: number): Promise<void> {
    const target = appendQuery(location, 'digest', digest);
    const res = await this.call(ref, 'push', {
      method: 'PUT',
      target,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
      body: Buffer.isBuffer(body) ? body : body.open,
    });
    await this.expect(ref, 'PUT', res, 201);
    await res.body.dump();
    const served = header(res.headers, 'docker-content-digest');
    if (served && served !== digest) throw new DigestMismatchError({ reference: formatReference(ref), method: 'PUT', path: location.pathname }, digest, served);
  }

  /**
   * Pushes a blob of known content: skipped when HEAD finds it, mounted from `mountFrom` when the
   * registry can, else POST + one monolithic PUT.
   */
  async pushBlob(refLike: RefLike, source: Buffer | StreamSource, opts: PushBlobOptions = {}): Promise<PushedBlob> {
    const ref = toRef(refLike);
    const digest = Buffer.isBuffer(source) ? sha256(source) : checkDigest(source.digest, formatReference(ref));
    const size = Buffer.isBuffer(source) ? source.length : source.size;
    if (await this.headBlob(ref, digest, 'push')) return { digest, size, how: 'exists' };
    let location: URL | undefined;
    for (const from of [opts.mountFrom ?? []].flat()) {
      if (from === ref.repository) continue;
      const mounted = await this.mount(ref, digest, from);
      if (mounted === true) return { digest, size, how: 'mounted' };
      location = mounted;
      break; // The registry opened an upload instead (202): use it.
    }
    location ??= await this.startUpload(ref);
    await this.finishUpload(ref, location, digest, source, size);
    return { digest, size, how: 'uploaded' };
  }

  /** Asks an upload session how much it holds (GET on its Location: 204 with `Range: 0-<last>`). */
  private async uploadStatus(ref: ImageReference, location: URL): Promise<{ upTo: number; location: URL }> {
    const res = await this.call(ref, 'push', { method: 'GET', target: location.href });
    await this.expect(ref, 'GET', res, 204);
    await res.body.dump();
    const upTo = uploadedUpTo(header(res.headers, 'range'));
    if (upTo === undefined) throw new RegistryError({ reference: formatReference(ref), method: 'GET', path: location.pathname, status: res.status, detail: 'upload status without a Range header' });
    return { upTo, location: header(res.headers, 'location') ? this.location(ref, 'GET', res) : location };
  }

  /** PATCHes `chunk` at `offset`; after a failure resumes from what the registry reports it holds. */
  private async patchChunk(ref: ImageReference, location: URL, chunk: Buffer, offset: number): Promise<URL> {
    let sent = 0;
    for (let failures = 0; ; ) {
      const part = chunk.subarray(sent);
      const start = offset + sent;
      let res: HttpResponse | undefined;
      let failure: unknown;
      try {
        res = await this.call(ref, 'push', {
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
        await res.body.dump();
        const next = this.location(ref, 'PATCH', res);
        const upTo = uploadedUpTo(header(res.headers, 'range'));
        if (upTo !== undefined && upTo !== offset + chunk.length) {
          throw new RegistryError({ reference: formatReference(ref), method: 'PATCH', path: location.pathname, status: 202, detail: `registry holds ${upTo} bytes after a chunk ending at ${offset + chunk.length}` });
        }
        return next;
      }
      if (res && !(res.status >= 500 || res.status === 429)) await this.expect(ref, 'PATCH', res, 202);
      if (res) await res.body.dump();
      if (failures >= this.transport.retries) {
        if (failure) throw failure;
        await this.expect(ref, 'PATCH', res!, 202);
      }
      await this.transport.pause(failures++);
      const status = await this.uploadStatus(ref, location);
      location = status.location;
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
  async pushBlobStream(refLike: RefLike, stream: AsyncIterable<Uint8Array>, opts: PushStreamOptions = {}): Promise<PushedBlob> {
    const ref = toRef(refLike);
    if (opts.expectedDigest) checkDigest(opts.expectedDigest, formatReference(ref));
    let location = await this.startUpload(ref);
    const hash = createHash('sha256');
    let size = 0;
    for await (const chunk of rechunk(stream, opts.chunkSize ?? this.chunkSize)) {
      hash.update(chunk);
      location = await this.patchChunk(ref, location, chunk, size);
      size += chunk.length;
    }
    const digest = `sha256:${hash.digest('hex')}`;
    if (opts.expectedDigest && digest !== opts.expectedDigest) {
      await this.call(ref, 'push', { method: 'DELETE', target: location.href, retries: 0 }).then((r) => r.body.dump(), () => undefined);
      throw new DigestMismatchError({ reference: formatReference(ref), method: 'PUT', path: location.pathname }, opts.expectedDigest, digest);
    }
    await this.finishUpload(ref, location, digest, Buffer.alloc(0), 0);
    return { digest, size, how: 'uploaded' };
  }
}
