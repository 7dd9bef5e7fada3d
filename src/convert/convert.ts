/**
 * `nydusify convert`: an OCI image (or index) in a registry -> its Nydus form pushed to the target.
 * Per platform: layers converted concurrently (layer.ts), layer bootstraps merged, the bootstrap
 * layer and the image config pushed, then the manifest. The manifest that carries the target's tag
 * is pushed last of all, so a failed conversion never leaves a tag on half an image.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { NydusError } from '../../erofs/errors.ts';
import { scratchDir } from './work-dir.ts';
import { validateChunkSize } from '../builder/create.ts';
import { type CompressorName, isCompressorName } from '../blob/compress.ts';
import { mergeImages } from '../builder/merge.ts';
import {
  type Descriptor, type ImageIndex, type ImageManifest, type ImageReference, type Platform, type PlatformImage, type ResolvedImage,
  MediaType, RegistryClient, formatPlatform, formatReference, isImageManifestType, isIndexType, offeredPlatforms, parseReference, selectPlatforms, withDigest,
} from '../registry/index.ts';
import { packBootstrapLayer } from './bootstrap-layer.ts';
import { mapBounded } from '../concurrency.ts';
import type { LayerProgress } from './progress.ts';
import { convertLayer, type ConvertedLayer, type LayerBuildOptions } from './layer.ts';
import { BOOTSTRAP_HISTORY, bootstrapDescriptor, isNydusIndexEntry, nydusBlobDescriptor } from './nydus-format.ts';

export interface ConvertOptions extends LayerBuildOptions {
  source: string;
  target: string;
  sourceInsecure?: boolean;
  targetInsecure?: boolean;
  plainHttp?: boolean;
  /** One platform, several (each its best match in an index, as for one), or every platform of an index. */
  platform: Platform | readonly Platform[] | 'all';
  /** Where layer bootstraps and blobs are built (a fresh directory under it, removed afterwards). */
  workDir?: string;
  /** Paths of the image put in the bootstrap's prefetch table. */
  prefetchPaths?: string[];
  /** Layers converted at once (default 4). */
  concurrency?: number;
  fsVersion: '6';
  log: Logger;
  /** Per-layer display (a terminal), besides the logs. */
  progress?: LayerProgress;
}

export interface ConvertedImage {
  platform?: Platform;
  manifest: Descriptor;
  layers: Descriptor[];
}

/**
 * nydusify's --output-json document (acceleration-service's converter.Metric): sizes in bytes of the
 * images converted (each platform's config and layers, as containerd's ChildrenHandler lists them),
 * times in nanoseconds (Go's time.Duration). Pull, conversion and push run as one stream here, layer
 * by layer: SourcePullElapsed is the reading of the source's index, manifests and configs before
 * any layer; ConversionElapsed the layers pulled and converted, their blobs, bootstrap layers and
 * configs pushed; TargetPushElapsed the manifests (and the index) pushed last.
 */
export interface ConvertMetric {
  SourceImageSize: number;
  TargetImageSize: number;
  SourcePullElapsed: number;
  ConversionElapsed: number;
  TargetPushElapsed: number;
}

export interface ConvertResult {
  source: string;
  target: string;
  /** What the target tag names: the manifest, or the index of the converted platforms. */
  targetDigest: string;
  mediaType: string;
  images: ConvertedImage[];
  metric: ConvertMetric;
}

/** Nanoseconds between two performance.now() readings, as a whole number. */
const nanos = (from: number, to: number) => Math.round((to - from) * 1e6);

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

function jsonBytes(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v));
}

interface Context {
  opts: ConvertOptions;
  source: RegistryClient;
  target: RegistryClient;
  sourceRef: ImageReference;
  targetRef: ImageReference;
  workDir: string;
}

/** An image of the source with its config, read and checked before anything is pushed. */
interface PreparedImage {
  image: PlatformImage;
  /** The config, or null when it was not kept (read again when converting: see KEPT_CONFIGS). */
  config: Record<string, unknown> | null;
}

