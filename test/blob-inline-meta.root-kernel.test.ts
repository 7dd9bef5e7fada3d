/**
 * Layer blobs with their bootstrap inside (`nydus-image create --blob-inline-meta --features blob-toc`),
 * made as nydus-snapshotter's converter package makes them for nerdctl, buildkit and the acceleration
 * service (pkg/converter/tool/builder.go: the layer tar through one FIFO, the blob out through another,
 * the prefetch patterns on stdin), then read the way that converter reads them: by an independent
 * reader of the blob's tail (test/helpers/nydus-blob-tail.py: tar headers from the end, the TOC, zstd),
 * merged as its Merge does (`--blob-digests`, `--blob-sizes`, `--blob-toc-digests`), checked, exported and
 * mounted by this machine's kernel; the mounted tree must equal GNU tar's extraction of the layers.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { makeRichTree, prand, tmpDir } from './helpers/fixtures.ts';
import { manifest, diffManifests } from './helpers/manifest.ts';
import { loopMount, umount } from './helpers/mount.ts';
import { mustRun, repoRoot, runCli } from './helpers/cli.ts';
import { apiRequest } from './helpers/api-client.ts';
import { cleanUpDaemons, localfsBackend, startFanotifyDaemon } from './helpers/fanotify-daemon.ts';

const work = tmpDir('inline-meta');
const mounts: string[] = [];
const daemons: ChildProcess[] = [];
after(() => cleanUpDaemons(work, { daemons, mounts }));

const sha256File = (f: string) => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');

function gnuTar(name: string, dir: string): string {
  const file = path.join(work, `${name}.tar`);
  execFileSync('tar', ['--format=pax', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', dir, '-cf', file, '.']);
  return file;
}

/**
 * `nydus-image create` as the converter runs it (tool.buildPackArgs with tar2rafs): the tar written
 * into a FIFO as the source, the blob read from a FIFO as it comes, "/" on stdin. Resolves to the blob's path.
 */
async function packLayer(name: string, tarFile: string): Promise<string> {
  const srcFifo = path.join(work, `${name}.src.fifo`);
  const blobFifo = path.join(work, `${name}.blob.fifo`);
  execFileSync('mkfifo', [srcFifo, blobFifo]);
  const blob = path.join(work, `${name}.blob`);
  const reader = spawn('sh', ['-c', 'cat "$1" > "$2"', 'sh', blobFifo, blob], { stdio: 'ignore' });
  const writer = spawn('sh', ['-c', 'cat "$1" > "$2"', 'sh', tarFile, srcFifo], { stdio: 'ignore' });
  const builder = spawn(path.join(repoRoot, 'bin/nydus-image'), ['create', '--log-level', 'warn', '--prefetch-policy', 'fs', '--blob', blobFifo,
    '--whiteout-spec', 'none', '--fs-version', '6', '--type', 'tar-rafs', '--blob-inline-meta', '--features', 'blob-toc', srcFifo], { stdio: ['pipe', 'ignore', 'pipe'] });
  builder.stdin!.end('/');
  let stderr = '';
  builder.stderr!.on('data', (d) => (stderr += d));
  const exited = (p: ReturnType<typeof spawn>) => new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
  const [code] = await Promise.all([exited(builder), exited(reader), exited(writer)]);
  assert.equal(code, 0, `nydus-image create of ${name}: ${stderr}`);
  return blob;
}

interface Tail { sections: Array<[string, number, number]>; toc: Array<{ name: string; flags: number; offset: number }>; toc_digest: string | null }

function readTail(blob: string, out: string): Tail {
  return JSON.parse(execFileSync('python3', [path.join(repoRoot, 'test/helpers/nydus-blob-tail.py'), blob, out], { encoding: 'utf8' }));
}

