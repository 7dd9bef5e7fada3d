/**
 * `nydusify check`: the target's manifest and config are a well-formed Nydus image (media types,
 * annotations, diff_ids), and, given the source, the Nydus image's file tree (bootstrap and blobs
 * pulled, read through our image reader) equals the source OCI image's tree with its whiteouts applied
 * (its layers streamed through the tar parser and merged with overlay rules). Problems are listed.
 */
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { NydusError } from '../../erofs/errors.ts';
import { scratchDir } from './work-dir.ts';
import { mergeImages } from '../builder/merge.ts';
import { TarReader } from '../builder/tar-reader.ts';
import { openImage } from '../image/open.ts';
import {
  type ImageManifest, type ImageReference, type Platform, MediaType, RegistryClient, formatReference, parseReference, withDigest,
} from '../registry/index.ts';
import { mapBounded } from '../concurrency.ts';
import { buildLayerFromRegistry } from './layer.ts';
import { diffSummaries, summarizeImage } from './image-summary.ts';
import { ANNOTATION_NYDUS_FS_VERSION, BOOTSTRAP_IN_LAYER, isBootstrapLayer, isNydusBlobLayer, isNydusIndexEntry } from './nydus-format.ts';

export interface CheckOptions {
  source?: string;
  target: string;
  sourceInsecure?: boolean;
  targetInsecure?: boolean;
  plainHttp?: boolean;
  platform: Platform;
  workDir?: string;
  log: Logger;
}

export interface CheckResult {
  problems: string[];
}

/** Problems of a Nydus manifest and its config, as lines. */
export function manifestProblems(m: ImageManifest, config: { rootfs?: { diff_ids?: unknown } }, bootstrapDiffId: string | null): string[] {
  const out: string[] = [];
  const layers = m.layers ?? [];
  if (layers.length === 0) return ['manifest has no layers'];
  const boot = layers[layers.length - 1];
  if (!isBootstrapLayer(boot)) out.push(`last layer ${boot.digest} is not annotated containerd.io/snapshot/nydus-bootstrap: "true"`);
  if (boot.mediaType !== MediaType.ociLayerGzip && boot.mediaType !== MediaType.dockerLayerGzip) out.push(`bootstrap layer media type ${boot.mediaType} is not a gzip tar layer`);
  if (boot.annotations?.[ANNOTATION_NYDUS_FS_VERSION] !== '6') out.push(`bootstrap layer fs version annotation is ${JSON.stringify(boot.annotations?.[ANNOTATION_NYDUS_FS_VERSION])}, want "6"`);
  layers.slice(0, -1).forEach((l, i) => {
    if (!isNydusBlobLayer(l)) out.push(`layer ${i} ${l.digest} is not a Nydus blob (media type ${l.mediaType}, annotation containerd.io/snapshot/nydus-blob)`);
  });
  const diffIds = config.rootfs?.diff_ids;
  if (!Array.isArray(diffIds) || diffIds.length !== layers.length) {
    out.push(`config rootfs.diff_ids has ${Array.isArray(diffIds) ? diffIds.length : 'no'} entries for ${layers.length} layers`);
  } else {
    layers.slice(0, -1).forEach((l, i) => {
      if (diffIds[i] !== l.digest) out.push(`diff_id ${i} is ${diffIds[i]}, want the blob digest ${l.digest}`);
    });
    if (bootstrapDiffId && diffIds[layers.length - 1] !== bootstrapDiffId) out.push(`diff_id of the bootstrap layer is ${diffIds[layers.length - 1]}, want ${bootstrapDiffId}`);
  }
  return out;
}

/** Largest bootstrap accepted: nydus's RAFS_MAX_METADATA_SIZE (2 GiB). */
export const MAX_BOOTSTRAP_SIZE = 0x8000_0000;

/** The most a gzip stream inflates to per compressed byte (deflate's limit is 1032:1). */
const MAX_INFLATE_RATIO = 1032;

/** Slack of the plain tar over its bootstrap: headers, the `image/` directory, padding and the end blocks. */
const TAR_SLACK = 1 << 20;

