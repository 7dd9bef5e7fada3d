/**
 * Benchmark of the on-demand path, in one kernel-test guest run: reading a whole image
 * (1) cold through fscache + nydusd, (2) warm (remounted, page cache dropped, data in the cache files),
 * (3) from a loop mount of its uncompressed export, the reference. Prints throughput and ratios.
 *   node --import tsx bench/ondemand.ts [--mib 64] [--host] [--rootfs]
 * --host: the same on this machine's own kernel through nydusd --fanotify (bench/ondemand-host.ts);
 * --rootfs: the Debian minbase rootfs (test/helpers/debian-rootfs.ts) as the image instead of --mib.
 * Not a test: it asserts nothing. Under qemu TCG absolute figures are low; the ratios are the point.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createImage } from '../src/builder/create.ts';
import { exportBlock } from '../src/image/export-block.ts';
import { prand } from '../test/helpers/fixtures.ts';
import { debianRootfs } from '../test/helpers/debian-rootfs.ts';
import { benchHost } from './ondemand-host.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const mibArg = process.argv.indexOf('--mib');
const mib = mibArg > 0 ? Number(process.argv[mibArg + 1]) : 64;
const host = process.argv.includes('--host');
const dir = path.join(repo, host ? '.cache/bench-host' : 'kernel-test/.cache/bench');

fs.rmSync(dir, { recursive: true, force: true });
let src = path.join(dir, 'src');
fs.mkdirSync(src, { recursive: true });
let total = 0;
if (process.argv.includes('--rootfs')) {
  src = debianRootfs();
  total = Number(spawnSync('sh', ['-c', 'find "$1" -type f -printf "%s\\n" | awk "{s+=\\$1} END {print s}"', 'sh', src], { encoding: 'utf8' }).stdout.trim());
} else {
  // Half random (stored raw), half text-like (compresses), in files of 64 KiB to 4 MiB.
  for (let i = 0; total < mib * 1024 * 1024; i++) {
    const size = 65536 << (i % 7);
    const data = i % 2 ? prand(size, i) : Buffer.alloc(size, `line ${i} of some compressible bench text\n`);
    fs.writeFileSync(path.join(src, `f${i}`), data);
    total += size;
  }
}
const boot = path.join(dir, 'bench.boot');
const r = createImage({ source: src, bootstrap: boot, blobDir: path.join(dir, 'blobs'), chunkSize: 0x100000, compressor: 'zstd', digester: 'blake3' });
exportBlock({ bootstrap: boot, blobDir: path.join(dir, 'blobs'), output: path.join(dir, 'bench.erofs') });
fs.writeFileSync(path.join(dir, 'plan.json'), JSON.stringify({ boot, blobDir: path.join(dir, 'blobs'), exported: path.join(dir, 'bench.erofs'), bytes: total, blobId: r.blob!.blobId }));
console.log(`bench image: ${(total / 1048576).toFixed(0)} MiB of file data, blob ${(r.blob!.fileSize / 1048576).toFixed(1)} MiB`);
const mbs = (s: number) => (total / 1048576 / s).toFixed(1);

if (host) {
  const res = await benchHost({ dir, boot, blobDir: path.join(dir, 'blobs'), exported: path.join(dir, 'bench.erofs') }, repo);
  console.log(`loop mount of the export (reference): ${res.loop.toFixed(2)} s, ${mbs(res.loop)} MiB/s`);
  console.log(`fanotify cold (nydusd fetches):       ${res.cold.toFixed(2)} s, ${mbs(res.cold)} MiB/s, ${(res.loop / res.cold).toFixed(2)}x loop (target >= 0.8x)`);
  console.log(`fanotify warm (cache files):          ${res.warm.toFixed(2)} s, ${mbs(res.warm)} MiB/s, ${(res.loop / res.warm).toFixed(2)}x loop (target >= 0.95x)`);
  process.exit(0);
}

const vm = spawnSync('bash', [path.join(repo, 'kernel-test/vm.sh'), path.join(repo, 'bench/guest-ondemand.sh')], { encoding: 'utf8', maxBuffer: 1 << 26 });
const lines = vm.stdout.split('\n').filter((l) => l.startsWith('BENCH '));
const res = Object.fromEntries(lines.map((l) => l.replace(/\r$/, '').split(' ').slice(1)).map(([k, v]) => [k, Number(v)]));
if (vm.status !== 0 || !res.loop) {
  console.error(vm.stdout.slice(-3000));
  process.exit(1);
}
console.log(`loop mount of the export (reference): ${res.loop.toFixed(2)} s, ${mbs(res.loop)} MiB/s`);
console.log(`fscache cold (nydusd fetches):        ${res.cold.toFixed(2)} s, ${mbs(res.cold)} MiB/s, ${(res.loop / res.cold).toFixed(2)}x loop (target >= 0.8x)`);
console.log(`fscache warm (cache files):           ${res.warm.toFixed(2)} s, ${mbs(res.warm)} MiB/s, ${(res.loop / res.warm).toFixed(2)}x loop (target >= 0.95x)`);
