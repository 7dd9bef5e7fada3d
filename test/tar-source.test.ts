/**
 * Layer tars as builder sources, without mounts: whiteouts under each spec, tree rules (implied
 * parents, absolute paths, hardlinks and replaced entries), errors, and the memory bound of streaming.
 * Tars come from GNU tar or, for entries GNU tar will not write, from Python's tarfile module.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { setXattr } from '../native/xattr/index.ts';
import { openImage } from '../src/image/open.ts';
import { treeFromImage } from '../src/image/tree-from-image.ts';
import type { TreeNode } from '../src/builder/tree.ts';
import { chunkDigest } from '../src/blob/digest.ts';
import { posixAclProblem } from '../erofs/xattr.ts';
import { prand, tmpDir } from './helpers/fixtures.ts';
import { mustRun, repoRoot } from './helpers/cli.ts';

const work = tmpDir('tar-source-unit');
after(() => fs.rmSync(work, { recursive: true, force: true }));

let serial = 0;
function fresh(name: string): string {
  return path.join(work, `${name}-${serial++}`);
}

/** Entries Python's tarfile writes as given (GNU tar refuses or rewrites some of them). */
interface PyEntry {
  name: string; type?: 'file' | 'dir' | 'symlink' | 'link' | 'chrdev'; data?: string; linkname?: string; mode?: number; mtime?: number;
  uid?: number; devmajor?: number; devminor?: number; pax?: Record<string, string>;
}
/**
 * `globals`: records of a pax global header at the start. `format` 'gnu' writes numbers too large for
 * octal in GNU base-256 (and no pax records).
 */
function pyTar(entries: PyEntry[], globals: Record<string, string> = {}, format: 'pax' | 'gnu' = 'pax'): string {
  const file = `${fresh('py')}.tar`;
  // The entries go by stdin: pax records of big xattrs are past what one argument may hold.
  execFileSync('python3', ['-c', `
import io, json, sys, tarfile
out, fmt = sys.argv[1], sys.argv[2]
entries, globals_ = json.load(sys.stdin)
types = {'file': tarfile.REGTYPE, 'dir': tarfile.DIRTYPE, 'symlink': tarfile.SYMTYPE, 'link': tarfile.LNKTYPE, 'chrdev': tarfile.CHRTYPE}
with tarfile.open(out, 'w', format=tarfile.GNU_FORMAT if fmt == 'gnu' else tarfile.PAX_FORMAT, pax_headers=globals_) as t:
    for e in entries:
        i = tarfile.TarInfo(e['name'])
        i.type = types[e.get('type', 'file')]
        i.mode = e.get('mode', 0o755 if i.type == tarfile.DIRTYPE else 0o644)
        i.mtime = e.get('mtime', 1600000000)
        i.linkname = e.get('linkname', '')
        i.uid = e.get('uid', 0)
        i.devmajor = e.get('devmajor', 0)
        i.devminor = e.get('devminor', 0)
        i.pax_headers = e.get('pax', {})
        data = e.get('data', '').encode()
        i.size = len(data) if i.type == tarfile.REGTYPE else 0
        t.addfile(i, io.BytesIO(data) if i.size else None)
`, file, format], { input: JSON.stringify([entries, globals]), maxBuffer: 1 << 30 });
  return file;
}

interface Built { boot: string; blobDir: string; status: number | null; stderr: string }
/** `timeoutMs`: a build that takes longer is killed (status null). */
function create(source: string, args: string[] = [], input?: Buffer, timeoutMs?: number): Built {
  const boot = `${fresh('img')}.boot`;
  const blobDir = fresh('blobs');
  const r = spawnSync(path.join(repoRoot, 'bin/nydus-image'), ['create', '-B', boot, '-D', blobDir, ...args, source],
    { input, encoding: 'utf8', maxBuffer: 1 << 30, timeout: timeoutMs });
  return { boot, blobDir, status: r.status, stderr: r.stderr };
}

function treeOf(boot: string): Map<string, TreeNode> {
  const byPath = new Map<string, TreeNode>();
  const walk = (n: TreeNode) => {
    byPath.set(n.path, n);
    for (const c of n.children ?? []) walk(c);
  };
  walk(treeFromImage(openImage(boot).image).root);
  return byPath;
}

/** Builds a tar (or tar.gz) that must fail: one line naming the layer, exit 1, no bootstrap or blob directory. */
function assertRefused(source: string, pattern: RegExp, args: string[] = ['-t', 'tar-rafs'], input?: Buffer, timeoutMs = 120_000): void {
  const r = create(source, args, input, timeoutMs);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /^nydus-image: error: layer [^\n]+\n$/, 'one line naming the layer');
  assert.match(r.stderr, pattern);
  assert.ok(!fs.existsSync(r.boot), 'no bootstrap is left');
  assert.ok(!fs.existsSync(r.blobDir), 'no blob directory is left');
}

