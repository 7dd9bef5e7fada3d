/**
 * `nydusify check`: the target's manifest and config are a well-formed Nydus image (media types,
 * annotations, diff_ids), and, given the source, the Nydus image's file tree (bootstrap and blobs
 * pulled, read through our image reader) equals the source OCI image's tree with its whiteouts applied
 * (its layers streamed through the tar parser and merged with overlay rules). Problems are listed.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { NydusError } from '../../erofs/errors.ts';
import { mergeImages } from '../builder/merge.ts';
import { TarReader } from '../builder/tar-reader.ts';
import { openImage } from '../image/open.ts';
import {
  type ImageManifest, type ImageReference, type Platform, MediaType, RegistryClient, parseReference, withDigest,
} from '../registry/index.ts';
import { mapBounded } from '../concurrency.ts';
import { buildLayerFromRegistry } from './layer.ts';
import { diffSummaries, summarizeImage } from './image-summary.ts';
import { ANNOTATION_NYDUS_FS_VERSION, BOOTSTRAP_IN_LAYER, isBootstrapLayer, isNydusBlobLayer } from './nydus-format.ts';

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

/**
 * The bootstrap layer (small: metadata only, read whole): its plain tar's digest, and
 * `image/image.boot` written to `file`.
 */
/** Pulls a bootstrap layer and writes its `image/image.boot` to `file` (as nydus-snapshotter unpacks it). */
export async function pullBootstrap(client: RegistryClient, ref: ImageReference, layer: { digest: string; size: number }, file: string): Promise<{ diffId: string; found: boolean }> {
  const name = `bootstrap layer ${layer.digest}`;
  let plain: Buffer;
  try {
    plain = zlib.gunzipSync(await client.getBlob(ref, layer.digest, { size: layer.size }));
  } catch (e) {
    throw new NydusError(`${name}: not a gzip tar: ${(e as Error).message}`);
  }
  const reader = new TarReader((async function* () { yield plain; })(), name);
  let found = false;
  for (let e = await reader.next(); e; e = await reader.next()) {
    const p = e.path.toString('latin1').replace(/^\.?\/+/, '');
    if (e.type === 'file' && p === BOOTSTRAP_IN_LAYER && !found) {
      const buf = Buffer.alloc(e.size);
      await reader.readContent(buf, e.size);
      fs.writeFileSync(file, buf);
      found = true;
    }
  }
  return { diffId: `sha256:${createHash('sha256').update(plain).digest('hex')}`, found };
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
  const base = opts.workDir ?? os.tmpdir();
  fs.mkdirSync(base, { recursive: true });
  const workDir = fs.mkdtempSync(path.join(base, 'nydusify-check-'));
  const problems: string[] = [];
  try {
    const resolved = await target.resolveImage(targetRef, opts.platform);
    if (resolved.images.length === 0) return { problems: [`target ${opts.target} has no image for the platform`] };
    const image = resolved.images[0].manifest;
    const ref = withDigest(targetRef, image.digest);
    const m = image.json;
    const config = JSON.parse((await target.getBlob(ref, m.config.digest, { size: m.config.size })).toString('utf8'));
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
    const src = (await source.resolveImage(sourceRef, opts.platform)).images[0];
    if (!src) return { problems: [`source ${opts.source} has no image for the platform`] };
    const srcRef = withDigest(sourceRef, src.manifest.digest);
    const srcDir = path.join(workDir, 'source');
    const layerBoots = await mapBounded(src.manifest.json.layers, 4, async (l, i) => {
      const dir = path.join(srcDir, `layer-${i}`);
      fs.mkdirSync(dir, { recursive: true });
      const built = await buildLayerFromRegistry(source, srcRef, l, dir, { chunkSize: 0x100000, compressor: 'none' });
      if (built.blob) fs.renameSync(built.blob.path, path.join(srcDir, built.blob.blobId));
      return built.bootstrap;
    });
    const merged = path.join(srcDir, 'image.boot');
    mergeImages({ sources: layerBoots, bootstrap: merged });
    const want = summarizeImage(merged, srcDir);
    problems.push(...diffSummaries(want, got));
    opts.log.info({ entries: want.size, problems: problems.length }, 'file trees compared');
    return { problems };
  } finally {
    await Promise.all([source.close(), target.close()]);
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}
