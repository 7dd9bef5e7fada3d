/**
 * The kernel as oracle for what the validation work changed on disk: an exported image with a hole
 * reads the hole as zeros, and mtimes before 1970 and after 2106 read back as the source had them,
 * from the bootstrap itself (file-backed mount) and from its export (loop mount).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { EROFS_NULL_ADDR } from '../erofs/chunk.ts';
import { createImage } from '../src/builder/create.ts';
import { exportBlock } from '../src/image/export-block.ts';
import { prand, tmpDir } from './helpers/fixtures.ts';
import { fileBackedMount, loopMount, umount } from './helpers/mount.ts';
import { chunkIndexOffset } from './helpers/image-fields.ts';

const work = tmpDir('validate-kernel');
const mounts: string[] = [];
after(() => {
  for (const m of mounts) umount(m);
  fs.rmSync(work, { recursive: true, force: true });
});

function build(name: string, fill: (dir: string) => void, compressor: 'zstd' | 'none') {
  const src = path.join(work, `${name}-src`);
  fs.mkdirSync(src);
  fill(src);
  const boot = path.join(work, `${name}.boot`);
  const blobDir = path.join(work, `${name}-blobs`);
  const r = createImage({ source: src, bootstrap: boot, blobDir, chunkSize: 0x1000, compressor, digester: 'blake3' });
  return { src, boot, blobDir, blob: r.blob!.path };
}

test('export of a file with a hole: the kernel reads the hole as zeros and the rest as the file', async () => {
  const data = prand(5 * 4096 + 77, 11);
  const { boot, blobDir } = build('hole', (d) => fs.writeFileSync(path.join(d, 'big'), data), 'zstd');
  const b = fs.readFileSync(boot);
  b.writeUInt32LE(EROFS_NULL_ADDR, chunkIndexOffset(b, '/big', 2) + 4);
  const holed = path.join(work, 'holed.boot');
  fs.writeFileSync(holed, b);
  const img = path.join(work, 'holed.img');
  await exportBlock({ bootstrap: holed, blobDir, output: img });
  const mnt = path.join(work, 'm-hole');
  loopMount(img, mnt);
  mounts.push(mnt);
  const want = Buffer.from(data);
  want.fill(0, 2 * 4096, 3 * 4096);
  assert.ok(fs.readFileSync(path.join(mnt, 'big')).equals(want));
});

test('mtimes before 1970 and after 2106 read back through the kernel as the source had them', async () => {
  const stamps: Array<[string, string]> = [['old', '-86400.25'], ['older', '-1.000000001'], ['epoch', '0'], ['future', '4294967301.5'], ['far', '17179869184.123456789']];
  const { src, boot, blob } = build('times', (d) => {
    for (const [name, stamp] of stamps) {
      fs.writeFileSync(path.join(d, name), name);
      execFileSync('touch', ['-d', `@${stamp}`, path.join(d, name)]);
    }
  }, 'none');
  const direct = path.join(work, 'm-times');
  fileBackedMount(boot, blob, direct);
  mounts.push(direct);
  const img = path.join(work, 'times.img');
  await exportBlock({ bootstrap: boot, blobPaths: [blob], output: img });
  const loop = path.join(work, 'm-times-loop');
  loopMount(img, loop);
  mounts.push(loop);
  for (const [name] of stamps) {
    const want = fs.statSync(path.join(src, name), { bigint: true }).mtimeNs;
    assert.equal(fs.statSync(path.join(direct, name), { bigint: true }).mtimeNs, want, `${name} (file-backed bootstrap)`);
    assert.equal(fs.statSync(path.join(loop, name), { bigint: true }).mtimeNs, want, `${name} (exported image)`);
  }
});
