/**
 * A multi-layer OCI image made by independent tools: umoci builds the layout (its repack writes the
 * `.wh.` whiteouts of what a layer deletes), skopeo pushes it to a registry.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { setXattr } from '../../native/xattr/index.ts';
import { prand } from './fixtures.ts';
import { requireTool } from './registry.ts';

function run(cmd: string, ...args: string[]): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
}

/**
 * Two layers. The base: files (one of several chunks), a directory tree, a symlink, a binary user xattr,
 * a fifo. The second deletes a file and a directory, adds a hardlink group, a symlink, changes a
 * file and an xattr. Returns the layout and tag (`two`).
 */
export function umociTwoLayerImage(work: string): { layout: string; tag: string } {
  requireTool('umoci', 'umoci');
  const layout = path.join(work, 'oci');
  const bundle = path.join(work, 'bundle');
  const rootfs = path.join(bundle, 'rootfs');
  run('umoci', 'init', '--layout', layout);
  run('umoci', 'new', '--image', `${layout}:base`);
  run('umoci', 'unpack', '--image', `${layout}:base`, bundle);
  fs.mkdirSync(path.join(rootfs, 'etc'));
  fs.writeFileSync(path.join(rootfs, 'etc', 'hello'), 'hello\n');
  fs.writeFileSync(path.join(rootfs, 'big'), prand(2_500_000, 31));
  fs.writeFileSync(path.join(rootfs, 'gone'), 'to be deleted\n');
  fs.mkdirSync(path.join(rootfs, 'gonedir', 'sub'), { recursive: true });
  fs.writeFileSync(path.join(rootfs, 'gonedir', 'sub', 'f'), 'deleted with its directory\n');
  fs.writeFileSync(path.join(rootfs, 'tagged'), 'has an xattr\n');
  setXattr(path.join(rootfs, 'tagged'), 'user.bin', Buffer.from([0x00, 0xff, 0x10, 0xfe]));
  fs.symlinkSync('etc/hello', path.join(rootfs, 'link'));
  fs.chmodSync(path.join(rootfs, 'etc', 'hello'), 0o640);
  fs.chownSync(path.join(rootfs, 'etc', 'hello'), 1234, 5678);
  run('mkfifo', path.join(rootfs, 'fifo'));
  run('umoci', 'repack', '--image', `${layout}:one`, bundle);
  fs.rmSync(bundle, { recursive: true });
  run('umoci', 'unpack', '--image', `${layout}:one`, bundle);
  fs.rmSync(path.join(rootfs, 'gone'));
  fs.rmSync(path.join(rootfs, 'gonedir'), { recursive: true });
  fs.writeFileSync(path.join(rootfs, 'h1'), prand(300_000, 32));
  fs.linkSync(path.join(rootfs, 'h1'), path.join(rootfs, 'h2'));
  fs.mkdirSync(path.join(rootfs, 'd'));
  fs.linkSync(path.join(rootfs, 'h1'), path.join(rootfs, 'd', 'h3'));
  fs.symlinkSync('../big', path.join(rootfs, 'd', 'biglink'));
  fs.writeFileSync(path.join(rootfs, 'etc', 'hello'), 'hello again\n');
  setXattr(path.join(rootfs, 'tagged'), 'user.second', Buffer.from('layer two'));
  run('umoci', 'repack', '--image', `${layout}:two`, bundle);
  fs.rmSync(bundle, { recursive: true });
  return { layout, tag: 'two' };
}

/** Pushes `oci:<layout>:<tag>` to `docker://<dest>` with skopeo, as an OCI or a Docker schema 2 manifest. */
export function skopeoPush(layout: string, tag: string, dest: string, format: 'oci' | 'v2s2' = 'oci'): void {
  requireTool('skopeo', 'skopeo');
  run('skopeo', 'copy', '--quiet', '--dest-tls-verify=false', '--format', format, `oci:${layout}:${tag}`, `docker://${dest}`);
}

/** `umoci unpack` of `<layout>:<tag>`: the OCI runtime's view of the image, whiteouts applied. */
export function umociUnpack(layout: string, tag: string, bundle: string): string {
  run('umoci', 'unpack', '--image', `${layout}:${tag}`, bundle);
  return path.join(bundle, 'rootfs');
}
