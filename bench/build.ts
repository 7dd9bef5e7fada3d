/**
 * Build benchmark: the same Debian minbase rootfs built by `nydus-image create` (none and zstd) and by
 * `mkfs.erofs --chunksize=1048576 --blobdev=...` (erofs-utils) in one run; prints median wall and CPU time
 * and peak RSS, and the ratios against mkfs.erofs (runs interleaved).
 *   node --import tsx bench/build.ts [--runs 3]
 * The rootfs is test/helpers/debian-rootfs.ts's (made once with debootstrap, cached).
 * Not a test: it asserts nothing.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { debianRootfs, ensureTool } from '../test/helpers/debian-rootfs.ts';
import { compare, ensureGnuTime, timed } from './timing.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cache = path.join(repo, '.cache/bench-build');
const runsArg = process.argv.indexOf('--runs');
const runs = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 3;

ensureTool('mkfs.erofs', 'erofs-utils');
ensureGnuTime();
const rootfs = debianRootfs();
const du = execFileSync('du', ['-sb', rootfs], { encoding: 'utf8' }).split('\t')[0];
const files = execFileSync('sh', ['-c', `find '${rootfs}' | wc -l`], { encoding: 'utf8' }).trim();
console.log(`tree: ${files} entries, ${(Number(du) / 1048576).toFixed(0)} MiB; ${runs} runs each after one warm-up`);

const out = path.join(cache, 'out');
const tools: Record<string, (o: string) => string[]> = {
  'mkfs.erofs (reference)': (o) => ['mkfs.erofs', '--chunksize=1048576', `--blobdev=${o}/blob`, `${o}/img`, rootfs],
  'nydus-image --compressor none': (o) => [path.join(repo, 'bin/nydus-image'), 'create', '--compressor', 'none', '-B', `${o}/boot`, '-D', `${o}/blobs`, rootfs],
  'nydus-image --compressor zstd': (o) => [path.join(repo, 'bin/nydus-image'), 'create', '--compressor', 'zstd', '-B', `${o}/boot`, '-D', `${o}/blobs`, rootfs],
};
const results = compare(Object.fromEntries(Object.entries(tools).map(([name, cmd]) => [name, () => {
  fs.rmSync(out, { recursive: true, force: true });
  fs.mkdirSync(out, { recursive: true });
  return timed(cmd(out));
}])), runs);
fs.rmSync(out, { recursive: true, force: true });
const ref = results['mkfs.erofs (reference)'];
const none = results['nydus-image --compressor none'];
const zstd = results['nydus-image --compressor zstd'];
console.log(`ratio none/mkfs.erofs: wall ${(none.wall / ref.wall).toFixed(2)}x (target <= 1.0x), cpu ${(none.cpu / ref.cpu).toFixed(2)}x`);
console.log(`ratio zstd/mkfs.erofs: wall ${(zstd.wall / ref.wall).toFixed(2)}x (target <= 1.5x), cpu ${(zstd.cpu / ref.cpu).toFixed(2)}x`);
console.log(`peak RSS: none ${none.rss.toFixed(0)} MiB, zstd ${zstd.rss.toFixed(0)} MiB (target <= 128 MiB)`);
