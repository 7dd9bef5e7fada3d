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
  name: string; type?: 'file' | 'dir' | 'symlink' | 'link'; data?: string; linkname?: string; mode?: number; mtime?: number;
  uid?: number; pax?: Record<string, string>;
}
/** `globals`: records of a pax global header at the start. */
function pyTar(entries: PyEntry[], globals: Record<string, string> = {}): string {
  const file = `${fresh('py')}.tar`;
  execFileSync('python3', ['-c', `
import io, json, sys, tarfile
out, entries, globals_ = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
types = {'file': tarfile.REGTYPE, 'dir': tarfile.DIRTYPE, 'symlink': tarfile.SYMTYPE, 'link': tarfile.LNKTYPE}
with tarfile.open(out, 'w', format=tarfile.PAX_FORMAT, pax_headers=globals_) as t:
    for e in entries:
        i = tarfile.TarInfo(e['name'])
        i.type = types[e.get('type', 'file')]
        i.mode = e.get('mode', 0o755 if i.type == tarfile.DIRTYPE else 0o644)
        i.mtime = e.get('mtime', 1600000000)
        i.linkname = e.get('linkname', '')
        i.uid = e.get('uid', 0)
        i.pax_headers = e.get('pax', {})
        data = e.get('data', '').encode()
        i.size = len(data) if i.type == tarfile.REGTYPE else 0
        t.addfile(i, io.BytesIO(data) if i.size else None)
`, file, JSON.stringify(entries), JSON.stringify(globals)]);
  return file;
}

interface Built { boot: string; blobDir: string; status: number | null; stderr: string }
function create(source: string, args: string[] = [], input?: Buffer): Built {
  const boot = `${fresh('img')}.boot`;
  const blobDir = fresh('blobs');
  const r = spawnSync(path.join(repoRoot, 'bin/nydus-image'), ['create', '-B', boot, '-D', blobDir, ...args, source],
    { input, encoding: 'utf8', maxBuffer: 1 << 30 });
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
function assertRefused(source: string, pattern: RegExp, args: string[] = ['-t', 'tar-rafs'], input?: Buffer): void {
  const r = create(source, args, input);
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
  assertRefused(pyTar([{ name: `d/${'n'.repeat(256)}`, data: 'x' }]), /entry "d\/n+": a name is longer than 255 bytes/);
  assertRefused(pyTar([{ name: '.', data: 'x' }]), /entry "\.": the layer's root must be a directory, not a file/);
  assertRefused(work, /layer .* is a directory, not a tar file/);
  const both = create('-', ['-t', 'tar-rafs', '--prefetch-policy', 'fs'], Buffer.from('/a\n'));
  assert.equal(both.status, 1);
  assert.match(both.stderr, /^nydus-image: error: --prefetch-policy fs reads stdin, which cannot also carry the layer tar/);
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