export interface PullBootstrapOptions {
  /** Largest bootstrap accepted (default MAX_BOOTSTRAP_SIZE); the plain tar may be 1 MiB more. */
  maxSize?: number;
}

/**
 * Pulls a bootstrap layer and writes its `image/image.boot` to `file` (as nydus-snapshotter unpacks it):
 * streamed through gunzip and the tar reader, never held whole. The inflated tar is bounded (a gzip
 * bomb stops at the bound), and the bootstrap's size, as its tar header claims it, is checked against
 * the bound and what the layer's own size can inflate to before a byte of it is written.
 */
export async function pullBootstrap(
  client: RegistryClient, ref: ImageReference, layer: { digest: string; size: number }, file: string, opts: PullBootstrapOptions = {},
): Promise<{ diffId: string; found: boolean }> {
  const name = `${layer.digest} (the bootstrap layer) of ${formatReference(ref)}`;
  const maxBoot = Math.min(opts.maxSize ?? MAX_BOOTSTRAP_SIZE, MAX_INFLATE_RATIO * layer.size);
  const maxTar = (opts.maxSize ?? MAX_BOOTSTRAP_SIZE) + TAR_SLACK;
  const hash = createHash('sha256');
  const compressed = client.blobStream(ref, layer.digest, { size: layer.size });
  const gunzip = zlib.createGunzip({ chunkSize: 256 << 10 });
  compressed.on('error', (e) => gunzip.destroy(e));
  compressed.pipe(gunzip);
  let plainBytes = 0;
  async function* plain(): AsyncGenerator<Buffer> {
    try {
      for await (const chunk of gunzip as AsyncIterable<Buffer>) {
        plainBytes += chunk.length;
        if (plainBytes > maxTar) throw new NydusError(`layer ${name}: inflates to more than ${maxTar} bytes, more than a bootstrap of at most ${opts.maxSize ?? MAX_BOOTSTRAP_SIZE} bytes needs`);
        hash.update(chunk);
        yield chunk;
      }
    } catch (e) {
      if (e instanceof NydusError) throw e;
      if ((e as NodeJS.ErrnoException).code?.startsWith('Z_')) throw new NydusError(`layer ${name}: not a gzip tar: ${(e as Error).message}`);
      throw e;
    }
  }
  const source = plain();
  const reader = new TarReader(source, name);
  let found = false;
  try {
    for (let e = await reader.next(); e; e = await reader.next()) {
      const p = e.path.toString('latin1').replace(/^\.?\/+/, '');
      if (e.type === 'file' && p === BOOTSTRAP_IN_LAYER && !found) {
        if (e.size > maxBoot) {
          throw new NydusError(`layer ${name}: ${BOOTSTRAP_IN_LAYER} claims ${e.size} bytes, more than ${maxBoot} (the largest bootstrap accepted, or what ${layer.size} gzip bytes can inflate to)`);
        }
        await copyContent(reader, e.size, file);
        found = true;
      }
    }
    // The diff_id is the digest of the whole plain tar, what follows its end blocks included.
    for await (const _ of source) { /* hashed by plain() */ }
  } finally {
    gunzip.destroy();
    compressed.destroy();
  }
  return { diffId: `sha256:${hash.digest('hex')}`, found };
}

