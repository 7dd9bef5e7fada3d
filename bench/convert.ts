/**
 * Conversion benchmark: the Debian minbase rootfs as a one-layer OCI image (umoci), pushed by skopeo
 * to a local docker-registry, then in one run
 *   - `nydusify convert` of it to a Nydus image in the same registry, against
 *   - what any runtime pays for the same image: `skopeo copy docker://... oci:<layout>` plus
 *     `umoci unpack`.
 * Prints median wall time and peak RSS of each, and the ratio.
 *   node --import tsx bench/convert.ts [--runs 3]
 * Targets: convert <= 2x of pull + unpack, peak RSS <= 256 MiB. Not a test: it asserts nothing.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { debianOciImage } from '../test/helpers/debian-rootfs.ts';
import { requireTool, startRegistry } from '../test/helpers/registry.ts';
import { skopeoPush } from '../test/helpers/oci-image.ts';
import { type Sample, ensureGnuTime, median, timed } from './timing.ts';

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
    return { wall: pull.wall + unpack.wall, rssMiB: Math.max(pull.rssMiB, unpack.rssMiB) };
  };

  const tools: Record<string, () => Sample> = {
    'skopeo copy + umoci unpack (reference)': pullUnpack,
    'nydusify convert': convert,
  };
  const results: Record<string, { wall: number; rss: number }> = {};
  // Interleaved, so that load from elsewhere falls on both alike.
  const samples: Record<string, Sample[]> = Object.fromEntries(Object.keys(tools).map((k) => [k, []]));
  for (let i = 0; i <= runs; i++) {
    for (const [name, run] of Object.entries(tools)) {
      const s = run();
      if (i > 0) samples[name].push(s);
    }
  }
  for (const name of Object.keys(tools)) {
    const s = samples[name];
    results[name] = { wall: median(s.map((x) => x.wall)), rss: Math.max(...s.map((x) => x.rssMiB)) };
    console.log(`${name.padEnd(40)} ${results[name].wall.toFixed(2).padStart(7)} s  ${results[name].rss.toFixed(0).padStart(5)} MiB peak RSS`);
  }
  const ref = results['skopeo copy + umoci unpack (reference)'];
  const conv = results['nydusify convert'];
  console.log(`wall ratio convert/(pull+unpack): ${(conv.wall / ref.wall).toFixed(2)}x (target <= 2.0x)`);
  console.log(`peak RSS of convert: ${conv.rss.toFixed(0)} MiB (target <= 256 MiB)`);
} finally {
  fs.rmSync(work, { recursive: true, force: true });
  await reg.stop();
}
