/**
 * The plan of the lazy-pull scenario and benchmark: a registry storage directory holding the Debian
 * rootfs image (`debian:bookworm`, pushed by skopeo) and its Nydus conversion (`debian:bookworm-nydus`,
 * by `nydusify convert`), the manifest of the source rootfs, and a small local image (localfs backend)
 * the daemon keeps serving while the registry is down. The guest serves the storage read-only from its
 * own docker-registry. Made once per OCI image (about a minute); run directly to (re)make it:
 *   node --import tsx kernel-test/plan-lazy.ts
 */
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { createImage } from '../src/builder/create.ts';
import { RegistryClient, parseReference, withDigest } from '../src/registry/index.ts';
import { isBootstrapLayer, isNydusBlobLayer } from '../src/convert/nydus-format.ts';
import { pullBootstrap } from '../src/convert/check.ts';
import { inspectImage } from '../src/image/inspect.ts';
import { debianOciImage, debianRootfs } from '../test/helpers/debian-rootfs.ts';
import { manifest } from '../test/helpers/manifest.ts';
import { skopeoPush } from '../test/helpers/oci-image.ts';
import { startRegistry } from '../test/helpers/registry.ts';
import { mustRun } from '../test/helpers/cli.ts';
import { prand } from '../test/helpers/fixtures.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const lazyPlanDir = path.join(repoRoot, 'kernel-test/.cache/lazy');
export const lazyPlanFile = path.join(lazyPlanDir, 'plan.json');

export interface LazyPlan {
  /** What the plan was made from: made again when it changes. */
  key: string;
  /** Registry storage (distribution's filesystem driver root). */
  storage: string;
  repo: string;
  sourceTag: string;
  nydusTag: string;
  /** Sum of the Nydus blob layers' sizes. */
  blobBytes: number;
  /** Chunks of each blob (by blob id), as the bootstrap lists them. */
  blobChunks: Record<string, number>;
  /** Manifest (test/helpers/manifest.ts) of the source rootfs. */
  manifest: string;
  /** A small image served from a local blob directory. */
  local: { boot: string; blobDir: string; manifest: string };
}

function planKey(layout: string): string {
  // The OCI image's index, this file and the converter's sources: any changing makes the plan again.
  const h = crypto.createHash('sha256').update(fs.readFileSync(path.join(layout, 'index.json'))).update(fs.readFileSync(fileURLToPath(import.meta.url)));
  for (const dir of ['src/convert', 'src/builder']) {
    for (const f of fs.readdirSync(path.join(repoRoot, dir)).sort()) h.update(f).update(fs.readFileSync(path.join(repoRoot, dir, f)));
  }
  return h.digest('hex');
}

export function readLazyPlan(): LazyPlan {
  if (!fs.existsSync(lazyPlanFile)) throw new Error(`${lazyPlanFile} is missing: run node --import tsx kernel-test/plan-lazy.ts on the host`);
  return JSON.parse(fs.readFileSync(lazyPlanFile, 'utf8'));
}

export async function makeLazyPlan(): Promise<LazyPlan> {
  const { layout, tag } = debianOciImage();
  const key = planKey(layout);
  if (fs.existsSync(lazyPlanFile) && (JSON.parse(fs.readFileSync(lazyPlanFile, 'utf8')) as LazyPlan).key === key) return readLazyPlan();
  fs.rmSync(lazyPlanDir, { recursive: true, force: true });
  fs.mkdirSync(lazyPlanDir, { recursive: true });
  const storage = path.join(lazyPlanDir, 'registry');
  fs.mkdirSync(storage);
  const repo = 'debian';
  const nydusTag = `${tag}-nydus`;
  const reg = await startRegistry({ storage });
  let blobBytes = 0;
  const blobChunks: Record<string, number> = {};
  try {
    skopeoPush(layout, tag, `${reg.host}/${repo}:${tag}`);
    mustRun('nydusify', ['convert', '--log-level', 'warn', '--plain-http', '--work-dir', path.join(lazyPlanDir, 'convert-tmp'),
      '--source', `${reg.host}/${repo}:${tag}`, '--target', `${reg.host}/${repo}:${nydusTag}`]);
    const client = new RegistryClient({ plainHttp: true, dockerConfig: false });
    try {
      const ref = parseReference(`${reg.host}/${repo}:${nydusTag}`);
      const image = (await client.resolveImage(ref)).images[0];
      const layers = image.manifest.json.layers;
      blobBytes = layers.filter(isNydusBlobLayer).reduce((n, l) => n + l.size, 0);
      const boot = path.join(lazyPlanDir, 'image.boot');
      await pullBootstrap(client, withDigest(ref, image.manifest.digest), layers.find(isBootstrapLayer)!, boot);
      for (const b of inspectImage(boot, 'blobs') as Array<{ blob_id: string; chunk_count: number }>) blobChunks[b.blob_id] = b.chunk_count;
    } finally {
      await client.close();
    }
  } finally {
    await reg.stop();
    fs.rmSync(path.join(lazyPlanDir, 'convert-tmp'), { recursive: true, force: true });
  }
  const rootfsManifest = path.join(lazyPlanDir, 'rootfs.manifest.json');
  fs.writeFileSync(rootfsManifest, JSON.stringify(Object.fromEntries(manifest(debianRootfs()))));

  const localSrc = path.join(lazyPlanDir, 'local-src');
  fs.mkdirSync(localSrc);
  for (let i = 0; i < 8; i++) fs.writeFileSync(path.join(localSrc, `f${i}`), prand(200_000 + i, 500 + i));
  const local = { boot: path.join(lazyPlanDir, 'local.boot'), blobDir: path.join(lazyPlanDir, 'local-blobs'), manifest: path.join(lazyPlanDir, 'local.manifest.json') };
  createImage({ source: localSrc, bootstrap: local.boot, blobDir: local.blobDir, chunkSize: 0x100000, compressor: 'zstd', digester: 'blake3' });
  fs.writeFileSync(local.manifest, JSON.stringify(Object.fromEntries(manifest(localSrc))));

  const plan: LazyPlan = { key, storage, repo, sourceTag: tag, nydusTag, blobBytes, blobChunks, manifest: rootfsManifest, local };
  fs.writeFileSync(lazyPlanFile, JSON.stringify(plan, null, 2));
  return plan;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const t0 = Date.now();
  const plan = await makeLazyPlan();
  console.log(`lazy plan: ${plan.repo}:${plan.nydusTag}, blobs ${(plan.blobBytes / 1048576).toFixed(1)} MiB (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}
