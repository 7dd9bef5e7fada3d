/**
 * `nydus-image create --prefetch-policy fs`: the listed files' data first in the blob, in list order
 * (a directory: everything below it in directory order), the rest after in the order of a build
 * without a list; for a directory and for a tar layer of the same tree. Judged by the chunk table,
 * `check` (every chunk's digest), fsck.erofs and the kernel (loop mount of the export).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { makeRichTree, prand, tmpDir } from './helpers/fixtures.ts';
import { manifest, diffManifests } from './helpers/manifest.ts';
import { loopMount, umount } from './helpers/mount.ts';
import { mustRun } from './helpers/cli.ts';
import { assertChunksFirst, chunksByPath } from './helpers/blob-order.ts';

const work = tmpDir('prefetch-layout');
const src = path.join(work, 'src');
const mounts: string[] = [];

/** The list as a user gives it (a directory, files, a path twice, a trailing slash), and the files it stands for, in order. */
const LIST = ['/sub/', '/z-late/two', '/multi-chunk', '/dup-b', '/deep/d0/d1', '/z-late/two'];
const deepLeaf = '/deep/' + Array.from({ length: 64 }, (_, i) => `d${i}`).join('/') + '/leaf';
const FILES = ['/sub/hard-3', '/sub/late', '/z-late/two', '/multi-chunk', '/dup-b', deepLeaf];

interface Built { boot: string; blobDir: string; blobId: string }

function build(name: string, source: string, args: string[], list?: string[]): Built {
  const blobDir = path.join(work, `${name}-blobs`);
  const boot = path.join(work, `${name}.boot`);
  const prefetch = list ? ['--prefetch-policy', 'fs'] : [];
  mustRun('nydus-image', ['create', '-B', boot, '-D', blobDir, ...prefetch, ...args, source], { input: list ? list.join('\n') + '\n' : undefined });
  return { boot, blobDir, blobId: fs.readdirSync(blobDir)[0] };
}

before(() => {
  makeRichTree(src, { bigDirEntries: 200 });
  // Files a directory walk reaches last, and one below a listed directory that only it holds.
  fs.mkdirSync(path.join(src, 'z-late'));
  fs.writeFileSync(path.join(src, 'z-late', 'one'), prand(300_000, 11));
  fs.writeFileSync(path.join(src, 'z-late', 'two'), prand(1_200_000, 12));
  fs.writeFileSync(path.join(src, 'sub', 'late'), prand(70_000, 13));
});

after(() => {
  for (const m of mounts) try { umount(m); } catch { /* not mounted */ }
  fs.rmSync(work, { recursive: true, force: true });
});

/** The digests of a build's chunks in blob order. */
function blobOrder(boot: string): string[] {
  const all = [...chunksByPath(boot).values()].flat().sort((a, b) => a.chunk_index - b.chunk_index);
  return [...new Map(all.map((c) => [c.chunk_index, c.digest])).values()];
}

/** Exports the image as one EROFS file, checks it with fsck.erofs, loop-mounts it and compares it with `want`. */
function assertExportMountsAs(name: string, built: Built, want: Map<string, string>, opts: { skipRootTimes?: boolean } = {}): void {
  const img = path.join(work, `${name}.erofs`);
  mustRun('nydus-image', ['export', '--block', '-B', built.boot, '-D', built.blobDir, '-O', img]);
  execFileSync('fsck.erofs', [img], { stdio: 'pipe' });
  const mnt = path.join(work, `mnt-${name}`);
  mounts.push(mnt);
  loopMount(img, mnt);
  try {
    assert.deepEqual(diffManifests(want, manifest(mnt, opts)).slice(0, 20), [], `the loop mount of ${name}'s export equals the source`);
  } finally {
    umount(mnt);
  }
}

/** The chunks after the listed ones keep the order of a build without a list. */
function assertRestInOrder(listed: string, plain: string, first: Array<{ digest: string }>): void {
  const firstSet = new Set(first.map((c) => c.digest));
  assert.deepEqual(blobOrder(listed).slice(first.length), blobOrder(plain).filter((d) => !firstSet.has(d)), 'the unlisted chunks follow in the order of a build without a list');
}

