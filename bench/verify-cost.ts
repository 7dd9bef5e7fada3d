/**
 * Where a cold read's CPU goes, per stage, over the Debian rootfs blob of bench/ondemand.ts (run it
 * once first; BENCH_WORKLOAD=big for its big-file blob): reading the blob, zstd decompression of every chunk, blake3 and sha256 of the
 * uncompressed chunks; the addon's verification (the daemon's). Run on the host, or in the guest: `bash kernel-test/vm.sh bench/guest-verify-cost.sh`.
 * Not a test: it asserts nothing.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { openImage } from '../src/image/open.ts';
import { BlobMap } from '../src/daemon/blob-map.ts';
import { decompressChunk } from '../src/blob/compress.ts';
import { chunkDigest } from '../src/blob/digest.ts';
import { RUN_FIELDS, setRunChunk, verifyRunNative } from '../src/blob/verify.ts';
import type { ChunkRef } from '../src/builder/tree.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = path.join(repo, 'kernel-test/.cache/bench', process.env.BENCH_WORKLOAD ?? 'debian');
const opened = openImage(path.join(dir, 'image.boot'));
const blob = [...BlobMap.fromImage(opened.image).values()][0];
opened.close();
const report = (name: string, t0: number, bytes: number) => {
  const s = (performance.now() - t0) / 1000;
  console.log(`VERIFYCOST ${name.padEnd(12)} ${s.toFixed(2)} s, ${(bytes / 1048576 / s).toFixed(1)} MiB/s`);
};
const time = (name: string, fn: () => number) => {
  const t0 = performance.now();
  report(name, t0, fn());
};
const timeAsync = async (name: string, fn: () => Promise<number>) => {
  const t0 = performance.now();
  report(name, t0, await fn());
};
let stored = Buffer.alloc(0);
time('read blob', () => (stored = fs.readFileSync(path.join(dir, 'blobs', blob.blobId))).length);
const plain: Buffer[] = [];
time('zstd', () => {
  let n = 0;
  for (const c of blob.all()) {
    const s = stored.subarray(c.compressedOffset, c.compressedOffset + c.compressedSize);
    const d = c.compressed ? decompressChunk(blob.compressor, s, c.uncompressedSize, 'x') : s;
    plain.push(d);
    n += d.length;
  }
  return n;
});
time('blake3', () => plain.reduce((n, d) => (chunkDigest('blake3', d), n + d.length), 0));
time('sha256', () => plain.reduce((n, d) => (createHash('sha256').update(d).digest(), n + d.length), 0));

/** One chunk through the addon: `src` decompressed when `compressed`, its digest checked when one is given. */
async function addonVerify(src: Uint8Array, c: ChunkRef, compressed: boolean, digest: Uint8Array): Promise<void> {
  const layout = new Float64Array(RUN_FIELDS);
  setRunChunk(layout, 0, { storedOffset: 0, storedSize: src.length, outOffset: 0, outSize: c.uncompressedSize, compressed });
  const r = await verifyRunNative({
    stored: src, compressor: blob.compressor, digester: blob.digester, layout, digests: digest, digestSize: digest.length, outSize: c.uncompressedSize, where: ['x'],
  });
  if (r.errors[0] !== null) throw new Error(r.errors[0]);
}

const storedOf = (c: ChunkRef) => stored.subarray(c.compressedOffset, c.compressedOffset + c.compressedSize);

// The daemon's path: the addon verifies each chunk (zstd, then its digest) on libuv's pool, `jobs` at
// a time; then each stage of the addon alone: zstd with no digest, and the digest of the uncompressed chunks.
for (const jobs of [1, 2]) {
  await timeAsync(`addon x${jobs}`, async () => {
    const chunks = blob.all();
    let next = 0;
    let bytes = 0;
    const worker = async () => {
      while (next < chunks.length) {
        const c = chunks[next++];
        await addonVerify(storedOf(c), c, c.compressed, c.digest);
        bytes += c.uncompressedSize;
      }
    };
    await Promise.all(Array.from({ length: jobs }, worker));
    return bytes;
  });
}
await timeAsync('addon zstd', async () => {
  let bytes = 0;
  for (const c of blob.all()) {
    await addonVerify(storedOf(c), c, c.compressed, new Uint8Array(0));
    bytes += c.uncompressedSize;
  }
  return bytes;
});
await timeAsync('addon digest', async () => {
  let bytes = 0;
  for (const [i, c] of blob.all().entries()) {
    await addonVerify(plain[i], c, false, c.digest);
    bytes += c.uncompressedSize;
  }
  return bytes;
});
