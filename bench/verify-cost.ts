/**
 * Where a cold read's CPU goes, per stage, over the Debian rootfs blob of bench/ondemand.ts (run it
 * once first): reading the blob, zstd decompression of every chunk, blake3 and sha256 of the
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

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = path.join(repo, 'kernel-test/.cache/bench/debian');
const opened = openImage(path.join(dir, 'image.boot'));
const blob = [...BlobMap.fromImage(opened.image).values()][0];
opened.close();
const time = (name: string, fn: () => number) => {
  const t0 = performance.now();
  const bytes = fn();
  const s = (performance.now() - t0) / 1000;
  console.log(`VERIFYCOST ${name.padEnd(12)} ${s.toFixed(2)} s, ${(bytes / 1048576 / s).toFixed(1)} MiB/s`);
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

// The daemon's path: the addon verifies each chunk (zstd, then its BLAKE3 digest) on libuv's pool, a
// job at a time here; and BLAKE3 alone in the addon over the uncompressed chunks.
const verifyAll = async (jobs: number) => {
  const t0 = performance.now();
  const chunks = blob.all();
  let next = 0;
  let bytes = 0;
  const worker = async () => {
    while (next < chunks.length) {
      const c = chunks[next++];
      const layout = new Float64Array(RUN_FIELDS);
      setRunChunk(layout, 0, { storedOffset: 0, storedSize: c.compressedSize, outOffset: 0, outSize: c.uncompressedSize, compressed: c.compressed });
      const r = await verifyRunNative({
        stored: stored.subarray(c.compressedOffset, c.compressedOffset + c.compressedSize), compressor: blob.compressor, digester: blob.digester,
        layout, digests: c.digest, digestSize: c.digest.length, outSize: c.uncompressedSize, where: ['x'],
      });
      if (r.errors[0] !== null) throw new Error(r.errors[0]);
      bytes += c.uncompressedSize;
    }
  };
  await Promise.all(Array.from({ length: jobs }, worker));
  const s = (performance.now() - t0) / 1000;
  console.log(`VERIFYCOST ${`addon x${jobs}`.padEnd(12)} ${s.toFixed(2)} s, ${(bytes / 1048576 / s).toFixed(1)} MiB/s (zstd + ${blob.digester}, ${chunks.length} jobs)`);
};
await verifyAll(1);
await verifyAll(2);
// Each stage of the addon alone: zstd with no digest, and BLAKE3 of the uncompressed chunks.
for (const stage of ['zstd', 'digest'] as const) {
  const t0 = performance.now();
  let bytes = 0;
  for (const [i, c] of blob.all().entries()) {
    const layout = new Float64Array(RUN_FIELDS);
    const src = stage === 'zstd' ? stored.subarray(c.compressedOffset, c.compressedOffset + c.compressedSize) : plain[i];
    setRunChunk(layout, 0, { storedOffset: 0, storedSize: src.length, outOffset: 0, outSize: c.uncompressedSize, compressed: stage === 'zstd' && c.compressed });
    const r = await verifyRunNative({
      stored: src, compressor: blob.compressor, digester: blob.digester, layout,
      digests: stage === 'zstd' ? new Uint8Array(0) : c.digest, digestSize: stage === 'zstd' ? 0 : c.digest.length, outSize: c.uncompressedSize, where: ['x'],
    });
    if (r.errors[0] !== null) throw new Error(r.errors[0]);
    bytes += c.uncompressedSize;
  }
  const s = (performance.now() - t0) / 1000;
  console.log(`VERIFYCOST ${`addon ${stage}`.padEnd(12)} ${s.toFixed(2)} s, ${(bytes / 1048576 / s).toFixed(1)} MiB/s`);
}
