/**
 * One OCI layer -> one Nydus layer: the registry download is streamed through gunzip, the tar parser
 * and the chunker into a layer bootstrap and blob in the work dir (never the whole layer in memory),
 * then the blob is pushed. Whiteouts stay in the layer bootstrap for the merge to apply.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { type CreateResult, createImageFromTar } from '../builder/create.ts';
import type { CompressorName } from '../blob/compress.ts';
import type { Descriptor, ImageReference, RegistryClient } from '../registry/index.ts';
import { formatReference } from '../registry/index.ts';
import type { LayerProgress } from './progress.ts';

export interface LayerBuildOptions {
  chunkSize: number;
  compressor: CompressorName;
}

export interface ConvertedLayer {
  /** The layer bootstrap, a source of the merge. */
  bootstrap: string;
  /** The layer's Nydus blob, pushed; null for a layer without file data. */
  blob: { blobId: string; digest: string; size: number } | null;
  /** The directories the layer only implies, for the merge (CreateResult.impliedDirs). */
  impliedDirs: string[];
}

/** Streams a registry layer into a layer bootstrap and blob under `dir`. */
export async function buildLayerFromRegistry(
  client: RegistryClient, ref: ImageReference, layer: Descriptor, dir: string, opts: LayerBuildOptions,
  track?: (stream: Readable) => Readable,
): Promise<CreateResult & { bootstrap: string }> {
  // The builder's errors say `layer <name>: ...`.
  const name = `${layer.digest} of ${formatReference(ref)}`;
  const pulled = client.blobStream(ref, layer.digest, { size: layer.size });
  const stream = track ? track(pulled) : pulled;
  const bootstrap = path.join(dir, 'layer.boot');
  const built = await createImageFromTar({
    source: name, bootstrap, blobDir: path.join(dir, 'blobs'),
    chunkSize: opts.chunkSize, compressor: opts.compressor, digester: 'blake3', whiteoutSpec: 'oci',
  }, { stream, name });
  return { ...built, bootstrap };
}

export async function convertLayer(
  io: { source: RegistryClient; target: RegistryClient; log: Logger; progress?: LayerProgress },
  refs: { source: ImageReference; target: ImageReference },
  layer: Descriptor, index: number, workDir: string, opts: LayerBuildOptions,
): Promise<ConvertedLayer> {
  const dir = path.join(workDir, `layer-${index}`);
  fs.mkdirSync(dir, { recursive: true });
  const log = io.log.child({ layer: index, digest: layer.digest });
  const started = Date.now();
  log.info({ size: layer.size }, 'pulling and building layer');
  let state = (_: string) => undefined as void;
  const built = await buildLayerFromRegistry(io.source, refs.source, layer, dir, opts, (pulled) => {
    if (!io.progress) return pulled;
    const t = io.progress.track(`layer ${index + 1} ${layer.digest.slice(7, 19)}`, layer.size, pulled);
    state = t.state;
    return t.stream;
  });
  if (!built.blob) {
    log.info('layer has no file data: no blob');
    state('done, no file data');
    return { bootstrap: built.bootstrap, blob: null, impliedDirs: built.impliedDirs };
  }
  state('pushing blob');
  const blob = built.blob;
  const digest = `sha256:${blob.blobId}`;
  const pushed = await io.target.pushBlob(refs.target, { open: () => fs.createReadStream(blob.path), size: blob.fileSize, digest });
  log.info({ blob: blob.blobId, size: blob.fileSize, how: pushed.how, ms: Date.now() - started }, 'layer blob pushed');
  state(`done, blob ${pushed.how}`);
  // The pushed blob is not needed locally any more; the bootstrap is, for the merge.
  fs.rmSync(blob.path, { force: true });
  return { bootstrap: built.bootstrap, blob: { blobId: blob.blobId, digest, size: blob.fileSize }, impliedDirs: built.impliedDirs };
}