/** Configs kept in memory between their check and their conversion, bytes in all; past it they are read again. */
const KEPT_CONFIGS = 64 << 20;

/**
 * What can be checked of every image before anything is pushed: not a Nydus image already, and a
 * config that is a JSON object of at most the config cap, which the converted config can be written from.
 */
async function prepareImages(ctx: Context, images: PlatformImage[]): Promise<PreparedImage[]> {
  const out: PreparedImage[] = [];
  let kept = 0;
  for (const image of images) {
    const src = image.manifest;
    for (const l of src.json.layers) {
      if (l.mediaType === MediaType.nydusBlob) throw new NydusError(`source ${formatReference(ctx.sourceRef)} is already a Nydus image (layer ${l.digest} of manifest ${src.digest})`);
    }
    const { bytes, json } = await ctx.source.getConfig(withDigest(ctx.sourceRef, src.digest), src.json.config);
    const keep = kept + bytes.length <= KEPT_CONFIGS;
    if (keep) kept += bytes.length;
    out.push({ image, config: keep ? json : null });
  }
  return out;
}

/** Converts one platform image; pushes blobs, bootstrap layer and config, and returns its manifest unpushed. */
async function convertImage(ctx: Context, prepared: PreparedImage, n: number): Promise<{ manifest: ImageManifest; bytes: Buffer; mediaType: string; layers: Descriptor[] }> {
  const { opts } = ctx;
  const { image } = prepared;
  const src = image.manifest;
  const srcRef = withDigest(ctx.sourceRef, src.digest);
  const dir = path.join(ctx.workDir, `image-${n}`);
  fs.mkdirSync(dir);
  const log = opts.log.child(image.platform ? { platform: formatPlatform(image.platform) } : {});
  const config = prepared.config ?? (await ctx.source.getConfig(srcRef, src.json.config)).json;
  const io = { source: ctx.source, target: ctx.target, log, progress: opts.progress };
  const refs = { source: srcRef, target: ctx.targetRef };
  // A layer listed more than once is converted once: its result serves each of its places.
  const distinct = [...new Map(src.json.layers.map((l) => [l.digest, l] as const)).values()];
  // A failed layer aborts the others' transfers at once.
  const done: ConvertedLayer[] = await mapBounded(distinct, opts.concurrency ?? 4,
    (layer, i) => convertLayer(io, refs, layer, i, dir, opts),
    async () => { await Promise.all([ctx.source.destroy(), ctx.target.destroy()]); });
  const byDigest = new Map(distinct.map((l, i) => [l.digest, done[i]] as const));
  const converted = src.json.layers.map((l) => byDigest.get(l.digest)!);

  const merged = path.join(dir, 'image.boot');
  const { blobs, prefetchMissing } = mergeImages({
    sources: converted.map((c) => c.bootstrap), bootstrap: merged, prefetchPaths: opts.prefetchPaths, impliedDirs: converted.map((c) => c.impliedDirs),
  });
  // As nydus-image's merge: a prefetch path the image lacks is left out, not fatal.
  if (prefetchMissing.length) log.warn({ missing: prefetchMissing }, 'prefetch paths the image does not hold are left out of its prefetch table');
  // The manifest lists the blobs the merged bootstrap references, in its blob table order.
  const pushedBlobs = new Map(converted.flatMap((c) => (c.blob ? [[c.blob.blobId, c.blob] as const] : [])));
  const blobLayers = blobs.map((id) => {
    const b = pushedBlobs.get(id);
    if (!b) throw new NydusError(`merged bootstrap references blob ${id}, which no layer produced`);
    return nydusBlobDescriptor(b.digest, b.size);
  });

  const boot = await packBootstrapLayer(merged, dir);
  await ctx.target.pushBlob(ctx.targetRef, { open: () => fs.createReadStream(boot.layer.path), size: boot.layer.size, digest: boot.layer.digest });
  const manifestType = src.mediaType;
  const bootLayer = bootstrapDescriptor(manifestType, boot.layer.digest, boot.layer.size, opts.fsVersion);
  log.info({ blobs: blobLayers.length, bootstrap: boot.layer.digest }, 'bootstrap layer pushed');

  // The config keeps everything of the source's but the layers it describes.
  const configOut: Record<string, unknown> = {
    ...config,
    rootfs: { type: 'layers', diff_ids: [...blobLayers.map((d) => d.digest), boot.diffId] },
    history: [...(Array.isArray(config.history) ? config.history : []), BOOTSTRAP_HISTORY],
  };
  const configBytes = jsonBytes(configOut);
  const configDesc: Descriptor = { mediaType: src.json.config.mediaType, digest: sha256(configBytes), size: configBytes.length };
  await ctx.target.pushBlob(ctx.targetRef, configBytes);

  const layers = [...blobLayers, bootLayer];
  const manifest: ImageManifest = { schemaVersion: 2, mediaType: manifestType, config: configDesc, layers };
  if (src.json.annotations) manifest.annotations = src.json.annotations;
  return { manifest, bytes: jsonBytes(manifest), mediaType: manifestType, layers };
}