function whiteoutSource(): string {
  const dir = fresh('wh-src');
  fs.mkdirSync(path.join(dir, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(dir, '.wh.gone'), '');
  fs.writeFileSync(path.join(dir, 'sub', '.wh..wh..opq'), '');
  fs.writeFileSync(path.join(dir, 'sub', 'kept'), 'kept');
  execFileSync('mknod', [path.join(dir, 'removed'), 'c', '0', '0']);
  fs.mkdirSync(path.join(dir, 'opaque'));
  fs.writeFileSync(path.join(dir, 'opaque', 'new'), 'new');
  setXattr(path.join(dir, 'opaque'), 'trusted.overlay.opaque', Buffer.from('y'));
  return dir;
}

test('a tar layer keeps every whiteout form under each --whiteout-spec, as nydus does', () => {
  const dir = whiteoutSource();
  const tarFile = `${fresh('wh')}.tar`;
  execFileSync('tar', ['--format=pax', '--xattrs', '--xattrs-include=*', '-C', dir, '-cf', tarFile, '.']);
  for (const spec of ['oci', 'overlayfs', 'none']) {
    const b = create(tarFile, ['-t', 'tar-rafs', '-W', spec]);
    assert.equal(b.status, 0, b.stderr);
    const t = treeOf(b.boot);
    assert.equal(t.get('/.wh.gone')?.kind, 'file', `${spec}: .wh.gone kept as an empty file`);
    assert.equal(t.get('/.wh.gone')?.size, 0);
    assert.equal(t.get('/sub/.wh..wh..opq')?.kind, 'file', `${spec}: the opaque marker kept`);
    assert.equal(t.get('/removed')?.kind, 'chrdev', `${spec}: the 0:0 device kept`);
    assert.equal(t.get('/removed')?.rdev, 0);
    assert.equal(t.get('/opaque')?.xattrs.get('trusted.overlay.opaque')?.toString(), 'y', `${spec}: the opaque xattr kept`);
    assert.equal(t.get('/opaque/new')?.kind, 'file');
  }
});

test('a directory built as the lowest layer leaves out the whiteouts of its --whiteout-spec', () => {
  const dir = whiteoutSource();
  const names = (spec: string) => {
    const b = create(dir, ['-t', 'dir-rafs', '-W', spec]);
    assert.equal(b.status, 0, b.stderr);
    return [...treeOf(b.boot).keys()].sort();
  };
  assert.deepEqual(names('oci'), ['/', '/opaque', '/opaque/new', '/removed', '/sub', '/sub/kept']);
  assert.deepEqual(names('overlayfs'), ['/', '/.wh.gone', '/opaque', '/opaque/new', '/sub', '/sub/.wh..wh..opq', '/sub/kept']);
  assert.deepEqual(names('none'), ['/', '/.wh.gone', '/opaque', '/opaque/new', '/removed', '/sub', '/sub/.wh..wh..opq', '/sub/kept']);
  const b = create(dir, ['-t', 'dir-rafs', '-W', 'overlayfs']);
  assert.equal(treeOf(b.boot).get('/opaque')?.xattrs.get('trusted.overlay.opaque')?.toString(), 'y', 'an opaque directory stays, xattr and all');
  const bad = create(dir, ['-W', 'aufs']);
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /unsupported whiteout spec "aufs"; supported: oci, overlayfs, none/);
});

test('missing parents are created as nydus does; a leading / is dropped; . and // are ignored', () => {
  const tarFile = pyTar([
    { name: 'a/b/c', data: 'deep' },
    { name: '/abs/file', data: 'was absolute' },
    { name: './x//y/./z', data: 'odd path' },
    { name: 'a', type: 'dir', mode: 0o700, mtime: 1500000000 },
  ]);
  const b = create(tarFile, ['-t', 'tar-rafs']);
  assert.equal(b.status, 0, b.stderr);
  const t = treeOf(b.boot);
  const implied = t.get('/a/b')!;
  assert.equal(implied.kind, 'dir');
  assert.deepEqual([implied.mode & 0o7777, implied.uid, implied.gid, implied.mtimeSec], [0o755, 0, 0, 0]);
  // A directory entry after its contents sets its attributes and keeps the contents.
  assert.deepEqual([t.get('/a')!.mode & 0o7777, t.get('/a')!.mtimeSec], [0o700, 1500000000]);
  assert.equal(t.get('/a/b/c')?.size, 4);
  assert.equal(t.get('/abs/file')?.size, 12);
  assert.equal(t.get('/x/y/z')?.size, 8);
});

test('a zstd-compressed layer (OCI tar+zstd) builds the image its plain tar builds; corrupt zstd data is an error naming the layer', async () => {
  const { compress } = await import('zstd-napi');
  const plain = pyTar([{ name: 'etc', type: 'dir' }, { name: 'etc/os-release', data: 'ID=test\n' }, { name: 'bin/sh', data: 'x'.repeat(300_000) }]);
  const zst = `${plain}.zst`;
  fs.writeFileSync(zst, compress(fs.readFileSync(plain)));
  const a = create(plain, ['-t', 'tar-rafs', '--repeatable']);
  const b = create(zst, ['-t', 'targz-rafs', '--repeatable']);
  assert.equal(a.status, 0, a.stderr);
  assert.equal(b.status, 0, b.stderr);
  assert.ok(fs.readFileSync(a.boot).equals(fs.readFileSync(b.boot)), 'the same bootstrap');
  assert.equal(treeOf(b.boot).get('/etc/os-release')?.size, 8);
  const bad = Buffer.from(fs.readFileSync(zst));
  bad.fill(0xff, 8, 64);
  const corrupt = `${plain}.bad.zst`;
  fs.writeFileSync(corrupt, bad);
  const r = create(corrupt, ['-t', 'tar-rafs']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, new RegExp(`layer ${corrupt.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: corrupt zstd data: `));
});

test('a path longer than PATH_MAX - 1 from the root is refused naming the entry, cut short; one of exactly that length builds', () => {
  // 2,047 levels of "a/" and a name: 4,096 bytes from the root. (A megabyte of them once made a
  // million directories, each holding its whole path: 900 MB from a 2 KB gzip.)
  const long = `${'a/'.repeat(2047)}f`;
  const r = create(pyTar([{ name: long, data: 'x' }]), ['-t', 'tar-rafs']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /entry "a\/a\/a[a/]*"\.\.\. \(4095 bytes\): its path is longer than 4095 bytes from the root \(PATH_MAX - 1\)/);
  assert.ok(r.stderr.length < 1000, 'the message is not the path');
  const fits = `${'a/'.repeat(2046)}fg`;
  const ok = create(pyTar([{ name: fits, data: 'x' }]), ['-t', 'tar-rafs']);
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(treeOf(ok.boot).get(`/${fits}`)?.size, 1);
});

