/**
 * nydusify convert end to end against the kernel: an image made by umoci (whiteouts written by umoci
 * itself, hardlinks, symlinks, xattrs, owners, a fifo) pushed by skopeo is converted through a real
 * registry; the pushed bootstrap (taken out of its layer by GNU tar) and blobs, exported with
 * `nydus-image export --block` and loop-mounted by the kernel, equal `umoci unpack` of the source entry
 * by entry.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { RegistryClient, type ImageManifest } from '../src/registry/index.ts';
import { mustRun } from './helpers/cli.ts';
import { tmpDir } from './helpers/fixtures.ts';
import { diffManifests, manifest } from './helpers/manifest.ts';
import { loopMount, umount } from './helpers/mount.ts';
import { startRegistry, type RegistryServer } from './helpers/registry.ts';
import { skopeoPush, umociTwoLayerImage, umociUnpack } from './helpers/oci-image.ts';

const work = tmpDir('nydusify-kernel');
let reg: RegistryServer;
const client = new RegistryClient({ plainHttp: true });
let layout: string;

before(async () => {
  reg = await startRegistry();
  ({ layout } = umociTwoLayerImage(work));
  skopeoPush(layout, 'two', `${reg.host}/src:two`);
});

after(async () => {
  await client.close();
  await reg?.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

for (const compressor of ['zstd', 'none']) {
  test(`root-kernel: the converted image (${compressor}) mounts equal to umoci unpack of the source`, async () => {
    const target = `${reg.host}/dst:${compressor}`;
    // bin/nydusify runs synchronously here: the registry is another process.
    mustRun('nydusify', ['convert', '--plain-http', '--work-dir', path.join(work, 'tmp'), '--compressor', compressor, '--source', `${reg.host}/src:two`, '--target', target]);
    const m = (await client.getManifest(target)).json as ImageManifest;
    const dir = path.join(work, compressor);
    const blobDir = path.join(dir, 'blobs');
    fs.mkdirSync(blobDir, { recursive: true });
    for (const l of m.layers.slice(0, -1)) fs.writeFileSync(path.join(blobDir, l.digest.slice('sha256:'.length)), await client.getBlob(`${reg.host}/dst`, l.digest));
    const bootLayer = path.join(dir, 'bootstrap.tar.gz');
    fs.writeFileSync(bootLayer, await client.getBlob(`${reg.host}/dst`, m.layers[m.layers.length - 1].digest));
    execFileSync('tar', ['-xzf', bootLayer, '-C', dir, 'image/image.boot']);
    const img = path.join(dir, 'image.erofs');
    mustRun('nydus-image', ['export', '--block', '-B', path.join(dir, 'image', 'image.boot'), '-D', blobDir, '-O', img]);
    execFileSync('fsck.erofs', [img], { stdio: 'pipe' });

    const hex = (p: string) => `/${p.split('/').map((x) => Buffer.from(x).toString('hex')).join('/')}`;
    const want = manifest(umociUnpack(layout, 'two', path.join(dir, 'bundle')), { skipRootTimes: true });
    // umoci's second layer holds etc/hello without an etc/ entry: the /etc it implies keeps the lower
    // layer's attributes, its time too, as umoci unpacks it (the manifest compares them).
    assert.notEqual(JSON.parse(want.get(hex('etc'))!).mtime, '0');
    const mnt = path.join(dir, 'mnt');
    loopMount(img, mnt);
    try {
      const got = manifest(mnt, { skipRootTimes: true });
      assert.deepEqual(diffManifests(want, got), []);
      // The fixture has what the test claims: deletions applied, a hardlink group, xattrs.
      assert.equal(got.has(hex('gone')), false);
      assert.equal(got.has(hex('gonedir')), false);
      assert.equal(JSON.parse(got.get(hex('h1'))!).nlink, '3');
      assert.match(got.get(hex('tagged'))!, /user\.bin/);
    } finally {
      umount(mnt);
    }
  });
}