/** Writes the current tar entry's `size` bytes to `file` a MiB at a time. */
async function copyContent(reader: TarReader, size: number, file: string): Promise<void> {
  const fd = fs.openSync(file, 'w');
  try {
    const buf = Buffer.allocUnsafe(Math.min(size, 1 << 20));
    for (let left = size; left > 0;) {
      const n = Math.min(left, buf.length);
      await reader.readContent(buf, n);
      fs.writeSync(fd, buf, 0, n);
      left -= n;
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Ids of the blobs the bootstrap's blob table names that no layer of `m` is. */
function blobsMissingFromManifest(bootFile: string, m: ImageManifest): string[] {
  const layers = new Set(m.layers.map((l) => l.digest));
  const { image, close } = openImage(bootFile);
  close();
  return image.blobs.map((b) => b.id).filter((id) => !layers.has(`sha256:${id}`));
}

export async function checkConverted(opts: CheckOptions): Promise<CheckResult> {
  const targetRef = parseReference(opts.target);
  const target = new RegistryClient({ insecure: opts.targetInsecure, plainHttp: opts.plainHttp });
  const source = new RegistryClient({ insecure: opts.sourceInsecure, plainHttp: opts.plainHttp });
  const scratch = scratchDir(opts.workDir, 'nydusify-check-');
  const workDir = scratch.path;
  const problems: string[] = [];
  try {
    // The Nydus image, where the index holds the OCI one of the platform too (--merge-platform).
    const resolved = await target.resolveImage(targetRef, opts.platform, isNydusIndexEntry);
    if (resolved.images.length === 0) return { problems: [`target ${opts.target} has no image for the platform`] };
    const image = resolved.images[0].manifest;
    const ref = withDigest(targetRef, image.digest);
    const m = image.json;
    const config = (await target.getConfig(ref, m.config)).json;
    const boot = m.layers[m.layers.length - 1];
    const bootFile = path.join(workDir, 'image.boot');
    const pulled = boot && isBootstrapLayer(boot) ? await pullBootstrap(target, ref, boot, bootFile) : null;
    problems.push(...manifestProblems(m, config, pulled?.diffId ?? null));
    if (pulled && !pulled.found) problems.push(`bootstrap layer ${boot.digest} holds no ${BOOTSTRAP_IN_LAYER}`);
    if (problems.length > 0) return { problems };
    // Every blob the bootstrap names must be a layer of the manifest: what a runtime fetches.
    const missing = blobsMissingFromManifest(bootFile, m);
    if (missing.length > 0) {
      return { problems: [`the bootstrap ${BOOTSTRAP_IN_LAYER} names ${missing.length} blob${missing.length === 1 ? '' : 's'} missing from the manifest's layers: ${missing.map((id) => `sha256:${id}`).join(', ')}`] };
    }
    if (!opts.source) return { problems };

    // The Nydus tree, from the pulled bootstrap and blobs (named by their sha256, as the bootstrap names them).
    const blobDir = path.join(workDir, 'blobs');
    fs.mkdirSync(blobDir);
    await mapBounded(m.layers.slice(0, -1), 4, async (l) => {
      await pipeline(target.blobStream(ref, l.digest, { size: l.size }), fs.createWriteStream(path.join(blobDir, l.digest.replace(/^sha256:/, ''))));
    });
    const got = summarizeImage(bootFile, blobDir);

    // The OCI tree: the source layers through the tar parser, merged with whiteouts applied.
    const sourceRef = parseReference(opts.source);
    const src = (await source.resolveImage(sourceRef, opts.platform, (d) => !isNydusIndexEntry(d))).images[0];
    if (!src) return { problems: [`source ${opts.source} has no image for the platform`] };
    const srcRef = withDigest(sourceRef, src.manifest.digest);
    const srcDir = path.join(workDir, 'source');
    const layerBoots = await mapBounded(src.manifest.json.layers, 4, async (l, i) => {
      const dir = path.join(srcDir, `layer-${i}`);
      fs.mkdirSync(dir, { recursive: true });
      const built = await buildLayerFromRegistry(source, srcRef, l, dir, { chunkSize: 0x100000, compressor: 'none' });
      if (built.blob) fs.renameSync(built.blob.path, path.join(srcDir, built.blob.blobId));
      return built;
    });
    const merged = path.join(srcDir, 'image.boot');
    mergeImages({ sources: layerBoots.map((b) => b.bootstrap), bootstrap: merged, impliedDirs: layerBoots.map((b) => b.impliedDirs) });
    const want = summarizeImage(merged, srcDir);
    problems.push(...diffSummaries(want, got));
    opts.log.info({ entries: want.size, problems: problems.length }, 'file trees compared');
    return { problems };
  } finally {
    await Promise.all([source.close(), target.close()]);
    scratch.remove();
  }
}
