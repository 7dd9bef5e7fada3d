/**
 * Where a cold read's CPU goes, per stage, over the Debian rootfs blob of bench/ondemand.ts (run it
 * once first): reading the blob, zstd decompression of every chunk, blake3 and sha256 of the
 * uncompressed chunks. Run on the host, or in the guest: `bash kernel-test/vm.sh bench/guest-verify-cost.sh`.
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
