/**
 * Conversion benchmark: the Debian minbase rootfs as a one-layer OCI image (umoci), pushed by skopeo
 * to a local docker-registry, then in one run
 *   - `nydusify convert` of it to a Nydus image in the same registry, against
 *   - what any runtime pays for the same image: `skopeo copy docker://... oci:<layout>` plus
 *     `umoci unpack`.
 * Prints median wall and CPU time and peak RSS of each (runs interleaved), and the ratios.
 *   node --import tsx bench/convert.ts [--runs 3]
 * Targets: convert <= 2x of pull + unpack, peak RSS <= 256 MiB. Not a test: it asserts nothing.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { debianOciImage } from '../test/helpers/debian-rootfs.ts';
import { requireTool, startRegistry } from '../test/helpers/registry.ts';
import { skopeoPush } from '../test/helpers/oci-image.ts';
import { type Sample, compare, ensureGnuTime, timed } from './timing.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const work = path.join(repo, '.cache/bench-convert');
const runsArg = process.argv.indexOf('--runs');
const runs = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 3;

ensureGnuTime();
for (const [bin, pkg] of [['skopeo', 'skopeo'], ['umoci', 'umoci'], ['docker-registry', 'docker-registry']]) requireTool(bin, pkg);
const image = debianOciImage();
const reg = await startRegistry();
try {
  const source = `${reg.host}/debian:${image.tag}`;
  skopeoPush(image.layout, image.tag, source);
  console.log(`image: ${source} (one layer of the Debian bookworm minbase rootfs); ${runs} runs each after one warm-up`);

  let serial = 0;
  const fresh = () => {
    fs.rmSync(work, { recursive: true, force: true });
    fs.mkdirSync(work, { recursive: true });
    return serial++;
  };
  // Each run converts to a repository of its own, so no blob is already there to skip.
  const convert = (): Sample => {
    const n = fresh();
    return timed([path.join(repo, 'bin/nydusify'), 'convert', '--plain-http', '--work-dir', path.join(work, 'tmp'),
      '--source', source, '--target', `${reg.host}/nydus-${n}:${image.tag}`]);
  };
  const pullUnpack = (): Sample => {
    fresh();
    const pull = timed(['skopeo', 'copy', '--quiet', '--src-tls-verify=false', `docker://${source}`, `oci:${work}/layout:${image.tag}`]);
    const unpack = timed(['umoci', 'unpack', '--image', `${work}/layout:${image.tag}`, `${work}/bundle`]);
    return { wall: pull.wall + unpack.wall, cpu: pull.cpu + unpack.cpu, rssMiB: Math.max(pull.rssMiB, unpack.rssMiB) };
  };

  const tools: Record<string, () => Sample> = {
    'skopeo copy + umoci unpack (reference)': pullUnpack,
    'nydusify convert': convert,
  };
  const results = compare(tools, runs);
  const ref = results['skopeo copy + umoci unpack (reference)'];
  const conv = results['nydusify convert'];
  console.log(`ratio convert/(pull+unpack): wall ${(conv.wall / ref.wall).toFixed(2)}x (target <= 2.0x), cpu ${(conv.cpu / ref.cpu).toFixed(2)}x`);
  console.log(`peak RSS of convert: ${conv.rss.toFixed(0)} MiB (target <= 256 MiB)`);
} finally {
  fs.rmSync(work, { recursive: true, force: true });
  await reg.stop();
}