test('pax global headers apply to every later entry unless a local record says otherwise, as GNU tar extracts them', () => {
  const tarFile = pyTar([
    { name: 'f', data: 'global ids', uid: 1 },
    { name: 'e', data: 'local uid', uid: 5, pax: { uid: '77', mtime: '1700000000.000000001' } },
  ], { uid: '4242', gid: '4343', comment: 'made by git archive, say' });
  const out = fresh('global-x');
  fs.mkdirSync(out);
  execFileSync('tar', ['--numeric-owner', '-xpf', tarFile, '-C', out]);
  const b = create(tarFile, ['-t', 'tar-rafs']);
  assert.equal(b.status, 0, b.stderr);
  const t = treeOf(b.boot);
  for (const name of ['f', 'e']) {
    const st = fs.lstatSync(path.join(out, name), { bigint: true });
    const n = t.get(`/${name}`)!;
    assert.deepEqual([n.uid, n.gid, BigInt(n.mtimeSec) * 1_000_000_000n + BigInt(n.mtimeNsec)], [Number(st.uid), Number(st.gid), st.mtimeNs], name);
  }
  assert.equal(t.get('/e')!.uid, 77);
});

test('hardlinks share the inode of the entry they name; a later entry replaces the name, not the inode', () => {
  const tarFile = pyTar([
    { name: 'one', data: 'original' },
    { name: 'two', type: 'link', linkname: 'one' },
    { name: 'one', data: 'replaced, longer' },
    { name: 'dir', type: 'dir' },
    { name: 'dir/three', type: 'link', linkname: './two' },
  ]);
  const b = create(tarFile, ['-t', 'tar-rafs']);
  assert.equal(b.status, 0, b.stderr);
  const t = treeOf(b.boot);
  assert.equal(t.get('/one')!.size, 16);
  assert.equal(t.get('/two')!.size, 8);
  assert.equal(t.get('/dir/three')!.hardlinkKey, t.get('/two')!.hardlinkKey, 'dir/three and two are one inode');
  assert.notEqual(t.get('/one')!.hardlinkKey, t.get('/two')!.hardlinkKey, 'the new one is another inode');
});