/**
 * The source's images for several platforms: the index is read once, and each platform takes its
 * match as a single platform would. Platforms the index does not offer are left out with a warning,
 * as nydusify's platform matcher leaves them out; none offered at all is an error. An image manifest
 * (no index) is converted whatever the platforms, as for one platform.
 */
async function resolvePlatforms(ctx: Context, wanted: readonly Platform[]): Promise<ResolvedImage> {
  const root = await ctx.source.getManifest(ctx.sourceRef);
  if (!isIndexType(root.mediaType)) return { root, images: [{ manifest: root as PlatformImage['manifest'] }] };
  const entries = (root.json as ImageIndex).manifests;
  const chosen = new Set<string>();
  const missing: string[] = [];
  for (const p of wanted) {
    const match = selectPlatforms(entries, p, (d) => !isNydusIndexEntry(d));
    if (match.length === 0) missing.push(formatPlatform(p));
    for (const d of match) chosen.add(d.digest);
  }
  const offered = offeredPlatforms(entries);
  if (chosen.size === 0) throw new NydusError(`source ${ctx.opts.source} has no image for platform ${wanted.map(formatPlatform).join(',')} (offers: ${offered})`);
  if (missing.length > 0) ctx.opts.log.warn({ source: ctx.opts.source, missing, offered }, 'source has no image for some of the platforms asked for: they are left out');
  // Index order, each image once (two platforms asked for may match the same entry).
  return { root, images: await ctx.source.indexImages(ctx.sourceRef, entries.filter((e) => chosen.delete(e.digest))) };
}

/**
 * The image format convert writes, checked: RAFS v6, zstd or no compression. `origin(option)` is said
 * after the value in an error (the CLI says where a value came from).
 */
export function checkImageFormat(fsVersion: string, compressor: string, origin: (option: 'fs-version' | 'compressor') => string = () => ''): asserts compressor is CompressorName {
  if (fsVersion !== '6') throw new NydusError(`unsupported fs version "${fsVersion}"${origin('fs-version')}: nydus-ts writes RAFS v6 only`);
  if (!isCompressorName(compressor)) throw new NydusError(`unsupported compressor "${compressor}"${origin('compressor')}: zstd, lz4_block or none`);
}

