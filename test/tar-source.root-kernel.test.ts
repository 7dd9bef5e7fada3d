/**
 * Layer tars as builder sources, judged by independent tools (needs root: devices, owners, mounts).
 * GNU tar writes the tars in each of its formats from one rich tree and extracts each of them as the
 * oracle; `nydus-image create -t tar-rafs|targz-rafs` builds the image, `export --block` makes it one
 * EROFS image that the kernel mounts and fsck.erofs checks, and the mounted tree must equal GNU tar's
 * extraction: type, mode, owner, ns mtime, size, sha256, xattrs, link target, rdev, hardlinks.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { makeRichTree, prand, tmpDir } from './helpers/fixtures.ts';
import { manifest, diffManifests } from './helpers/manifest.ts';
import { loopMount, umount } from './helpers/mount.ts';
import { mustRun, repoRoot } from './helpers/cli.ts';

const work = tmpDir('tar-source');
const src = path.join(work, 'src');
const mounts: string[] = [];

function sh(cmd: string, args: string[], opts: { input?: Buffer } = {}): void {
  execFileSync(cmd, args, { stdio: [opts.input ? 'pipe' : 'ignore', 'ignore', 'pipe'], input: opts.input });
}

/** Adds to the rich tree what only tar makes hard: long names and links in every header form, sparse data. */
function addTarSpecifics(root: string): void {
  // A path over 255 bytes (pax path / GNU long name), a name over 100 bytes, a long hardlink name.
  const longDir = path.join(root, 'p'.repeat(120), 'q'.repeat(120));
  fs.mkdirSync(longDir, { recursive: true });
  fs.writeFileSync(path.join(longDir, 'r'.repeat(200)), 'long path\n');
  fs.linkSync(path.join(longDir, 'r'.repeat(200)), path.join(root, 'h'.repeat(150)));
  fs.symlinkSync(path.join('p'.repeat(120), 'q'.repeat(120), 'r'.repeat(200)), path.join(root, 'long-target'));
  // A sparse file: data islands around holes, a hole at the end.
  const fd = fs.openSync(path.join(root, 'sparse'), 'w');
  fs.writeSync(fd, prand(10000, 7), 0, 10000, 0);
  fs.writeSync(fd, prand(5000, 8), 0, 5000, 3 * 1024 * 1024 + 100);
  fs.writeSync(fd, prand(70000, 9), 0, 70000, 9 * 1024 * 1024);
  fs.ftruncateSync(fd, 12 * 1024 * 1024 + 3);
  fs.closeSync(fd);
  // GNU tar's --sparse only looks for holes in files whose blocks are fewer than their size.
  sh('touch', ['-h', '-d', '@1234567890.987654321', path.join(root, 'sparse')]);
}

