/**
 * The plan of the on-demand scenarios: images built on the host (a many-file zstd image, two
 * bootstraps sharing one blob, an image whose blob has a corrupted chunk, a big file for the crash
 * test, and an uncompressed export for the loop-mount reference), with manifests of their sources.
 * kernel-test/guest/ondemand.test.ts reads plan.json. Run directly to (re)make it (and the lazy-pull
 * plan, kernel-test/plan-lazy.ts, when it is out of date):
 *   node --import tsx kernel-test/plan.ts
 */
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { createImage } from '../src/builder/create.ts';
import { exportBlock } from '../src/image/export-block.ts';
import { inspectImage } from '../src/image/inspect.ts';
import { setXattr } from '../native/xattr/index.ts';
import { manifest } from '../test/helpers/manifest.ts';
import { prand } from '../test/helpers/fixtures.ts';
import { makeLazyPlan } from './plan-lazy.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const planDir = path.join(repoRoot, 'kernel-test/.cache/ondemand');

function build(name: string, src: string, blobDir = path.join(planDir, `${name}-blobs`)) {
  const boot = path.join(planDir, `${name}.boot`);
  const r = createImage({ source: src, bootstrap: boot, blobDir, chunkSize: 0x100000, compressor: 'zstd', digester: 'blake3' });
  const m = path.join(planDir, `${name}.manifest.json`);
  fs.writeFileSync(m, JSON.stringify(Object.fromEntries(manifest(src))));
  return { id: name, boot, blobDir, blobId: r.blob!.blobId, manifest: m };
}

export async function makePlan(): Promise<void> {
  fs.rmSync(planDir, { recursive: true, force: true });
  fs.mkdirSync(planDir, { recursive: true });
  const srcs = path.join(planDir, 'src');
  // Many files, some larger than a chunk, links and xattrs.
  const many = path.join(srcs, 'many');
  fs.mkdirSync(path.join(many, 'd/e'), { recursive: true });
  for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(many, i % 3 ? 'd' : 'd/e', `f${i}`), prand(i % 50 === 0 ? 1_500_000 + i : 100 * i, i));
  fs.writeFileSync(path.join(many, 'text'), Buffer.alloc(3_000_000, 'compressible text '));
  fs.symlinkSync('d/f1', path.join(many, 'link'));
  fs.linkSync(path.join(many, 'text'), path.join(many, 'text-hardlink'));
  setXattr(path.join(many, 'text'), 'user.k', Buffer.from('v'));
  // Two trees with the same file data: one blob for both bootstraps.
  const s1 = path.join(srcs, 'shared1');
  fs.mkdirSync(s1, { recursive: true });
  for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(s1, `s${i}`), prand(300_000 + i, 1000 + i));
  fs.cpSync(s1, path.join(srcs, 'shared2'), { recursive: true, preserveTimestamps: true });
  fs.mkdirSync(path.join(srcs, 'shared2', 'only-in-2'));
  // A tree whose blob gets one corrupted chunk.
  const c = path.join(srcs, 'corrupt');
  fs.mkdirSync(c, { recursive: true });
  fs.writeFileSync(path.join(c, 'victim'), prand(200_000, 77));
  for (let i = 0; i < 5; i++) fs.writeFileSync(path.join(c, `ok${i}`), prand(150_000, 80 + i));
  // A big file for the crash scenario.
  const big = path.join(srcs, 'big');
  fs.mkdirSync(big, { recursive: true });
  const bigData = prand(24 * 1024 * 1024, 99);
  fs.writeFileSync(path.join(big, 'big.bin'), bigData);

  const shared = path.join(planDir, 'shared-blobs');
  const images = {
    many: build('many', many),
    shared1: build('shared1', s1, shared),
    shared2: { ...build('shared2', path.join(srcs, 'shared2'), path.join(planDir, 'shared2-tmp')), blobDir: shared },
    corrupt: build('corrupt', c),
    big: build('big', big),
  };
  // Corrupt one stored byte of the victim's chunk in a copy of its blob.
  const victim = inspectImage(images.corrupt.boot, 'stat /victim') as { chunks: Array<{ compressed_offset: number; compressed_size: number }> };
  const blobPath = path.join(images.corrupt.blobDir, images.corrupt.blobId);
  const data = fs.readFileSync(blobPath);
  data[victim.chunks[0].compressed_offset + Math.floor(victim.chunks[0].compressed_size / 2)] ^= 0xff;
  fs.writeFileSync(blobPath, data);
  const exported = path.join(planDir, 'many.erofs');
  await exportBlock({ bootstrap: images.many.boot, blobDir: images.many.blobDir, output: exported });
  fs.writeFileSync(path.join(planDir, 'plan.json'), JSON.stringify({
    images, corruptFile: 'victim', bigFile: 'big.bin', bigChunks: (inspectImage(images.big.boot, 'blobs') as Array<{ chunk_count: number }>)[0].chunk_count, bigSha256: crypto.createHash('sha256').update(bigData).digest('hex'), exported,
  }, null, 2));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  await makePlan();
  // The lazy-pull scenario's registry storage (made once per Debian image and converter).
  await makeLazyPlan();
}