test('entries with .., through a symlink, or hardlinks to nothing are refused naming the entry', () => {
  assertRefused(pyTar([{ name: 'a/../../etc/passwd', data: 'x' }]), /entry "a\/\.\.\/\.\.\/etc\/passwd": path .* has a '\.\.' component/);
  assertRefused(pyTar([{ name: 'd', type: 'dir' }, { name: 'l', type: 'symlink', linkname: 'd' }, { name: 'l/x', data: 'x' }]),
    /entry "l\/x": path goes through \/l, a symlink of the same layer/);
  assertRefused(pyTar([{ name: 'h', type: 'link', linkname: 'nowhere' }]), /entry "h": hardlink target "nowhere" is not an earlier entry of the layer/);
  assertRefused(pyTar([{ name: 'd', type: 'dir' }, { name: 'h', type: 'link', linkname: 'd' }]), /entry "h": hardlink target \/d is a directory/);
  assertRefused(pyTar([{ name: 'f', data: 'x' }, { name: 'h', type: 'link', linkname: '../f' }]), /entry "h": path "\.\.\/f" has a '\.\.' component/);
  // As GNU tar refuses them ("Not a directory"): a name ending in '/' names a directory.
  assertRefused(pyTar([{ name: 't', data: 'x' }, { name: 'h', type: 'link', linkname: 't/' }]), /entry "h": hardlink target "t\/" ends in '\/', but \/t is not a directory/);
  assertRefused(pyTar([{ name: 'l/', type: 'symlink', linkname: 'x' }]), /entry "l\/": its path ends in '\/', which only a directory's may, but it is a symlink/);
  assertRefused(pyTar([{ name: `d/${'n'.repeat(256)}`, data: 'x' }]), /entry "d\/n+": a name is longer than 255 bytes/);
  assertRefused(pyTar([{ name: '.', data: 'x' }]), /entry "\.": the layer's root must be a directory, not a file/);
  assertRefused(work, /layer .* is a directory, not a tar file/);
  const both = create('-', ['-t', 'tar-rafs', '--prefetch-policy', 'fs'], Buffer.from('/a\n'));
  assert.equal(both.status, 1);
  assert.match(both.stderr, /^nydus-image: error: --prefetch-policy fs reads stdin, which cannot also carry the layer tar/);
});

test('a symlink from a tar has mode 0777 whatever its header says, as extraction (symlink(2)) makes it; GNU tar agrees', () => {
  const tarFile = pyTar([{ name: 'l', type: 'symlink', linkname: 'target', mode: 0o600 }, { name: 'f', data: 'x', mode: 0o600 }]);
  const b = create(tarFile, ['-t', 'tar-rafs']);
  assert.equal(b.status, 0, b.stderr);
  const t = treeOf(b.boot);
  // The oracle: GNU tar extracting the same tar.
  const out = fresh('gnu-x');
  fs.mkdirSync(out);
  execFileSync('tar', ['-C', out, '-xf', tarFile]);
  assert.equal(t.get('/l')!.mode, fs.lstatSync(path.join(out, 'l')).mode);
  assert.equal(t.get('/l')!.mode, 0o120777);
  assert.equal(t.get('/f')!.mode, 0o100600, 'a file keeps its header mode');
});

function gnuTarOf(files: Record<string, Buffer>): string {
  const dir = fresh('t-src');
  fs.mkdirSync(dir);
  for (const [n, d] of Object.entries(files)) fs.writeFileSync(path.join(dir, n), d);
  const file = `${dir}.tar`;
  execFileSync('tar', ['--format=pax', '-C', dir, '-cf', file, '.']);
  return file;
}

test('a tar ending right after its last entry, without the end-of-archive zero blocks (as umoci writes layers), is whole', () => {
  const tarFile = gnuTarOf({ a: prand(300000, 1), b: prand(5000, 2) });
  const whole = fs.readFileSync(tarFile);
  let end = whole.length;
  while (whole[end - 1] === 0) end--;
  const bare = `${fresh('bare')}.tar`;
  fs.writeFileSync(bare, whole.subarray(0, Math.ceil(end / 512) * 512));
  // GNU tar takes it as whole too.
  const out = fresh('bare-x');
  fs.mkdirSync(out);
  execFileSync('tar', ['-xf', bare, '-C', out]);
  const b = create(bare, ['-t', 'tar-rafs']);
  assert.equal(b.status, 0, b.stderr);
  const t = treeOf(b.boot);
  for (const name of ['a', 'b']) assert.equal(t.get(`/${name}`)!.size, fs.statSync(path.join(out, name)).size, name);
  // Cut inside the pax header of an entry, it still is an error.
  const paxAt = whole.indexOf('PaxHeaders', 1024);
  const cutPax = `${fresh('cut-pax')}.tar`;
  fs.writeFileSync(cutPax, whole.subarray(0, Math.floor(paxAt / 512) * 512 + 1024));
  assertRefused(cutPax, /tar ends early/);
});

test('a tar that ends early, a corrupt or truncated gzip, and bytes that are no tar are errors naming the layer', () => {
  const tarFile = gnuTarOf({ a: prand(300000, 1), b: prand(5000, 2) });
  const whole = fs.readFileSync(tarFile);
  const cut = (n: number) => {
    const f = `${fresh('cut')}.tar`;
    fs.writeFileSync(f, whole.subarray(0, n));
    return f;
  };
  const cutMid = cut(100000);
  assertRefused(cutMid, new RegExp(`layer ${cutMid}: tar ends early inside the data of an entry \\(entry "\\./[ab]"\\)`));
  assertRefused(cut(1000), /tar ends early inside a pax header/);
  assertRefused(cut(1536 + 100), /tar ends early inside a header/);

  const gz = execFileSync('gzip', ['-c', tarFile]);
  const corrupt = Buffer.from(gz);
  for (let i = 2000; i < 2100; i++) corrupt[i] ^= 0x5a;
  const corruptFile = `${fresh('corrupt')}.tar.gz`;
  fs.writeFileSync(corruptFile, corrupt);
  // Damage inside the deflate stream is found by zlib, or decodes to garbage the tar parser refuses.
  assertRefused(corruptFile, new RegExp(`layer ${corruptFile}: (corrupt gzip data|bad tar header checksum|tar ends early)`), ['-t', 'targz-rafs']);
  // A wrong CRC in the trailer: the tar reads well, the gzip check at the end fails.
  const badCrc = Buffer.from(gz);
  badCrc[badCrc.length - 8] ^= 0xff;
  const badCrcFile = `${fresh('crc')}.tar.gz`;
  fs.writeFileSync(badCrcFile, badCrc);
  assertRefused(badCrcFile, new RegExp(`layer ${badCrcFile}: corrupt gzip data: incorrect data check`), ['-t', 'targz-rafs']);
  const truncatedGz = `${fresh('short')}.tar.gz`;
  fs.writeFileSync(truncatedGz, gz.subarray(0, gz.length - 100));
  assertRefused(truncatedGz, /corrupt gzip data: unexpected end of file|tar ends early/, ['-t', 'targz-rafs']);
  // The same from stdin, by the names callers give it.
  assertRefused('-', /layer from stdin: corrupt gzip data/, ['-t', 'targz-rafs'], badCrc);
  assertRefused('/proc/self/fd/0', /layer from stdin: corrupt gzip data/, ['-t', 'targz-rafs'], badCrc);

  const noise = `${fresh('noise')}.tar`;
  fs.writeFileSync(noise, prand(4096, 3));
  assertRefused(noise, /bad tar header checksum at byte 0/);
  assertRefused(path.join(work, 'missing.tar'), /layer .*missing\.tar: does not exist/);
});

test('streaming: a 1 GiB file from stdin builds with peak RSS well under 300 MiB', () => {
  const dir = fresh('big');
  fs.mkdirSync(dir);
  // A 1 GiB file of zeros on disk without taking space: GNU tar (without --sparse) writes all its bytes.
  fs.closeSync(fs.openSync(path.join(dir, 'big'), 'w'));
  fs.truncateSync(path.join(dir, 'big'), 1 << 30);
  fs.writeFileSync(path.join(dir, 'small'), prand(3 << 20, 5));
  const boot = `${fresh('big')}.boot`;
  const blobDir = fresh('big-blobs');
  const r = spawnSync('bash', ['-o', 'pipefail', '-c',
    `tar -C "$1" -cf - . | /usr/bin/time -v "$2" create -t tar-rafs --compressor zstd -B "$3" -D "$4" -`,
    'sh', dir, path.join(repoRoot, 'bin/nydus-image'), boot, blobDir], { encoding: 'utf8', timeout: 600_000 });
  assert.equal(r.status, 0, r.stderr);
  const rssKiB = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr)![1]);
  assert.ok(rssKiB < 200 * 1024, `peak RSS ${rssKiB} KiB`);
  process.stderr.write(`# streaming 1 GiB from stdin: peak RSS ${(rssKiB / 1024).toFixed(0)} MiB\n`);
  const stat = JSON.parse(mustRun('nydus-image', ['inspect', '-B', boot, '-R', 'stat /big']).stdout);
  assert.equal(stat.size ?? stat.i_size, 1 << 30);
});