test('root-kernel: layers packed as nydus-snapshotter\'s converter packs them (--blob-inline-meta --features blob-toc, FIFOs): its reading of the blob, its unpack and merge, and the kernel\'s mounts agree with GNU tar', async () => {
  const lowerDir = path.join(work, 'lower');
  makeRichTree(lowerDir, { bigDirEntries: 50 });
  fs.writeFileSync(path.join(lowerDir, 'big.bin'), prand(3 << 20, 11));
  const upperDir = path.join(work, 'upper');
  fs.mkdirSync(path.join(upperDir, 'added'), { recursive: true });
  fs.writeFileSync(path.join(upperDir, 'added', 'new.bin'), prand(200_000, 12));
  fs.writeFileSync(path.join(upperDir, 'big.bin'), prand(1 << 20, 13));
  const layers = [gnuTar('lower', lowerDir), gnuTar('upper', upperDir)];

  const boots: string[] = [];
  const digests: string[] = [];
  const tocDigests: string[] = [];
  const sizes: number[] = [];
  const blobDir = path.join(work, 'blobs');
  fs.mkdirSync(blobDir);
  for (const [i, tarFile] of layers.entries()) {
    const blob = await packLayer(`layer${i}`, tarFile);
    const out = path.join(work, `layer${i}-entries`);
    const tail = readTail(blob, out);
    assert.deepEqual(tail.sections.map(([name]) => name), ['rafs.blob.toc', 'image.boot', 'blob.digest', 'blob.meta', 'image.blob'], 'the sections, walked from the end');
    assert.deepEqual(tail.toc.map((e) => e.name), ['image.blob', 'blob.meta', 'blob.meta.header', 'blob.digest', 'image.boot'], 'the TOC entries, in nydus-image\'s order');
    assert.equal(tail.toc.find((e) => e.name === 'image.boot')!.flags, 2, 'the bootstrap is zstd-compressed, as nydus-image stores it');
    // Each section the TOC names is where the tar header walk found it.
    for (const [name, offset] of tail.sections) {
      if (name !== 'rafs.blob.toc') assert.equal(tail.toc.find((e) => e.name === name)?.offset, offset, `${name}: the TOC and the tar headers agree`);
    }
    const boot = path.join(out, 'image.boot');
    assert.equal(fs.readFileSync(boot).readUInt32LE(1024), 0xe0f5e1e2, 'the bootstrap taken out of the blob is an EROFS image');
    assert.equal(fs.readFileSync(path.join(out, 'blob.meta.header')).readUInt32LE(0), 0xb10bb10b, 'blob.meta.header is the blob meta header');
    // The layer's bootstrap names its blob by the placeholder: only a merge gives it an id.
    const alone = runCli('nydus-image', ['check', boot]);
    assert.equal(alone.status, 1);
    assert.match(alone.stderr, /placeholder of a bootstrap inlined in its blob .*--blob-digests/);
    // Back to a tar as the converter's Unpack does it: the bootstrap and the `image.blob` section (the
    // chunk data) taken out, then `nydus-image unpack --bootstrap <boot> --output <tar> --blob <data>`.
    const rawEntry = tail.toc.find((e) => e.name === 'image.blob') as unknown as { offset: number; compressed_size: number };
    const data = path.join(out, 'image.blob');
    fs.writeFileSync(data, fs.readFileSync(blob).subarray(rawEntry.offset, rawEntry.offset + rawEntry.compressed_size));
    const unpacked = path.join(work, `layer${i}-unpacked.tar`);
    mustRun('nydus-image', ['unpack', '--log-level', 'warn', '--bootstrap', boot, '--output', unpacked, '--blob', data]);
    const [fromLayer, fromNydus] = [`layer${i}-x`, `layer${i}-ux`].map((d) => path.join(work, d));
    for (const [t, d] of [[tarFile, fromLayer], [unpacked, fromNydus]]) {
      fs.mkdirSync(d);
      execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '--same-owner', '-xpf', t, '-C', d]);
    }
    assert.deepEqual(diffManifests(manifest(fromLayer), manifest(fromNydus)).slice(0, 20), [], `layer ${i} unpacked from its blob equals the layer`);
    digests.push(sha256File(blob));
    tocDigests.push(tail.toc_digest!);
    sizes.push(fs.statSync(blob).size);
    // The converter's Merge names each layer's bootstrap by the layer's digest (getLayerPath).
    const named = path.join(work, digests[i]);
    fs.copyFileSync(boot, named);
    boots.push(named);
    fs.renameSync(blob, path.join(blobDir, digests[i]));
  }

  // A layer bootstrap under another name, without ids given: no id for its blob, said so.
  const unnamed = runCli('nydus-image', ['merge', '--bootstrap', path.join(work, 'unnamed.boot'), path.join(work, 'layer0-entries', 'image.boot')]);
  assert.equal(unnamed.status, 1);
  assert.match(unnamed.stderr, /names it by a placeholder: name the bootstrap file by the blob's digest, or give --blob-digests/);
  // tool.Merge's command line: as nerdctl, buildkit and acceld convert (no ids, the bootstraps' names
  // give them), then as for --oci-ref layers (digests, sizes and TOC digests given).
  const merged = path.join(work, 'merged.boot');
  const json = path.join(work, 'merge-output.json');
  mustRun('nydus-image', ['merge', '--log-level', 'warn', '--prefetch-policy', 'fs', '--output-json', json, '--bootstrap', merged, ...boots], { input: '/' });
  assert.deepEqual(JSON.parse(fs.readFileSync(json, 'utf8')).blobs, digests, 'the merged image\'s blobs are the layers\' blobs, by their digests');
  const withIds = path.join(work, 'merged-ids.boot');
  mustRun('nydus-image', ['merge', '--log-level', 'warn', '--prefetch-policy', 'fs', '--bootstrap', withIds, ...boots.map((_, i) => path.join(work, `layer${i}-entries`, 'image.boot')),
    '--blob-digests', digests.join(','), '--blob-toc-digests', tocDigests.join(','), '--blob-sizes', sizes.join(',')], { input: '/' });
  const checked = mustRun('nydus-image', ['check', '-B', withIds, '-D', blobDir]).stdout;
  assert.doesNotMatch(checked, /fs-meta/, 'the merged image\'s blobs hold no bootstrap of its own: no INLINED_FS_META (nydusd would name them by the bootstrap file)');
  assert.match(checked, /toc/);
  // Every chunk read from the blobs and verified; each blob's chunk-info array found before its tar header and matched.
  mustRun('nydus-image', ['check', '-B', merged, '-D', blobDir]);

  const erofs = path.join(work, 'merged.erofs');
  mustRun('nydus-image', ['export', '--block', '-B', merged, '-D', blobDir, '-O', erofs]);
  execFileSync('fsck.erofs', [erofs], { stdio: 'pipe' });
  const expected = path.join(work, 'expected');
  fs.mkdirSync(expected);
  for (const tarFile of layers) execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '--same-owner', '-xpf', tarFile, '-C', expected]);
  const mnt = path.join(work, 'mnt');
  mounts.push(mnt);
  loopMount(erofs, mnt);
  try {
    assert.deepEqual(diffManifests(manifest(expected, { skipRootTimes: true }), manifest(mnt, { skipRootTimes: true })).slice(0, 20), [], 'the export, loop-mounted');
  } finally {
    umount(mnt);
  }
  // And lazily, nydusd reading the blobs (their tails and all) through fanotify on this kernel.
  const d = await startFanotifyDaemon(path.join(work, 'lazy'), { boot: merged, blobDir, blobId: digests[1] }, localfsBackend({ boot: merged, blobDir, blobId: digests[1] }), { daemons, mounts });
  assert.deepEqual(diffManifests(manifest(expected, { skipRootTimes: true }), manifest(d.mnt, { skipRootTimes: true })).slice(0, 20), [], 'the lazy mount');
  assert.equal((await apiRequest(d.sock, 'GET', `/api/v1/metrics/blobcache?blob_id=${digests[0]}`)).status, 200);
});