/** Extracts `tarFile` with GNU tar as root keeps it: owners, modes, xattrs, times. */
function gnuExtract(tarFile: string, out: string): void {
  fs.mkdirSync(out);
  sh('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '--same-owner', '-xpf', tarFile, '-C', out]);
}

function build(name: string, type: string, source: string, opts: { stdin?: string; compressor?: string } = {}): { boot: string; blobDir: string } {
  const boot = path.join(work, `${name}.boot`);
  const blobDir = path.join(work, `${name}-blobs`);
  const args = ['create', '-t', type, '-B', boot, '-D', blobDir, '--compressor', opts.compressor ?? 'zstd', source];
  if (opts.stdin) {
    const r = spawnSync(path.join(repoRoot, 'bin/nydus-image'), args, { input: fs.readFileSync(opts.stdin), encoding: 'utf8', maxBuffer: 1 << 30 });
    assert.equal(r.status, 0, r.stderr);
  } else {
    mustRun('nydus-image', args);
  }
  return { boot, blobDir };
}

/** Builds from the tar, exports, fscks, mounts and compares with GNU tar's extraction of the same tar. */
/** Extracts with bsdtar (libarchive), which restores what it wrote itself. */
function bsdExtract(tarFile: string, out: string): void {
  fs.mkdirSync(out);
  sh('bsdtar', ['--xattrs', '--numeric-owner', '-xpf', tarFile, '-C', out]);
}

function assertImageEqualsExtraction(name: string, tarFile: string, type: string,
  opts: { stdin?: boolean; compressor?: string; skipRootTimes?: boolean; extract?: typeof gnuExtract } = {}): void {
  const img = build(name, type, opts.stdin ? '-' : tarFile, { stdin: opts.stdin ? tarFile : undefined, compressor: opts.compressor });
  const erofs = path.join(work, `${name}.erofs`);
  mustRun('nydus-image', ['export', '--block', '-B', img.boot, '-D', img.blobDir, '-O', erofs]);
  execFileSync('fsck.erofs', [erofs], { stdio: 'pipe' });
  const out = path.join(work, `${name}-extracted`);
  (opts.extract ?? gnuExtract)(tarFile, out);
  const mnt = path.join(work, 'mnt', name);
  mounts.push(mnt);
  loopMount(erofs, mnt);
  try {
    const diff = diffManifests(manifest(out, opts), manifest(mnt, opts));
    assert.deepEqual(diff.slice(0, 20), [], `${name}: the mounted image differs from the tar's extraction`);
  } finally {
    umount(mnt);
  }
}

/** Typeflags of every header block of a tar (data blocks may match by chance: enough to show a form is there). */
function typeflags(tarFile: string): Set<string> {
  const b = fs.readFileSync(tarFile);
  const out = new Set<string>();
  for (let off = 0; off + 512 <= b.length; off += 512) if (b.toString('latin1', off + 257, off + 262) === 'ustar') out.add(String.fromCharCode(b[off + 156]));
  return out;
}

/** The tar holds `what` (so the test exercises the form it is named after). */
function assertTarHolds(tarFile: string, what: { typeflag?: string; text?: string }): void {
  if (what.typeflag) assert.ok(typeflags(tarFile).has(what.typeflag), `${tarFile} has a '${what.typeflag}' header`);
  if (what.text) assert.ok(fs.readFileSync(tarFile).includes(what.text), `${tarFile} holds ${what.text}`);
}

function gnuTar(name: string, args: string[], dir = src): string {
  const file = path.join(work, `${name}.tar`);
  sh('tar', [...args, '--numeric-owner', '-C', dir, '-cf', file, '.']);
  return file;
}

before(() => {
  makeRichTree(src, { bigDirEntries: 300 });
  addTarSpecifics(src);
});

after(() => {
  for (const m of mounts) if (fs.existsSync(m)) try { umount(m); } catch { /* not mounted */ }
  fs.rmSync(work, { recursive: true, force: true });
});

test('root-kernel: pax tar with binary xattrs, ns mtimes, long names and links, devices, fifos, hardlinks', () => {
  const tarFile = gnuTar('pax', ['--format=pax', '--xattrs', '--xattrs-include=*']);
  assertTarHolds(tarFile, { text: 'SCHILY.xattr.security.capability=' });
  // The oracle does hold what this test is about.
  const out = path.join(work, 'check-pax');
  gnuExtract(tarFile, out);
  const m = manifest(out);
  assert.match(m.get(`/${Buffer.from('setuid').toString('hex')}`)!, /security\.capability=0100000200200000/);
  assert.match(m.get(`/${Buffer.from('tiny').toString('hex')}`)!, /"mtime":"1700000000123456789"/);
  assertImageEqualsExtraction('pax', tarFile, 'tar-rafs');
});

test('root-kernel: GNU format tar (long names and links as L/K records, base-256 ids)', () => {
  const tarFile = gnuTar('gnu', ['--format=gnu']);
  assertTarHolds(tarFile, { typeflag: 'L' });
  assertTarHolds(tarFile, { typeflag: 'K' });
  assertImageEqualsExtraction('gnu', tarFile, 'tar-rafs');
});

test('root-kernel: GNU format sparse entries (S) and pax sparse formats 0.0, 0.1 and 1.0', () => {
  const gnuSparse = gnuTar('gnu-sparse', ['--format=gnu', '--sparse']);
  assertTarHolds(gnuSparse, { typeflag: 'S' });
  assertImageEqualsExtraction('gnu-sparse', gnuSparse, 'tar-rafs');
  const dir = path.join(work, 'sparse-src');
  fs.mkdirSync(dir);
  fs.copyFileSync(path.join(src, 'sparse'), path.join(dir, 'sparse'));
  // A map longer than one header block (GNU's extension blocks, pax 1.0's multi-block map).
  const fd = fs.openSync(path.join(dir, 'many-holes'), 'w');
  for (let i = 0; i < 40; i++) fs.writeSync(fd, prand(100, 20 + i), 0, 100, i * 65536);
  fs.closeSync(fd);
  const manyHoles = gnuTar('gnu-many-holes', ['--format=gnu', '--sparse'], dir);
  assertImageEqualsExtraction('gnu-many-holes', manyHoles, 'tar-rafs');
  for (const v of ['0.0', '0.1', '1.0']) {
    const tarFile = gnuTar(`pax-sparse-${v}`, ['--format=pax', `--sparse-version=${v}`], dir);
    assertTarHolds(tarFile, { text: { '0.0': 'GNU.sparse.offset=', '0.1': 'GNU.sparse.map=', '1.0': 'GNU.sparse.major=1' }[v] });
    assertImageEqualsExtraction(`pax-sparse-${v.replace('.', '')}`, tarFile, 'tar-rafs', { compressor: 'none' });
  }
});

test('root-kernel: ustar (names split into prefix and name)', () => {
  const dir = path.join(work, 'ustar-src');
  const deep = path.join(dir, 'a'.repeat(90), 'b'.repeat(60));
  fs.mkdirSync(deep, { recursive: true });
  fs.writeFileSync(path.join(deep, 'c'.repeat(90)), prand(300000, 11));
  fs.writeFileSync(path.join(dir, 'hard'), 'linked');
  fs.linkSync(path.join(dir, 'hard'), path.join(dir, 'hard2'));
  fs.symlinkSync('hard', path.join(dir, 'sym'));
  sh('mknod', [path.join(dir, 'blk'), 'b', '8', '1']);
  sh('mkfifo', [path.join(dir, 'fifo')]);
  fs.chownSync(path.join(dir, 'hard'), 1000, 2000);
  assertImageEqualsExtraction('ustar', gnuTar('ustar', ['--format=ustar'], dir), 'tar-rafs');
});

test('root-kernel: gzip layer as targz-rafs from a file, and a plain layer from stdin', () => {
  const tarFile = gnuTar('pax-for-gz', ['--format=pax', '--xattrs', '--xattrs-include=*']);
  execFileSync('gzip', ['-k', '-6', tarFile]);
  // The oracle extracts the plain tar; the builder reads the gzip one.
  const img = build('targz', 'targz-rafs', `${tarFile}.gz`);
  const stdinImg = build('stdin', 'tar-rafs', '-', { stdin: tarFile });
  const out = path.join(work, 'gz-extracted');
  gnuExtract(tarFile, out);
  const want = manifest(out);
  for (const [name, b] of [['targz', img], ['stdin', stdinImg]] as const) {
    const erofs = path.join(work, `${name}.erofs`);
    mustRun('nydus-image', ['export', '--block', '-B', b.boot, '-D', b.blobDir, '-O', erofs]);
    execFileSync('fsck.erofs', [erofs], { stdio: 'pipe' });
    const mnt = path.join(work, 'mnt', name);
    mounts.push(mnt);
    loopMount(erofs, mnt);
    try {
      assert.deepEqual(diffManifests(want, manifest(mnt)).slice(0, 20), [], `${name} image differs from GNU tar's extraction`);
    } finally {
      umount(mnt);
    }
  }
});

test('root-kernel: entries repeated (last wins), directories after their contents', () => {
  const dir = path.join(work, 'order-src');
  fs.mkdirSync(path.join(dir, 'd', 'e'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'd', 'e', 'f'), 'in a directory listed after it\n');
  fs.writeFileSync(path.join(dir, 'g'), 'g1');
  fs.writeFileSync(path.join(dir, 'k'), 'first version\n');
  fs.chmodSync(path.join(dir, 'd'), 0o750);
  sh('touch', ['-d', '@1600000000.5', path.join(dir, 'd', 'e')]);
  sh('touch', ['-d', '@1600000001.25', path.join(dir, 'd')]);
  const tarFile = path.join(work, 'order.tar');
  // Contents before their directories, '.' last; then appended: k with new content and mode, g as a directory.
  sh('tar', ['--format=pax', '--no-recursion', '-C', dir, '-cf', tarFile, 'd/e/f', 'd/e', 'd', 'g', 'k', '.']);
  fs.writeFileSync(path.join(dir, 'k'), 'second, longer version\n');
  fs.chmodSync(path.join(dir, 'k'), 0o600);
  fs.rmSync(path.join(dir, 'g'));
  fs.mkdirSync(path.join(dir, 'g'));
  fs.writeFileSync(path.join(dir, 'g', 'inside'), 'x');
  sh('tar', ['--format=pax', '--no-recursion', '-C', dir, '-rf', tarFile, 'k', 'g', 'g/inside']);
  // Extraction changes the root's mtime after setting it (the appended entries): compare the rest.
  assertImageEqualsExtraction('order', tarFile, 'tar-rafs', { skipRootTimes: true });
});

test('root-kernel: bsdtar (libarchive) pax tars, with SCHILY records and with LIBARCHIVE (base64) xattr records only', () => {
  // libarchive writes both record kinds by default; with xattrheader=LIBARCHIVE only its base64 ones.
  // Its own extraction is the oracle (GNU tar leaves the directory times of these tars unset; bsdtar
  // leaves the root's).
  assert.equal(spawnSync('bsdtar', ['--version']).status, 0, 'bsdtar is needed: apt-get install libarchive-tools');
  const both = path.join(work, 'bsdtar.tar');
  sh('bsdtar', ['--format=pax', '--xattrs', '-C', src, '-cf', both, '.']);
  assertTarHolds(both, { text: 'LIBARCHIVE.xattr.security.capability=' });
  assertTarHolds(both, { text: 'SCHILY.xattr.security.capability=' });
  assertImageEqualsExtraction('bsdtar', both, 'tar-rafs', { extract: bsdExtract, skipRootTimes: true });
  const libOnly = path.join(work, 'bsdtar-lib.tar');
  sh('bsdtar', ['--format=pax', '--xattrs', '--options=pax:xattrheader=LIBARCHIVE', '-C', src, '-cf', libOnly, '.']);
  assert.ok(!fs.readFileSync(libOnly).includes('SCHILY.xattr'), 'no SCHILY records');
  assertImageEqualsExtraction('bsdtar-lib', libOnly, 'tar-rafs', { extract: bsdExtract, skipRootTimes: true });
});

test('root-kernel: a sparse file over 8 GiB (GNU base-256 real size, pax real size) keeps its size and data', () => {
  const dir = path.join(work, 'huge-src');
  fs.mkdirSync(dir);
  const size = 9 * 1024 ** 3 + 4321;
  const tail = prand(5000, 31);
  const fd = fs.openSync(path.join(dir, 'huge'), 'w');
  fs.writeSync(fd, Buffer.from('head'), 0, 4, 0);
  fs.writeSync(fd, tail, 0, tail.length, size - tail.length);
  fs.closeSync(fd);
  for (const format of ['gnu', 'pax']) {
    const tarFile = gnuTar(`huge-${format}`, [`--format=${format}`, '--sparse'], dir);
    assert.ok(fs.statSync(tarFile).size < 1 << 20, 'the tar holds the data islands only');
    assertTarHolds(tarFile, format === 'gnu' ? { typeflag: 'S' } : { text: 'GNU.sparse.realsize=' });
    const img = build(`huge-${format}`, 'tar-rafs', tarFile);
    const erofs = path.join(work, `huge-${format}.erofs`);
    mustRun('nydus-image', ['export', '--block', '-B', img.boot, '-D', img.blobDir, '-O', erofs]);
    const mnt = path.join(work, 'mnt', `huge-${format}`);
    mounts.push(mnt);
    loopMount(erofs, mnt);
    try {
      const file = path.join(mnt, 'huge');
      assert.equal(fs.statSync(file).size, size);
      const rfd = fs.openSync(file, 'r');
      const got = Buffer.alloc(tail.length + 4);
      fs.readSync(rfd, got, 0, got.length, size - got.length);
      const head = Buffer.alloc(4);
      fs.readSync(rfd, head, 0, 4, 0);
      fs.closeSync(rfd);
      assert.deepEqual([head.toString(), got.subarray(0, 4), got.subarray(4)], ['head', Buffer.alloc(4), tail]);
    } finally {
      umount(mnt);
    }
  }
});
