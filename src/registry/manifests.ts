/** Manifests: GET (digest verified), HEAD, PUT, and an index resolved to the images of a platform. */
import { DigestMismatchError, RegistryError } from './errors.ts';
import {
  MANIFEST_ACCEPT, isImageManifestType, isIndexType,
  type Descriptor, type ImageIndex, type ImageManifest, type Platform,
} from './media-types.ts';
import { defaultPlatform, formatPlatform, selectPlatforms } from './platform.ts';
import { formatReference, manifestTarget, withDigest, type ImageReference } from './reference.ts';
import { discard, drain, header, readBounded } from './transport.ts';
import { MAX_JSON_DEPTH, MAX_RESOLVED_MANIFEST_BYTES, ShapeError, checkManifestShape, jsonDepth } from './validate.ts';
import { sha256, toRef, type RefLike, type RegistrySession } from './session.ts';

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

/**
 * The manifest or index at the reference, its bytes checked against the reference's digest and, when
 * a descriptor names it (`size`, an index entry's), against that size: a body larger is not read.
 */
export async function getManifest(s: RegistrySession, refLike: RefLike, size?: number): Promise<FetchedManifest> {
  const ref = toRef(refLike);
  const path = `/v2/${ref.repository}/manifests/${manifestTarget(ref)}`;
  const where = { reference: formatReference(ref), method: 'GET', path };
  // One deadline for the whole document, its answer and retries included: a body dripping a byte
  // at a time never trips the body timeout, which only measures silence.
  const deadline = s.transport.documentTimeoutMs;
  const signal = AbortSignal.timeout(deadline);
  const late = (got: number) => new RegistryError({ ...where, detail: `manifest not received whole within ${deadline / 1000} s (${got} bytes came)` });
  let res;
  try {
    // Followed as blob requests are: a registry may send manifest requests elsewhere too
    // (registry.k8s.io answers every one with a 307 to a regional mirror).
    res = await s.call(ref, 'pull', { method: 'GET', target: path, headers: { accept: MANIFEST_ACCEPT }, followRedirects: true, signal });
    await s.expect(ref, 'GET', res, 200);
  } catch (e) {
    // The request ended by the deadline (not an error answer, nor a token request's own failure).
    if (signal.aborted && e instanceof RegistryError && e.status === undefined && e.path === path) throw late(0);
    throw e;
  }
  const declared = Number(header(res.headers, 'content-length'));
  if (declared > s.maxManifestSize) {
    discard(res.body);
    throw new RegistryError({ ...where, detail: `manifest of ${declared} bytes is larger than ${s.maxManifestSize}` });
  }
  const sizeDiffers = (n: number | string) => new RegistryError({ ...where, detail: `manifest of ${n} bytes, where its descriptor says ${size}` });
  if (size !== undefined && Number.isFinite(declared) && declared !== size) {
    discard(res.body);
    throw sizeDiffers(declared);
  }
  // Read as it comes, never past the cap nor the deadline: a body without Content-Length may be endless.
  const cap = Math.min(s.maxManifestSize, size ?? Infinity);
  let n = 0;
  const got = await readBounded(res.body, cap, deadline, { progress: (k) => (n = k) }).catch((e: Error) => {
    if (signal.aborted) throw late(n);
    throw new RegistryError({ ...where, status: 200, detail: `reading the manifest: ${e.message}`, cause: e });
  });
  if (got.over) throw cap === size ? sizeDiffers(`more than ${size}`) : new RegistryError({ ...where, detail: `manifest larger than ${s.maxManifestSize} bytes` });
  if (got.timedOut) throw late(got.bytes.length);
  const bytes = got.bytes;
  if (size !== undefined && bytes.length !== size) throw sizeDiffers(bytes.length);
  const digest = sha256(bytes);
  if (ref.digest && digest !== ref.digest) throw new DigestMismatchError(where, ref.digest, digest);
  const served = header(res.headers, 'docker-content-digest');
  if (served?.startsWith('sha256:') && served !== digest) throw new DigestMismatchError(where, served, digest);
  // (What is written again, a converted index's entries with their platforms, must not run out of stack.)
  if (jsonDepth(bytes, MAX_JSON_DEPTH) > MAX_JSON_DEPTH) throw new RegistryError({ ...where, detail: `manifest ${digest} nests deeper than ${MAX_JSON_DEPTH} levels` });
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (e) {
    throw new RegistryError({ ...where, detail: `manifest is not JSON: ${(e as Error).message.slice(0, 200)}` });
  }
  const contentType = header(res.headers, 'content-type')?.split(';')[0].trim();
  let mediaType: string;
  try {
    mediaType = checkManifestShape(json, contentType);
  } catch (e) {
    if (!(e instanceof ShapeError)) throw e;
    throw new RegistryError({ ...where, detail: `manifest ${digest}: ${e.message}` });
  }
  return { reference: ref, digest, mediaType, size: bytes.length, bytes, json: json as ImageManifest | ImageIndex };
}