test('--inline-bootstrap from a directory (the converter without tar2rafs): the bootstrap, uncompressed, after the blob meta, no TOC; a layer without file data is a blob of its bootstrap alone', () => {
  const dir = path.join(work, 'dir-src');
  fs.mkdirSync(path.join(dir, 'd'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'd', 'f'), prand(100_000, 3));
  const blob = path.join(work, 'dir.blob');
  const boot = path.join(work, 'dir.boot');
  mustRun('nydus-image', ['create', '--log-level', 'warn', '--blob', blob, '-B', boot, '--source-type', 'directory', '--inline-bootstrap', '--repeatable', dir]);
  const tail = readTail(blob, path.join(work, 'dir-entries'));
  assert.deepEqual(tail.sections.map(([name]) => name), ['image.boot', 'blob.meta', 'image.blob']);
  assert.equal(tail.toc_digest, null);
  const [, at, size] = tail.sections[0];
  assert.ok(fs.readFileSync(blob).subarray(at, at + size).equals(fs.readFileSync(boot)), 'the inlined bootstrap is the one written beside it');

  const emptyDir = path.join(work, 'only-dirs');
  fs.mkdirSync(path.join(emptyDir, 'a', 'b'), { recursive: true });
  const emptyTar = gnuTar('only-dirs', emptyDir);
  const emptyBlob = path.join(work, 'only-dirs.blob');
  mustRun('nydus-image', ['create', '--log-level', 'warn', '--blob', emptyBlob, '--type', 'tar-rafs', '--blob-inline-meta', '--features', 'blob-toc', emptyTar]);
  const emptyTail = readTail(emptyBlob, path.join(work, 'only-dirs-entries'));
  assert.deepEqual(emptyTail.sections.map(([name]) => name), ['rafs.blob.toc', 'image.boot']);
  assert.deepEqual(JSON.parse(mustRun('nydus-image', ['inspect', path.join(work, 'only-dirs-entries', 'image.boot'), '-R', 'blobs']).stdout), [], 'its bootstrap has no blob');

  for (const [args, why] of [
    [['--type', 'tar-rafs', emptyTar], /--bootstrap\/-B is needed \(or --blob-inline-meta/],
    [['--blob-inline-meta', '--type', 'tar-rafs', emptyTar], /give --blob or --blob-dir/],
    [['--blob', emptyBlob, '--blob-inline-meta', '--features', 'blob-toc,encrypt', '--type', 'tar-rafs', emptyTar], /unsupported feature "encrypt"; supported: blob-toc/],
  ] as const) {
    const r = runCli('nydus-image', ['create', ...args]);
    assert.equal(r.status, 1, args.join(' '));
    assert.match(r.stderr, why);
  }
});
