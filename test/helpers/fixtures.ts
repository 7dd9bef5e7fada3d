/** Test fixtures: a source tree holding every kind of entry the builder must carry over exactly. */
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { setXattr } from '../../native/xattr/index.ts';
import { createImage } from '../../src/builder/create.ts';

export function tmpDir(prefix: string): string {
  return fs.mkdtempSync(path.join(process.env.NYDUS_TEST_TMP ?? '/var/tmp', `nydus-ts-${prefix}-`));
}

/**
 * Fills the rest of the disk `dir` is on with a file, in writes of `block` bytes until ENOSPC;
 * returns its path (removed to make room again).
 */
export function fillDisk(dir: string, block = 16384): string {
  const filler = path.join(dir, 'filler');
  const fd = fs.openSync(filler, 'w');
  try {
    for (;;) fs.writeSync(fd, Buffer.alloc(block, 1));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  } finally {
    fs.closeSync(fd);
  }
  return filler;
}

function sh(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
}

/** Deterministic pseudo-random bytes (so failures reproduce). */
export function prand(size: number, seed: number): Buffer {
  const out = Buffer.alloc(size);
  let off = 0;
  let counter = 0;
  while (off < size) {
    const block = crypto.createHash('sha256').update(`${seed}:${counter++}`).digest();
    off += block.copy(out, off);
  }
  return out;
}

function touchNs(p: string, sec: number, nsec: number): void {
  sh('touch', ['-h', '-d', `@${sec}.${String(nsec).padStart(9, '0')}`, p]);
}

export interface FixtureOptions {
  /** Add a sparse file larger than 4 GiB (slow-ish: the builder reads it all). */
  huge?: boolean;
  /** Entries in the big directory. */
  bigDirEntries?: number;
}

/** Builds the rich tree; returns its root. Needs root (devices, ownership, trusted.* xattrs). */
export function makeRichTree(root: string, opts: FixtureOptions = {}): string {
  fs.mkdirSync(root, { recursive: true });
  const p = (...a: string[]) => path.join(root, ...a);
  // Regular files of many sizes.
  fs.writeFileSync(p('empty'), '');
  fs.writeFileSync(p('tiny'), 'x');
  fs.writeFileSync(p('block-exact'), prand(4096, 1));
  fs.writeFileSync(p('multi-chunk'), prand(3 * 1024 * 1024 + 12345, 2));
  // Identical content twice: stored once.
  const dup = prand(2 * 1024 * 1024, 3);
  fs.writeFileSync(p('dup-a'), dup);
  fs.writeFileSync(p('dup-b'), dup);
  fs.writeFileSync(p('compressible'), Buffer.alloc(1500000, 'nydus-ts '));
  if (opts.huge) {
    const fd = fs.openSync(p('sparse-huge'), 'w');
    fs.writeSync(fd, Buffer.from('head'), 0, 4, 0);
    fs.writeSync(fd, prand(5000, 4), 0, 5000, 4 * 1024 * 1024 * 1024 + 777);
    fs.closeSync(fd);
  }
  // Directories: empty, big, deep.
  fs.mkdirSync(p('empty-dir'));
  fs.mkdirSync(p('big-dir'));
  const n = opts.bigDirEntries ?? 10000;
  for (let i = 0; i < n; i++) fs.writeFileSync(p('big-dir', `entry-${String(i).padStart(5, '0')}-${'n'.repeat(i % 40)}`), i % 97 === 0 ? `${i}` : '');
  let deep = p('deep');
  for (let i = 0; i < 64; i++) deep = path.join(deep, `d${i}`);
  fs.mkdirSync(deep, { recursive: true });
  fs.writeFileSync(path.join(deep, 'leaf'), 'deep leaf\n');
  // Symlinks.
  fs.symlinkSync('tiny', p('link-short'));
  fs.symlinkSync('/' + 'a/'.repeat(2045) + 'endx', p('link-4095'));
  fs.symlinkSync('dangling-target', p('link-dangling'));
  // Hardlinks.
  fs.writeFileSync(p('hard-1'), 'shared inode\n');
  fs.linkSync(p('hard-1'), p('hard-2'));
  fs.mkdirSync(p('sub'));
  fs.linkSync(p('hard-1'), p('sub', 'hard-3'));
  // Special files.
  sh('mknod', [p('chr'), 'c', '1', '3']);
  sh('mknod', [p('blk'), 'b', '259', '70000']);
  sh('mkfifo', [p('fifo')]);
  sh('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', p('sock')]);
  // Permission bits and owners.
  fs.writeFileSync(p('setuid'), '#!/bin/sh\n');
  fs.chmodSync(p('setuid'), 0o4755);
  fs.mkdirSync(p('setgid-dir'));
  fs.chmodSync(p('setgid-dir'), 0o2775);
  fs.mkdirSync(p('sticky'));
  fs.chmodSync(p('sticky'), 0o1777);
  fs.writeFileSync(p('no-perms'), 'secret');
  fs.chmodSync(p('no-perms'), 0);
  fs.writeFileSync(p('big-ids'), 'owned');
  fs.chownSync(p('big-ids'), 70000, 4000000000);
  fs.lchownSync(p('link-short'), 1234, 5678);
  // Xattrs, including a binary capability and a long value.
  setXattr(p('tiny'), 'user.comment', Buffer.from('hello xattr'));
  setXattr(p('tiny'), 'trusted.overlay.opaque', Buffer.from('y'));
  setXattr(p('setuid'), 'security.capability', Buffer.from('0100000200200000000000000000000000000000', 'hex'));
  setXattr(p('sub'), 'user.long', prand(2000, 5));
  setXattr(p('empty'), 'user.empty-value', Buffer.alloc(0));
  // Names: not UTF-8, 255 bytes, odd characters.
  fs.writeFileSync(Buffer.concat([Buffer.from(root + '/'), Buffer.from([0x6e, 0xff, 0xfe, 0x80, 0x61])]), 'latin name');
  fs.writeFileSync(p('l'.repeat(255)), 'long name');
  fs.writeFileSync(p('space and\ttab'), 'odd');
  // Timestamps with nanoseconds (set last, children before parents).
  touchNs(p('tiny'), 1700000000, 123456789);
  touchNs(p('multi-chunk'), 86400, 999999999);
  touchNs(p('link-short'), 1600000000, 1);
  touchNs(p('sub'), 1650000000, 500);
  touchNs(p('empty-dir'), 0, 0);
  return root;
}

/**
 * The image of issue 10 item 3, heavy to register for its size: 3,000 hardlinks to one 64 MiB file
 * with 4 KiB chunks (a 192 KiB bootstrap naming 16,384 chunks 3,000 times). Built under `dir`.
 */
export function hardlinkHeavyImage(dir: string): { bootstrap: string; blobDir: string } {
  const src = path.join(dir, 'hl-src');
  fs.mkdirSync(src, { recursive: true });
  fs.writeFileSync(path.join(src, 'f'), prand(64 << 20, 3));
  for (let i = 1; i < 3000; i++) fs.linkSync(path.join(src, 'f'), path.join(src, `l${i}`));
  const bootstrap = path.join(dir, 'hl.boot');
  const blobDir = path.join(dir, 'hl-blobs');
  createImage({ source: src, bootstrap, blobDir, chunkSize: 0x1000, compressor: 'none', digester: 'blake3' });
  fs.rmSync(src, { recursive: true });
  return { bootstrap, blobDir };
}