test('root-kernel: a directory built with a prefetch list has the listed files first; the image is whole (check, fsck.erofs, loop mount)', () => {
  const plain = build('plain', src, ['--compressor', 'zstd']);
  const listed = build('listed', src, ['--compressor', 'zstd'], LIST);
  assertRestInOrder(listed.boot, plain.boot, assertChunksFirst(listed.boot, FILES));
  // Dedup: the two copies of one content share chunks, stored once, at the listed copy's place.
  const chunks = chunksByPath(listed.boot);
  assert.deepEqual(chunks.get('/dup-a')!.map((c) => c.chunk_index), chunks.get('/dup-b')!.map((c) => c.chunk_index), 'identical files share their chunks');
  assert.equal(blobOrder(listed.boot).length, blobOrder(plain.boot).length, 'as many distinct chunks as without a list');
  // The prefetch table holds the listed paths in order.
  const table = JSON.parse(mustRun('nydus-image', ['inspect', '-B', listed.boot, '-R', 'prefetch']).stdout) as Array<{ path: string[] }>;
  assert.deepEqual(table.map((e) => e.path), [['/sub'], ['/z-late/two'], ['/multi-chunk'], ['/dup-b'], ['/deep/d0/d1']], 'the prefetch table lists the paths as given, each once (as nydus-image)');
  mustRun('nydus-image', ['check', '-B', listed.boot, '-D', listed.blobDir]);
  assertExportMountsAs('listed', listed, manifest(src));
});

test('root-kernel: an uncompressed directory build with a prefetch list mounts with its blob as device (fsck.erofs)', () => {
  const none = build('listed-none', src, ['--compressor', 'none'], LIST);
  assertChunksFirst(none.boot, FILES);
  execFileSync('fsck.erofs', [`--device=${path.join(none.blobDir, none.blobId)}`, none.boot], { stdio: 'pipe' });
  mustRun('nydus-image', ['check', '-B', none.boot, '-D', none.blobDir]);
});

test('root-kernel: a tar layer built with a prefetch list has the listed files first, the rest in entry order', () => {
  const tar = path.join(work, 'layer.tar');
  execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', src, '-cf', tar, '.'], { stdio: 'pipe' });
  const plain = build('tar-plain', tar, ['-t', 'tar-rafs', '--compressor', 'zstd']);
  const listed = build('tar-listed', tar, ['-t', 'tar-rafs', '--compressor', 'zstd'], LIST);
  assertRestInOrder(listed.boot, plain.boot, assertChunksFirst(listed.boot, FILES));
  mustRun('nydus-image', ['check', '-B', listed.boot, '-D', listed.blobDir]);
  // A tar holds no sockets, and its root's time is the tar's.
  const want = manifest(src, { skipRootTimes: true });
  want.delete('/' + Buffer.from('sock').toString('hex'));
  assertExportMountsAs('tar-listed', listed, want, { skipRootTimes: true });
});

test('prefetch paths the image does not hold, and relative ones, are left out with a warning naming them, as nydus-image does', () => {
  const blobDir = path.join(work, 'partial-blobs');
  const boot = path.join(work, 'partial.boot');
  const r = mustRun('nydus-image', ['create', '-B', boot, '-D', blobDir, '--prefetch-policy', 'fs', src],
    { input: '/multi-chunk\n/no/such/file\nsub\n/sub\n' });
  assert.match(r.stderr, /warning: prefetch path \/no\/such\/file is not in the image; left out of the prefetch table/);
  assert.match(r.stderr, /warning: prefetch path sub is not absolute; left out/);
  const table = JSON.parse(mustRun('nydus-image', ['inspect', boot, '-R', 'prefetch']).stdout) as Array<{ path: string[] }>;
  assert.deepEqual(table.map((e) => e.path), [['/multi-chunk'], ['/sub']]);
  mustRun('nydus-image', ['check', boot, '-D', blobDir]);
  // --log-level error: no warnings.
  const quiet = mustRun('nydus-image', ['create', '-B', path.join(work, 'partial-quiet.boot'), '-D', blobDir, '--prefetch-policy', 'fs', '--log-level', 'error', src],
    { input: '/no/such/file\n' });
  assert.equal(quiet.stderr, '');
});