export async function convert(opts: ConvertOptions): Promise<ConvertResult> {
  // Everything that can be checked here is, before any registry is contacted.
  const sourceRef = parseReference(opts.source);
  const targetRef = parseReference(opts.target);
  if (targetRef.digest) throw new NydusError(`target ${opts.target} names a digest: give a tag`);
  checkImageFormat(opts.fsVersion, opts.compressor);
  validateChunkSize(opts.chunkSize);
  const platforms = opts.platform === 'all' ? 'all' : Array.isArray(opts.platform) ? opts.platform as readonly Platform[] : [opts.platform as Platform];
  if (platforms.length === 0) throw new NydusError('no platform to convert');
  const source = new RegistryClient({ insecure: opts.sourceInsecure, plainHttp: opts.plainHttp });
  const target = new RegistryClient({ insecure: opts.targetInsecure, plainHttp: opts.plainHttp });
  const scratch = scratchDir(opts.workDir, 'nydusify-');
  const ctx: Context = { opts, source, target, sourceRef, targetRef, workDir: scratch.path };
  let ok = false;
  const started = performance.now();
  try {
    const resolved = platforms === 'all' || platforms.length === 1
      // The OCI image, where the index holds a Nydus conversion of the platform too (--merge-platform).
      ? await source.resolveImage(sourceRef, platforms === 'all' ? 'all' : platforms[0], (d) => !isNydusIndexEntry(d))
      : await resolvePlatforms(ctx, platforms);
    if (resolved.images.length === 0) throw new NydusError(`source ${opts.source} has no image for platform ${platforms === 'all' ? 'all' : platforms.map(formatPlatform).join(',')}`);
    // Every image's config is read and checked before any blob is pushed.
    const prepared = await prepareImages(ctx, resolved.images);
    const pulled = performance.now();
    opts.log.info({ source: opts.source, images: resolved.images.length }, 'converting');
    const converted = [];
    // Platforms one after the other: each already converts its layers concurrently.
    for (const [n, p] of prepared.entries()) converted.push({ image: p.image, ...(await convertImage(ctx, p, n)) });
    const convertedAt = performance.now();

    const asIndex = !isImageManifestType(resolved.root.mediaType) && converted.length > 1;
    const images: ConvertedImage[] = [];
    let targetDigest: string;
    let mediaType: string;
    if (asIndex) {
      // Platform manifests by digest first, the tagged index last.
      const manifests: Descriptor[] = [];
      for (const c of converted) {
        const desc: Descriptor = { mediaType: c.mediaType, digest: sha256(c.bytes), size: c.bytes.length };
        if (c.image.platform) desc.platform = c.image.platform;
        await target.putManifest(withDigest(targetRef, desc.digest), c.bytes, c.mediaType);
        manifests.push(desc);
        images.push({ platform: c.image.platform, manifest: desc, layers: c.layers });
      }
      mediaType = resolved.root.mediaType;
      const index: ImageIndex = { schemaVersion: 2, mediaType, manifests };
      const bytes = jsonBytes(index);
      await target.putManifest(targetRef, bytes, mediaType);
      targetDigest = sha256(bytes);
    } else {
      const c = converted[0];
      await target.putManifest(targetRef, c.bytes, c.mediaType);
      targetDigest = sha256(c.bytes);
      mediaType = c.mediaType;
      images.push({ platform: c.image.platform, manifest: { mediaType, digest: targetDigest, size: c.bytes.length }, layers: c.layers });
    }
    opts.log.info({ target: opts.target, digest: targetDigest }, 'converted');
    ok = true;
    const sum = (ds: ReadonlyArray<{ size: number }>) => ds.reduce((n, d) => n + d.size, 0);
    const metric: ConvertMetric = {
      SourceImageSize: resolved.images.reduce((n, i) => n + i.manifest.json.config.size + sum(i.manifest.json.layers), 0),
      TargetImageSize: converted.reduce((n, c) => n + c.manifest.config.size + sum(c.layers), 0),
      SourcePullElapsed: nanos(started, pulled), ConversionElapsed: nanos(pulled, convertedAt), TargetPushElapsed: nanos(convertedAt, performance.now()),
    };
    return { source: opts.source, target: opts.target, targetDigest, mediaType, images, metric };
  } finally {
    opts.progress?.stop();
    await (ok ? Promise.all([source.close(), target.close()]) : Promise.all([source.destroy(), target.destroy()]));
    scratch.remove();
  }
}
