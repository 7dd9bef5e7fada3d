/**
 * A small OCI distribution-spec client: manifests (OCI and Docker schema 2, indexes with platform
 * selection), blobs (streamed with their sha256 verified, HEAD, Range reads) and uploads (monolithic,
 * chunked, cross-repository mount). One client keeps one connection pool and one token cache; the
 * operations live in manifests.ts, blobs.ts and upload.ts.
 */
import type { Readable } from 'node:stream';
import type { Action } from './auth.ts';
import {
  blobStream, getBlob, getConfig, headBlob, readBlobRange, type BlobStreamOptions, type GetBlobOptions, type ImageConfig, type RangeReadOptions,
} from './blobs.ts';
import { getManifest, headManifest, indexImages, putManifest, resolveImage, type FetchedManifest, type ManifestHead, type PlatformImage, type ResolvedImage } from './manifests.ts';
import type { Descriptor, ImageIndex, ImageManifest, Platform } from './media-types.ts';
import { defaultPlatform } from './platform.ts';
import { RegistrySession, type RefLike, type RegistryClientOptions } from './session.ts';
import { pushBlob, pushBlobStream, type PushBlobOptions, type PushedBlob, type PushStreamOptions, type StreamSource } from './upload.ts';

export class RegistryClient {
  private readonly session: RegistrySession;

  constructor(opts: RegistryClientOptions = {}) {
    this.session = new RegistrySession(opts);
  }

  /** Retries made so far, over all requests. */
  get retryCount(): number {
    return this.session.transport.retryCount;
  }

  /** Token requests made so far for `registry` (host[:port] as in references). */
  tokenRequests(registry: string): number {
    return this.session.authorizers.get(registry)?.tokenRequests ?? 0;
  }

  /** Closes the connections once requests in flight are done. */
  async close(): Promise<void> {
    await this.session.transport.close();
  }

  /** Aborts every request in flight (a failed conversion stops its other layers) and closes. */
  async destroy(): Promise<void> {
    await this.session.transport.destroy();
  }

  /** GET with every manifest type accepted; by digest, the bytes must hash to it. */
  getManifest(ref: RefLike): Promise<FetchedManifest> {
    return getManifest(this.session, ref);
  }

  /** Digest, size and type of a manifest, or undefined when the registry has none. */
  headManifest(ref: RefLike): Promise<ManifestHead | undefined> {
    return headManifest(this.session, ref);
  }

  /** PUT at the reference's tag or digest: exact bytes, or an object serialized here. */
  putManifest(ref: RefLike, manifest: Buffer | ImageManifest | ImageIndex, mediaType?: string): Promise<Descriptor> {
    return putManifest(this.session, ref, manifest, mediaType);
  }

  /** The image manifests for `platform` (default linux/<this arch>) or 'all' platforms of an index. */
  /** `prefer`: of an index's images for the platform, one it holds first (selectPlatforms). */
  resolveImage(ref: RefLike, platform: Platform | 'all' = defaultPlatform(), prefer?: (d: Descriptor) => boolean): Promise<ResolvedImage> {
    return resolveImage(this.session, ref, platform, prefer);
  }

  /** The image manifests of an index's entries (each listed once), fetched by digest; bounded together (indexImages). */
  indexImages(ref: RefLike, chosen: readonly Descriptor[]): Promise<PlatformImage[]> {
    return indexImages(this.session, ref, chosen);
  }

  /** Size of a blob, or undefined when the repository does not have it; `signal` ends the request. */
  headBlob(ref: RefLike, digest: string, access: Action = 'pull', signal?: AbortSignal): Promise<{ size: number } | undefined> {
    return headBlob(this.session, ref, digest, access, signal);
  }

  /** The blob as a byte stream that fails instead of ending when its sha256 (or size) is wrong. */
  blobStream(ref: RefLike, digest: string, opts: BlobStreamOptions = {}): Readable {
    return blobStream(this.session, ref, digest, opts);
  }

  /** A whole (small) blob in memory, verified; bounded by `maxSize` (default 256 MiB). */
  getBlob(ref: RefLike, digest: string, opts: GetBlobOptions = {}): Promise<Buffer> {
    return getBlob(this.session, ref, digest, opts);
  }

  /** An image's config by its descriptor: size-capped, deadline-bound, verified, a JSON object. */
  getConfig(ref: RefLike, desc: Descriptor): Promise<ImageConfig> {
    return getConfig(this.session, ref, desc);
  }

  /** `length` bytes from `offset` (Range GET, 206); not digest-verified. */
  readBlobRange(ref: RefLike, digest: string, offset: number, length: number, opts: RangeReadOptions = {}): Promise<Buffer> {
    return readBlobRange(this.session, ref, digest, offset, length, opts);
  }

  /** Pushes content of known digest: skipped if present, mounted if possible, else POST + PUT. */
  pushBlob(ref: RefLike, source: Buffer | StreamSource, opts: PushBlobOptions = {}): Promise<PushedBlob> {
    return pushBlob(this.session, ref, source, opts);
  }

  /** Pushes a stream of unknown length in PATCH chunks; returns its digest and size. */
  pushBlobStream(ref: RefLike, stream: AsyncIterable<Uint8Array>, opts: PushStreamOptions = {}): Promise<PushedBlob> {
    return pushBlobStream(this.session, ref, stream, opts);
  }
}
