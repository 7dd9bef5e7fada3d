/** Mounting helpers for tests that ask the host kernel (needs root). */
import fs from 'node:fs';
import { execFileSync } from 'node:child_process';

export function loopMount(image: string, dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('mount', ['-t', 'erofs', '-o', 'loop,ro', image, dir], { stdio: 'pipe' });
}

/**
 * A true file-backed EROFS mount: mount(2) with the bootstrap path as source and each blob as a
 * `device=`, in device table order. util-linux would put a loop device under a regular file, so call
 * mount(2) directly.
 */
export function fileBackedMount(bootstrap: string, blobs: string | string[], dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('python3', ['-c', `
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
src, target, data = (a.encode() for a in sys.argv[1:4])
if libc.mount(src, target, b"erofs", 1, data) != 0:
    e = ctypes.get_errno()
    sys.exit("mount(2) failed: " + os.strerror(e))
`, fs.realpathSync(bootstrap), dir, [blobs].flat().map((b) => `device=${fs.realpathSync(b)}`).join(',')], { stdio: 'pipe' });
}

export function umount(dir: string): void {
  try {
    execFileSync('umount', [dir], { stdio: 'pipe' });
  } catch {
    execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
  }
}