/** HEAD of a manifest: its digest, size and type, or undefined when the registry has none. */
export async function headManifest(s: RegistrySession, refLike: RefLike): Promise<ManifestHead | undefined> {
  const ref = toRef(refLike);
  const path = `/v2/${ref.repository}/manifests/${manifestTarget(ref)}`;
  const res = await s.call(ref, 'pull', { method: 'HEAD', target: path, headers: { accept: MANIFEST_ACCEPT }, followRedirects: true });
  await drain(res.body);
  if (res.status === 404) return undefined;
  await s.expect(ref, 'HEAD', res, 200);
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
export async function putManifest(s: RegistrySession, refLike: RefLike, manifest: Buffer | ImageManifest | ImageIndex, mediaType?: string): Promise<Descriptor> {
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
  const res = await s.call(ref, 'push', { method: 'PUT', target: path, headers: { 'content-type': type }, body: bytes });
  await s.expect(ref, 'PUT', res, 201, 200);
  await drain(res.body);
  const served = header(res.headers, 'docker-content-digest');
  if (served && served !== digest) throw new DigestMismatchError(where, digest, served);
  return { mediaType: type, digest, size: bytes.length };
}

/** The platforms an index offers, each once, for an error message (the first 20). */
export function offeredPlatforms(entries: readonly Descriptor[]): string {
  const all = [...new Set(entries.filter((d) => d.platform).map((d) => formatPlatform(d.platform!)))];
  return (all.length > 20 ? [...all.slice(0, 20), `and ${all.length - 20} more`] : all).join(', ') || 'none';
}

/**
 * The image manifests the reference stands for on `platform` (default: linux and this machine's
 * architecture, as nydusify) or on 'all' platforms of an index. Children are fetched by digest.
 */
export async function resolveImage(s: RegistrySession, refLike: RefLike, platform: Platform | 'all' = defaultPlatform(), prefer?: (d: Descriptor) => boolean): Promise<ResolvedImage> {
  const ref = toRef(refLike);
  const root = await getManifest(s, ref);
  if (!isIndexType(root.mediaType)) return { root, images: [{ manifest: root as PlatformImage['manifest'] }] };
  const index = root.json as ImageIndex;
  // Each image once: an index may list one manifest under many entries (platforms, variants).
  const seen = new Set<string>();
  const chosen = selectPlatforms(index.manifests, platform, prefer).filter((d) => !seen.has(d.digest) && !!seen.add(d.digest));
  if (!chosen.length) {
    const offered = offeredPlatforms(index.manifests);
    const wanted = platform === 'all' ? 'any platform' : formatPlatform(platform);
    throw new RegistryError({ reference: formatReference(ref), method: 'GET', path: `/v2/${ref.repository}/manifests/${manifestTarget(ref)}`, detail: `index has no image for ${wanted} (offers: ${offered})` });
  }
  return { root, images: await indexImages(s, ref, chosen) };
}

/**
 * The image manifests of an index's entries `chosen` (each listed once), fetched by digest, in that
 * order. Each is held until the caller is done with it: together they are bounded, and each is read
 * only up to the size its entry gives.
 */
export async function indexImages(s: RegistrySession, refLike: RefLike, chosen: readonly Descriptor[]): Promise<PlatformImage[]> {
  const ref = toRef(refLike);
  const total = chosen.reduce((n, d) => n + d.size, 0);
  if (total > MAX_RESOLVED_MANIFEST_BYTES) {
    throw new RegistryError({ reference: formatReference(ref), method: 'GET', path: `/v2/${ref.repository}/manifests/${manifestTarget(ref)}`, detail: `the index's ${chosen.length} image manifests chosen are ${total} bytes together, more than ${MAX_RESOLVED_MANIFEST_BYTES}` });
  }
  const images: PlatformImage[] = [];
  for (const d of chosen) {
    const m = await getManifest(s, withDigest(ref, d.digest), d.size);
    if (!isImageManifestType(m.mediaType)) {
      throw new RegistryError({ reference: formatReference(ref), method: 'GET', path: `/v2/${ref.repository}/manifests/${d.digest}`, detail: `index entry is a ${m.mediaType}, not an image manifest` });
    }
    images.push({ descriptor: d, platform: d.platform, manifest: m as PlatformImage['manifest'] });
  }
  return images;
}
