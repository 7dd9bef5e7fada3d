/**
 * A real distribution image converted end to end: the Debian bookworm minbase rootfs (debootstrap,
 * about 6,700 entries) as a one-layer OCI image made by umoci, pushed by skopeo to a docker-registry,
 * converted by `nydusify convert` and checked by `nydusify check` against its source. The pushed
 * bootstrap and blob, exported with `nydus-image export --block`, pass fsck.erofs and, loop-mounted by
 * the kernel, equal `umoci unpack` of the source entry by entry.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { RegistryClient, type ImageManifest } from '../src/registry/index.ts';
import { mustRun, repoRoot } from './helpers/cli.ts';
import { debianOciImage } from './helpers/debian-rootfs.ts';
import { tmpDir } from './helpers/fixtures.ts';
import { diffManifests, manifest } from './helpers/manifest.ts';
import { loopMount, umount } from './helpers/mount.ts';
import { requireTool, startRegistry, type RegistryServer } from './helpers/registry.ts';
import { skopeoPush } from './helpers/oci-image.ts';

const work = tmpDir('nydusify-debian');
let reg: RegistryServer;
const client = new RegistryClient({ plainHttp: true });
let image: { layout: string; tag: string };
const execFileAsync = promisify(execFile);

before(async () => {
  requireTool('fsck.erofs', 'erofs-utils');
  image = debianOciImage();
  reg = await startRegistry();
  skopeoPush(image.layout, image.tag, `${reg.host}/debian:${image.tag}`);
});

after(async () => {
  await client.close();
  await reg?.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

test('root-kernel: the Debian rootfs image converts, passes nydusify check and mounts equal to umoci unpack', async () => {
  const source = `${reg.host}/debian:${image.tag}`;
  const target = `${reg.host}/debian:${image.tag}-nydus`;
  mustRun('nydusify', ['convert', '--plain-http', '--work-dir', path.join(work, 'tmp'), '--source', source, '--target', target]);

  // Three independent steps at once, to keep the wall time down: nydusify check, the oracle's
  // unpack, and pulling and exporting the converted image.
  const checked = execFileAsync(path.join(repoRoot, 'bin/nydusify'), ['check', '--plain-http', '--work-dir', path.join(work, 'check'), '--source', source, '--target', target]);
  const bundle = path.join(work, 'bundle');
  const unpacked = execFileAsync('umoci', ['unpack', '--image', `${image.layout}:${image.tag}`, bundle]);
  const m = (await client.getManifest(target)).json as ImageManifest;
  assert.equal(m.layers.length, 2, 'one blob for the one layer, then the bootstrap');
  const blobDir = path.join(work, 'blobs');
  fs.mkdirSync(blobDir);
  const blob = m.layers[0].digest;
  fs.writeFileSync(path.join(blobDir, blob.slice('sha256:'.length)), await client.getBlob(`${reg.host}/debian`, blob));
  const bootLayer = path.join(work, 'bootstrap.tar.gz');
  fs.writeFileSync(bootLayer, await client.getBlob(`${reg.host}/debian`, m.layers[1].digest));
  execFileSync('tar', ['-xzf', bootLayer, '-C', work, 'image/image.boot']);
  const img = path.join(work, 'image.erofs');
  await execFileAsync(path.join(repoRoot, 'bin/nydus-image'), ['export', '--block', '-B', path.join(work, 'image', 'image.boot'), '-D', blobDir, '-O', img]);
  await execFileAsync('fsck.erofs', [img]);
  const check = await checked;
  assert.equal(check.stdout, '', 'nydusify check lists no problem');
  await unpacked;

  const want = manifest(path.join(bundle, 'rootfs'), { skipRootTimes: true });
  assert.ok(want.size > 5000, `the rootfs has ${want.size} entries`);
  const mnt = path.join(work, 'mnt');
  loopMount(img, mnt);
  try {
    assert.deepEqual(diffManifests(want, manifest(mnt, { skipRootTimes: true })), []);
  } finally {
    umount(mnt);
  }
});
