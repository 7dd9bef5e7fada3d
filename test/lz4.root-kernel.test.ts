/**
 * Chunks compressed as raw LZ4 blocks (`--compressor lz4_block`: nerdctl's default for `image convert
 * --nydus`, and nydus-image's before 2.2), through liblz4: built, checked, exported and loop-mounted by
 * this machine's kernel, mounted lazily through nydusd (chunks decompressed and verified in the addon),
 * and a corrupt block is an I/O error for its file only.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { makeRichTree, prand, tmpDir } from './helpers/fixtures.ts';
import { manifest, diffManifests } from './helpers/manifest.ts';
import { loopMount, umount } from './helpers/mount.ts';
import { mustRun } from './helpers/cli.ts';
import { cleanUpDaemons, localfsBackend, startFanotifyDaemon } from './helpers/fanotify-daemon.ts';

const work = tmpDir('lz4');
const mounts: string[] = [];
const daemons: ChildProcess[] = [];
after(() => cleanUpDaemons(work, { daemons, mounts }));

test('root-kernel: an lz4_block image reads as its source through the kernel (export, loop mount) and through nydusd (lazy mount); a corrupt block is EIO for its file only', async () => {
  const src = path.join(work, 'src');
  makeRichTree(src, { bigDirEntries: 20 });
  const text = Buffer.from('lz4 compresses this line well\n'.repeat(100_000));
  fs.writeFileSync(path.join(src, 'text.txt'), text);
  fs.writeFileSync(path.join(src, 'victim.txt'), Buffer.from('a chunk to corrupt\n'.repeat(50_000)));
  fs.writeFileSync(path.join(src, 'random.bin'), prand(300_000, 5));
  const boot = path.join(work, 'image.boot');
  const blobDir = path.join(work, 'blobs');
  mustRun('nydus-image', ['create', '--compressor', 'lz4_block', '--chunk-size', '0x100000', '-B', boot, '-D', blobDir, src]);
  const blobId = fs.readdirSync(blobDir)[0];
  const chunks = JSON.parse(mustRun('nydus-image', ['inspect', '-B', boot, '-R', 'chunks']).stdout) as Array<{ path: string; chunks: Array<{ compressed_offset: number; compressed_size: number; uncompressed_size: number }> }>;
  const stored = chunks.find((f) => f.path === '/text.txt')!.chunks.reduce((n, c) => n + c.compressed_size, 0);
  assert.ok(stored < text.length / 10, `the text file is stored compressed (${stored} bytes for ${text.length})`);
  assert.match(mustRun('nydus-image', ['check', boot, '-D', blobDir]).stdout, /metadata is valid/);

  const erofs = path.join(work, 'image.erofs');
  mustRun('nydus-image', ['export', '--block', '-B', boot, '-D', blobDir, '-O', erofs]);
  execFileSync('fsck.erofs', [erofs], { stdio: 'pipe' });
  const mnt = path.join(work, 'mnt');
  mounts.push(mnt);
  loopMount(erofs, mnt);
  try {
    assert.deepEqual(diffManifests(manifest(src), manifest(mnt)).slice(0, 20), [], 'the export, loop-mounted');
  } finally {
    umount(mnt);
  }

  const d = await startFanotifyDaemon(path.join(work, 'lazy'), { boot, blobDir, blobId }, localfsBackend({ boot, blobDir, blobId }), { daemons, mounts });
  assert.deepEqual(diffManifests(manifest(src), manifest(d.mnt)).slice(0, 20), [], 'the lazy mount');

  // A copy of the image whose victim.txt chunk has a byte flipped in the middle of its LZ4 block.
  const victim = chunks.find((f) => f.path === '/victim.txt')!.chunks[0];
  assert.ok(victim.compressed_size < victim.uncompressed_size, 'the victim chunk is compressed');
  const badDir = path.join(work, 'bad-blobs');
  fs.mkdirSync(badDir);
  const bad = Buffer.from(fs.readFileSync(path.join(blobDir, blobId)));
  bad[victim.compressed_offset + Math.floor(victim.compressed_size / 2)] ^= 0xff;
  fs.writeFileSync(path.join(badDir, blobId), bad);
  const b = await startFanotifyDaemon(path.join(work, 'bad'), { boot, blobDir: badDir, blobId }, localfsBackend({ boot, blobDir: badDir, blobId }), { daemons, mounts });
  const read = spawnSync('cat', [path.join(b.mnt, 'victim.txt')], { encoding: 'utf8' });
  assert.notEqual(read.status, 0);
  assert.match(read.stderr, /Input\/output error/);
  assert.ok(fs.readFileSync(path.join(b.mnt, 'random.bin')).equals(fs.readFileSync(path.join(src, 'random.bin'))), 'another file reads right');
  const check = spawnSync(path.join(process.cwd(), 'bin/nydus-image'), ['check', boot, '-D', badDir], { encoding: 'utf8' });
  assert.equal(check.status, 1);
  assert.match(check.stderr, /lz4 decompression failed|digest mismatch/);
});