/** A directory build that must fail: exit 1, one line naming the file, no internal error. */
function assertDirRefused(dir: string, pattern: RegExp): void {
  const r = create(dir, ['-t', 'dir-rafs'], undefined, 60_000);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /^nydus-image: error: [^\n]+\n$/, 'one line');
  assert.match(r.stderr, pattern);
  assert.ok(!fs.existsSync(r.boot), 'no bootstrap is left');
}

/** A directory on tmpfs, which takes xattrs of any size and sparse files of any length. */
function shmDir(name: string): string {
  const dir = fs.mkdtempSync(path.join('/dev/shm', `nydus-ts-${name}-`));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('owners, device numbers and xattrs beyond what an EROFS inode holds are refused naming the entry, from a tar or a directory', () => {
  // i_uid / i_gid are 32 bits: from a pax record or GNU base-256.
  assertRefused(pyTar([{ name: 'f', data: 'x', pax: { uid: '4294967296' } }]), /entry "f": uid 4294967296 does not fit EROFS's 32-bit i_uid/);
  assertRefused(pyTar([{ name: 'f', data: 'x', pax: { gid: '4294967296' } }]), /entry "f": gid 4294967296 does not fit/);
  assertRefused(pyTar([{ name: 'f', data: 'x', uid: 2 ** 32 }], {}, 'gnu'), /entry "f": uid 4294967296 does not fit/);
  // The highest ids are stored as they are.
  const top = create(pyTar([{ name: 'f', data: 'x', pax: { uid: '4294967295', gid: '4294967294' } }]), ['-t', 'tar-rafs']);
  assert.equal(top.status, 0, top.stderr);
  assert.deepEqual([treeOf(top.boot).get('/f')!.uid, treeOf(top.boot).get('/f')!.gid], [4294967295, 4294967294]);
  // An i64 mtime holds any time the tar can give exactly; one past that is refused.
  assertRefused(pyTar([{ name: 'f', data: 'x', pax: { mtime: '100000000000000000000' } }]), /entry "f": .*mtime.* out of range/);
  // rdev is new_encode_dev's 32 bits: a 12-bit major and a 20-bit minor.
  assertRefused(pyTar([{ name: 'd', type: 'chrdev', devmajor: 4096 }], {}, 'gnu'), /entry "d": device number 4096:0 does not fit EROFS's rdev \(major at most 4095, minor at most 1048575\)/);
  assertRefused(pyTar([{ name: 'd', type: 'chrdev', devmajor: 2 ** 40 }], {}, 'gnu'), /entry "d": device number 1099511627776:0 does not fit/);
  assertRefused(pyTar([{ name: 'd', type: 'chrdev', devminor: 2 ** 20 }], {}, 'gnu'), /entry "d": device number 0:1048576 does not fit/);
  const dev = create(pyTar([{ name: 'd', type: 'chrdev', devmajor: 4095, devminor: 2 ** 20 - 1 }], {}, 'gnu'), ['-t', 'tar-rafs']);
  assert.equal(dev.status, 0, dev.stderr);
  assert.equal(treeOf(dev.boot).get('/d')!.rdev, 0xffffffff);
  // i_xattr_icount is 16 bits: the inline xattrs of one inode take at most 262148 bytes.
  const big: Record<string, string> = {};
  for (let i = 0; i < 10; i++) big[`SCHILY.xattr.user.k${i}`] = 'v'.repeat(60000);
  assertRefused(pyTar([{ name: 'f', data: 'x', pax: big }]), /entry "f": 10 xattrs take 600092 bytes, more than the 262148 an inode can hold/);
  const many: Record<string, string> = {};
  for (let i = 0; i < 100000; i++) many[`SCHILY.xattr.user.${i}`] = 'v';
  assertRefused(pyTar([{ name: 'f', data: 'x', pax: many }]), /entry "f": 100000 xattrs take \d+ bytes, more than the 262148/);
  // A directory with such a file is refused the same way, naming the file.
  const dir = shmDir('xattrs');
  fs.writeFileSync(path.join(dir, 'f'), 'x');
  for (let i = 0; i < 10; i++) setXattr(path.join(dir, 'f'), `trusted.k${i}`, Buffer.alloc(60000, 'v'));
  assertDirRefused(dir, new RegExp(`${dir}/f: 10 xattrs take 600092 bytes, more than the 262148 an inode can hold`));
});

test('a NUL byte in a path is refused naming the entry', () => {
  assertRefused(pyTar([{ name: 'x', data: 'x', pax: { path: 'a\u0000b' } }]), /entry "a\\u0000b": a name holds a NUL byte/);
  assertRefused(pyTar([{ name: 'x', data: 'x', pax: { path: 'd\u0000/f' } }]), /entry "d\\u0000\/f": a name holds a NUL byte/);
  assertRefused(pyTar([{ name: 'f', data: 'x' }, { name: 'h', type: 'link', pax: { linkpath: 'f\u0000' } }]), /entry "h": path "f\\u0000": a name holds a NUL byte/);
});

test('symlink targets the kernel cannot follow (PATH_MAX or longer, or holding a NUL) are refused; 4095 bytes are kept', () => {
  assertRefused(pyTar([{ name: 'l', type: 'symlink', linkname: 'a'.repeat(4096) }]), /entry "l": symlink target of 4096 bytes is longer than 4095/);
  assertRefused(pyTar([{ name: 'l', type: 'symlink', pax: { linkpath: 'a\u0000b' } }]), /entry "l": symlink target holds a NUL byte/);
  assertRefused(pyTar([{ name: 'l', type: 'symlink', linkname: '' }]), /entry "l": symlink with an empty target/);
  const longest = 'd/'.repeat(2047) + 'x';
  const b = create(pyTar([{ name: 'l', type: 'symlink', linkname: longest }]), ['-t', 'tar-rafs']);
  assert.equal(b.status, 0, b.stderr);
  mustRun('nydus-image', ['check', '-B', b.boot, '-D', b.blobDir]);
  assert.equal(treeOf(b.boot).get('/l')!.target!.toString(), longest);
});

test('xattr names the format cannot hold (only a prefix, a NUL byte, no prefix, too long) are refused naming the entry', () => {
  const refused = (name: string, pattern: RegExp) => assertRefused(pyTar([{ name: 'f', data: 'x', pax: { [`SCHILY.xattr.${name}`]: 'v' } }]), pattern);
  refused('user.', /entry "f": xattr "user\.": the name is only a prefix/);
  refused('trusted.', /entry "f": xattr "trusted\.": the name is only a prefix/);
  refused('user.a\u0000b', /entry "f": xattr "user\.a\\u0000b": the name holds a NUL byte/);
  refused('nonsense.a', /entry "f": xattr "nonsense\.a": the name has no EROFS prefix/);
  refused('system.posix_acl_access.x', /entry "f": xattr "system\.posix_acl_access\.x": the name has no EROFS prefix/);
  refused(`user.${'n'.repeat(256)}`, /entry "f": xattr "user\.n+": the name is longer than 255 bytes after its prefix/);
  // What create keeps, check keeps too.
  const b = create(pyTar([{ name: 'f', data: 'x', pax: { 'SCHILY.xattr.user.a': 'v', [`SCHILY.xattr.user.${'n'.repeat(255)}`]: '' } }]), ['-t', 'tar-rafs']);
  assert.equal(b.status, 0, b.stderr);
  mustRun('nydus-image', ['check', '-B', b.boot, '-D', b.blobDir]);
});

test('POSIX ACL xattrs are kept exactly when the kernel takes them (posix_acl_from_xattr and posix_acl_valid); others are refused naming the entry', () => {
  const acl = (entries: Array<[number, number, number]>, version = 2) => {
    const b = Buffer.alloc(4 + 8 * entries.length);
    b.writeUInt32LE(version, 0);
    entries.forEach(([tag, perm, id], i) => {
      b.writeUInt16LE(tag, 4 + 8 * i);
      b.writeUInt16LE(perm, 6 + 8 * i);
      b.writeUInt32LE(id, 8 + 8 * i);
    });
    return b;
  };
  const [UO, U, GO, G, M, O] = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20];
  const cases: Record<string, Buffer> = {
    minimal: acl([[UO, 6, 0], [GO, 4, 0], [O, 4, 0]]),
    named: acl([[UO, 7, 0], [U, 5, 100], [U, 4, 50], [GO, 5, 0], [G, 7, 100], [M, 7, 0], [O, 0, 0]]),
    garbage: Buffer.from('\x02\x00\x00\x00garbage', 'latin1'),
    'version 1': acl([[UO, 6, 0], [GO, 4, 0], [O, 4, 0]], 1),
    'header only': Buffer.from([2, 0, 0, 0, 1]),
    'no other': acl([[UO, 6, 0], [GO, 4, 0]]),
    'named without mask': acl([[UO, 6, 0], [U, 4, 100], [GO, 4, 0], [O, 4, 0]]),
    'group first': acl([[GO, 4, 0], [UO, 6, 0], [O, 4, 0]]),
    'two others': acl([[UO, 6, 0], [GO, 4, 0], [O, 4, 0], [O, 4, 0]]),
    'perm 8': acl([[UO, 8, 0], [GO, 4, 0], [O, 4, 0]]),
    'unknown tag': acl([[UO, 6, 0], [GO, 4, 0], [0x40, 4, 0], [O, 4, 0]]),
    'uid -1': acl([[UO, 6, 0], [U, 4, 0xffffffff], [GO, 4, 0], [M, 4, 0], [O, 4, 0]]),
  };
  // The oracle: the kernel's setxattr on a file of this (ext4) filesystem.
  const probe = path.join(fresh('acl'));
  fs.writeFileSync(probe, '');
  for (const [what, value] of Object.entries(cases)) {
    let kernel = true;
    try {
      setXattr(probe, 'system.posix_acl_access', value);
    } catch {
      kernel = false;
    }
    assert.equal(posixAclProblem(value) === null, kernel, `${what}: ${posixAclProblem(value)}`);
  }
  // An ACL of no entries removes the ACL when set; stored it would be listed yet read as none.
  assert.match(posixAclProblem(acl([]))!, /the ACL has no entries/);

  // Through a layer tar (pax values are UTF-8 text: ACLs of bytes below 0x80 only).
  assertRefused(pyTar([{ name: 'f', data: 'x', pax: { 'SCHILY.xattr.system.posix_acl_access': '\x02\x00\x00\x00garbage' } }]),
    /entry "f": xattr "system\.posix_acl_access": the ACL is 11 bytes, not a 4-byte header and 8-byte entries/);
  assertRefused(pyTar([{ name: 'd', type: 'dir', pax: { 'SCHILY.xattr.system.posix_acl_default': cases['named without mask'].toString('latin1') } }]),
    /entry "d\/": xattr "system\.posix_acl_default": ACL entry 3 \(tag 0x20\) follows named entries without a mask:: entry/);
  const good = acl([[UO, 6, 0], [U, 4, 100], [GO, 4, 0], [M, 4, 0], [O, 4, 0]]);
  const b = create(pyTar([{ name: 'f', data: 'x', pax: { 'SCHILY.xattr.system.posix_acl_access': good.toString('latin1') } }]), ['-t', 'tar-rafs']);
  assert.equal(b.status, 0, b.stderr);
  assert.deepEqual(treeOf(b.boot).get('/f')!.xattrs.get('system.posix_acl_access'), good);
});

/** A pax sparse file (GNU format 1.0): `runs` of data at their offsets, holes elsewhere, `realsize` in all. */
function sparseEntry(name: string, realsize: number, runs: Array<[number, string]>): PyEntry {
  let map = `${runs.length}\n${runs.map(([o, d]) => `${o}\n${d.length}\n`).join('')}`;
  map += '\u0000'.repeat((512 - (map.length % 512)) % 512);
  return {
    name: `GNUSparseFile.0/${name}`, data: map + runs.map(([, d]) => d).join(''),
    pax: { 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': name, 'GNU.sparse.realsize': String(realsize) },
  };
}

test('sparse files: one of more chunks than a blob may hold is refused before a byte is read; holes cost no hashing, and read back as zeros', () => {
  // 2^52 bytes of holes in a tar of a few KiB: refused at once, not chunked for days.
  assertRefused(pyTar([sparseEntry('huge', 2 ** 52, [[0, 'x']])]),
    /entry "huge": a file of 4503599627370496 bytes needs 4294967296 chunks of 1048576 bytes, more than the 16777216 a blob may hold/, undefined, undefined, 30_000);
  // The same for a directory: a sparse file of 2^52 bytes on tmpfs.
  const dir = shmDir('sparse');
  fs.closeSync(fs.openSync(path.join(dir, 'huge'), 'w'));
  fs.truncateSync(path.join(dir, 'huge'), 2 ** 52);
  assertDirRefused(dir, new RegExp(`${dir}/huge: a file of 4503599627370496 bytes needs 4294967296 chunks`));

  // 1 TiB with a few data bytes (2^20 chunks): built in seconds, where hashing every hole took minutes.
  const chunk = 1 << 20;
  const size = 2 ** 40;
  // Runs of whole 512-byte blocks but the last, as GNU tar writes them (it reads each run from a block of its own).
  const text = (n: number, word: string) => word.repeat(Math.ceil(n / word.length)).slice(0, n);
  const runs: Array<[number, string]> = [[5, text(512, 'hello ')], [chunk - 300, text(1024, 'straddles two chunks ')], [2 ** 39 + 12345, text(512, 'middle ')], [size - 4, 'tail']];
  const tarFile = pyTar([sparseEntry('big', size, runs), { name: 'small', data: 'plain' }]);
  const started = Date.now();
  const b = create(tarFile, ['-t', 'tar-rafs'], undefined, 60_000);
  const seconds = (Date.now() - started) / 1000;
  assert.equal(b.status, 0, b.stderr || 'killed after 60 s');
  assert.ok(seconds < 30, `built in ${seconds} s`);
  process.stderr.write(`# a 1 TiB sparse file: built in ${seconds.toFixed(1)} s\n`);
  mustRun('nydus-image', ['check', '-B', b.boot, '-D', b.blobDir]);

  // The oracle: GNU tar extracts the file (holes as holes), SEEK_DATA tells which chunks hold data;
  // those are read and hashed, every other chunk is zeros. Each must be the image's chunk.
  const out = fresh('sparse-x');
  fs.mkdirSync(out);
  execFileSync('tar', ['-xf', tarFile, '-C', out]);
  const extracted = path.join(out, 'big');
  assert.equal(fs.statSync(extracted).size, size);
  const dataChunks = new Set<number>(JSON.parse(execFileSync('python3', ['-c', `
import json, os, sys
fd, cs = os.open(sys.argv[1], os.O_RDONLY), int(sys.argv[2])
size, off, found = os.fstat(fd).st_size, 0, set()
while off < size:
    try:
        start = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    end = os.lseek(fd, start, os.SEEK_HOLE)
    found.update(range(start // cs, (end - 1) // cs + 1))
    off = end
print(json.dumps(sorted(found)))
`, extracted, String(chunk)], { encoding: 'utf8' })));
  assert.ok(dataChunks.has(0) && dataChunks.has(1) && dataChunks.has(2 ** 19) && dataChunks.has(2 ** 20 - 1), [...dataChunks].join());
  const node = treeOf(b.boot).get('/big')!;
  assert.equal(node.size, size);
  assert.equal(node.chunks!.length, size / chunk);
  const zero = chunkDigest('blake3', Buffer.alloc(chunk));
  const fd = fs.openSync(extracted, 'r');
  const buf = Buffer.alloc(chunk);
  try {
    node.chunks!.forEach((c, i) => {
      let want = zero;
      if (dataChunks.has(i)) {
        assert.equal(fs.readSync(fd, buf, 0, chunk, i * chunk), chunk);
        want = chunkDigest('blake3', buf);
      }
      if (!c!.digest.equals(want)) assert.fail(`chunk ${i} of /big differs from the extracted file`);
    });
  } finally {
    fs.closeSync(fd);
  }
  // Holes share one zero chunk in the blob, as the chunker shares any chunk: the blob holds that, the
  // chunks with data, and the small file's.
  const stats = JSON.parse(mustRun('nydus-image', ['inspect', '-B', b.boot, '-R', 'stats']).stdout);
  assert.equal(stats.blobs[0].chunk_count, dataChunks.size + 2);
});

test('sparse files of a few bytes each may not refer to more chunks in all than a blob holds: the file past it is refused naming it', { timeout: 120_000 }, () => {
  const MiB = 1 << 20;
  // 2^24 - 2 chunks, then 3 more: refused before the second is read (each such file held 1 GB once,
  // and six of them ran the heap out).
  assertRefused(pyTar([sparseEntry('f0', (2 ** 24 - 2) * MiB, [[0, 'x']]), sparseEntry('f1', 3 * MiB, [[0, 'x']])]), /entry "f1": a file of 3145728 bytes needs 3 chunks of 1048576 bytes, which with the 16777214 of the files before it are more than the 16777216 an image's files may refer to/);
  // Under a heap too small for the first file's chunk list, the heap guard stops the build with its message.
  const small = pyTar([sparseEntry('big', 2 ** 24 * MiB, [[0, 'x']])]);
  const r = spawnSync(path.join(repoRoot, 'bin/nydus-image'), ['create', '-t', 'tar-rafs', '-B', `${fresh('h')}.boot`, '-D', fresh('hb'), small],
    { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '--max-old-space-size=64' }, timeout: 120_000 });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /layer .*: \d+ entries fill \d+ MiB of the about 64 MiB heap .*NODE_OPTIONS=--max-old-space-size=<MiB>/);
  assert.doesNotMatch(r.stderr, /FATAL ERROR|heap out of memory/);
});

test('a directory a layer only implies (a path under it, no entry of its own) keeps the attributes of the lower layer\'s directory, root too, as GNU tar extracting the layers in order gives: over --parent-bootstrap, and in a merge told the layer\'s implied directories (nydusify convert)', async () => {
  const { createImageFromTar } = await import('../src/builder/create.ts');
  const { mergeImages } = await import('../src/builder/merge.ts');
  const lower = pyTar([
    { name: '.', type: 'dir', mode: 0o750, uid: 3, mtime: 1_600_000_100, pax: { 'SCHILY.xattr.user.r': 'root' } },
    { name: 'etc', type: 'dir', mode: 0o700, uid: 10, mtime: 1_700_000_000, pax: { 'SCHILY.xattr.user.e': '1' } },
    { name: 'etc/a', data: 'a' },
    { name: 'd', type: 'dir', mode: 0o751, uid: 9 },
    { name: 'd/gone', data: 'x' },
  ]);
  // No './', no 'etc', no 'd' entry: each is implied; 'd' is made opaque.
  const upper = pyTar([{ name: 'etc/b', data: 'b' }, { name: 'd/.wh..wh..opq', data: '' }, { name: 'new/c', data: 'c' }]);
  // The oracle: GNU tar extracting both in order (as root: owners and modes as the headers give).
  const oracle = fresh('implied-oracle');
  fs.mkdirSync(oracle);
  for (const t of [lower, upper]) execFileSync('tar', ['--xattrs', '--xattrs-include=*', '-C', oracle, '-xpf', t]);
  fs.rmSync(path.join(oracle, 'd', '.wh..wh..opq'));
  fs.rmSync(path.join(oracle, 'd', 'gone'));
  // Mode and owner as GNU tar leaves them; the time the lower layer's entry gives (GNU tar leaves a
  // directory it wrote into with the time of the extraction; umoci and containerd keep the entry's).
  const lowerMtime: Record<string, number> = { '.': 1_600_000_100, etc: 1_700_000_000, d: 1_600_000_000 };
  const want = (p: string) => {
    const st = fs.lstatSync(path.join(oracle, p));
    return { mode: st.mode, uid: st.uid, mtime: lowerMtime[p] };
  };
  const got = (t: Map<string, TreeNode>, p: string) => {
    const n = t.get(p)!;
    return { mode: n.mode, uid: n.uid, mtime: n.mtimeSec };
  };
  const check = (t: Map<string, TreeNode>, how: string) => {
    for (const [p, o] of [['/', '.'], ['/etc', 'etc'], ['/d', 'd']]) assert.deepEqual(got(t, p), want(o), `${how}: ${p}`);
    assert.equal(t.get('/etc')!.xattrs.get('user.e')?.toString(), '1', `${how}: /etc keeps its xattr`);
    assert.equal(t.get('/')!.xattrs.get('user.r')?.toString(), 'root', `${how}: / keeps its xattr`);
    assert.deepEqual([t.has('/d/gone'), t.has('/etc/a'), t.has('/etc/b')], [false, true, true], how);
    assert.deepEqual(got(t, '/new'), { mode: 0o40755, uid: 0, mtime: 0 }, `${how}: a directory new in the upper layer is nydus's implied default`);
  };

  const base = create(lower, ['-t', 'tar-rafs']);
  assert.equal(base.status, 0, base.stderr);
  const over = create(upper, ['-t', 'tar-rafs', '--parent-bootstrap', base.boot]);
  assert.equal(over.status, 0, over.stderr);
  check(treeOf(over.boot), '--parent-bootstrap');

  const layers = [];
  for (const t of [lower, upper]) {
    const boot = `${fresh('implied-layer')}.boot`;
    const built = await createImageFromTar({ source: t, bootstrap: boot, blobDir: fresh('implied-blobs'), chunkSize: 0x100000, compressor: 'zstd', digester: 'blake3' });
    layers.push({ boot, implied: built.impliedDirs });
  }
  assert.deepEqual(layers[1].implied.sort(), ['/', '/d', '/etc', '/new']);
  const merged = `${fresh('implied-merged')}.boot`;
  mergeImages({ sources: layers.map((l) => l.boot), bootstrap: merged, impliedDirs: layers.map((l) => l.implied) });
  check(treeOf(merged), 'merge');
});
