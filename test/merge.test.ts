/**
 * Overlay rules on trees (pure), and `nydus-image merge` / layered `create` without mounts: the blob
 * table and chunk table of the merged bootstrap, exact dedup against a parent or a chunk dictionary,
 * the per-layer blob overrides, prefetch, clear refusals, and nydusd's pipeline serving a merged image.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync, execFileSync } from 'node:child_process';
import { prand, tmpDir } from './helpers/fixtures.ts';
import { mustRun, repoRoot, runCli } from './helpers/cli.ts';
import { type TreeNode, type NodeKind, walkTree } from '../src/builder/tree.ts';
import { flattenLayers, overlayLayer } from '../src/builder/overlay.ts';
import { layoutTree } from '../src/builder/layout.ts';
import { createImage } from '../src/builder/create.ts';
import { mergeImages } from '../src/builder/merge.ts';
import { chunkDigest } from '../src/blob/digest.ts';
import { openBootstrap } from '../src/image/open.ts';
import { inspectImage } from '../src/image/inspect.ts';
import { ImageRegistry } from '../src/daemon/daemon.ts';
import { DaemonState } from '../src/daemon/state.ts';
import { OnDemandSession } from '../src/daemon/frontend/cachefiles.ts';
import { FakePort } from './helpers/cachefiles-port.ts';
import pino from 'pino';

const work = tmpDir('merge');
after(() => fs.rmSync(work, { recursive: true, force: true }));

// ---- overlay rules on in-memory trees ----

type Spec = { kind?: NodeKind; rdev?: number; xattrs?: Record<string, string>; link?: string; children?: Record<string, Spec>; tag?: string };

/** A tree from a nested description; `tag` marks where a node came from. */
function tree(children: Record<string, Spec>, tag = 'root'): TreeNode {
  const make = (name: string, s: Spec, parent: string): TreeNode => {
    const p = parent === '/' ? `/${name}` : `${parent}/${name}`;
    const kind = s.kind ?? (s.children ? 'dir' : 'file');
    const n: TreeNode = {
      name: Buffer.from(name), kind, mode: kind === 'dir' ? 0o40755 : kind === 'chrdev' ? 0o20644 : 0o100644, uid: 0, gid: 0,
      mtimeSec: 0, mtimeNsec: 0, size: 0, rdev: s.rdev ?? 0, path: p || '/', hardlinkKey: s.link,
      xattrs: new Map(Object.entries({ ...s.xattrs, 'user.tag': s.tag ?? tag }).map(([k, v]) => [k, Buffer.from(v)])),
    };
    if (kind === 'dir') n.children = Object.entries(s.children ?? {}).map(([k, v]) => make(k, v, p)).sort((a, b) => Buffer.compare(a.name, b.name));
    return n;
  };
  return make('', { children, tag }, '');
}

/** Path -> "kind:tag" of every node below the root. */
function shape(root: TreeNode): Record<string, string> {
  const out: Record<string, string> = {};
  const visit = (n: TreeNode, p: string) => {
    for (const c of n.children ?? []) {
      const cp = `${p}/${c.name}`;
      out[cp] = `${c.kind}:${c.xattrs.get('user.tag')}`;
      visit(c, cp);
    }
  };
  visit(root, '');
  return out;
}

test('OCI whiteouts remove lower entries, opaque markers hide a lower directory, neither shows', () => {
  const l1 = tree({ a: {}, b: {}, d: { children: { x: {}, y: {} } }, o: { children: { old: {} } } }, 'l1');
  const l2 = tree({ '.wh.a': {}, d: { children: { '.wh.x': {}, z: {} } }, o: { children: { '.wh..wh..opq': {}, new: {} } } }, 'l2');
  assert.deepEqual(shape(flattenLayers([l1, l2], 'oci')), {
    '/b': 'file:l1', '/d': 'dir:l2', '/d/y': 'file:l1', '/d/z': 'file:l2', '/o': 'dir:l2', '/o/new': 'file:l2',
  });
});

test('a whiteout hides only lower layers: the same name in its own layer stays, a later layer brings it back', () => {
  const l1 = tree({ a: {}, d: { children: { x: {} } } }, 'l1');
  const l2 = tree({ '.wh.a': {}, a: { kind: 'symlink' }, '.wh.d': {}, d: { children: { y: {} } } }, 'l2');
  const l3 = tree({ '.wh.a': {} }, 'l3');
  const l4 = tree({ a: { children: {} } }, 'l4');
  assert.deepEqual(shape(flattenLayers([l1, l2], 'oci')), { '/a': 'symlink:l2', '/d': 'dir:l2', '/d/y': 'file:l2' });
  assert.deepEqual(shape(flattenLayers([tree({ a: {} }, 'l1'), tree({ a: { kind: 'symlink' } }, 'l2'), l3, l4], 'oci')), { '/a': 'dir:l4' });
});

test('type changes: a directory over a file starts empty, a file over a directory drops its children', () => {
  const l1 = tree({ f: {}, d: { children: { x: {} } } }, 'l1');
  const l2 = tree({ f: { children: { c: {} } }, d: { kind: 'fifo' } }, 'l2');
  assert.deepEqual(shape(flattenLayers([l1, l2], 'oci')), { '/d': 'fifo:l2', '/f': 'dir:l2', '/f/c': 'file:l2' });
});

test('overlayfs whiteouts: a 0:0 character device removes, trusted.overlay.opaque=y hides and is dropped', () => {
  const l1 = tree({ a: {}, keep: { kind: 'chrdev', rdev: 0x103 }, o: { children: { old: {} } }, '.wh.b': {} }, 'l1');
  const l2 = tree({ a: { kind: 'chrdev' }, o: { xattrs: { 'trusted.overlay.opaque': 'y' }, children: { new: {} } }, gone: { kind: 'chrdev' } }, 'l2');
  const merged = flattenLayers([l1, l2], 'overlayfs');
  assert.deepEqual(shape(merged), { '/.wh.b': 'file:l1', '/keep': 'chrdev:l1', '/o': 'dir:l2', '/o/new': 'file:l2' });
  const o = merged.children!.find((c) => c.name.toString() === 'o')!;
  assert.equal(o.xattrs.has('trusted.overlay.opaque'), false);
  // Under the OCI spec the same layers are ordinary entries.
  const oci = shape(flattenLayers([tree({ a: {} }, 'l1'), tree({ a: { kind: 'chrdev' } }, 'l2')], 'oci'));
  assert.deepEqual(oci, { '/a': 'chrdev:l2' });
});

test('whiteouts of the first layer have nothing to hide and do not show; -W none keeps everything', () => {
  assert.deepEqual(shape(flattenLayers([tree({ '.wh.a': {}, b: { children: { '.wh..wh..opq': {} } } }, 'l1')], 'oci')), { '/b': 'dir:l1' });
  const l1 = tree({ a: {} }, 'l1');
  const l2 = tree({ '.wh.a': {} }, 'l2');
  assert.deepEqual(shape(flattenLayers([l1, l2], 'none')), { '/.wh.a': 'file:l2', '/a': 'file:l1' });
});

test('hardlinks stay within their layer and count only the links that survive', () => {
  const l1 = tree({ h1: { link: 'nid:40' }, h2: { link: 'nid:40' }, h3: { link: 'nid:40' } }, 'l1');
  const l2 = tree({ '.wh.h3': {}, x1: { link: 'nid:40' }, x2: { link: 'nid:40' } }, 'l2');
  const merged = flattenLayers([l1, l2], 'oci');
  const layout = layoutTree(merged, 0);
  const nlink = (name: string) => layout.inodeOf.get(merged.children!.find((c) => c.name.toString() === name)!)!.nlink;
  assert.deepEqual(['h1', 'h2', 'x1', 'x2'].map(nlink), [2, 2, 2, 2]);
  assert.notEqual(layout.inodeOf.get(merged.children![0]), layout.inodeOf.get(merged.children![2]), 'no inode shared across layers');
});

test('the root takes the upper layer attributes and is never a whiteout', () => {
  const l1 = tree({ a: {} }, 'l1');
  const l2 = tree({}, 'l2');
  const merged = overlayLayer(overlayLayer(null, l1, 'oci'), l2, 'oci');
  assert.equal(merged.xattrs.get('user.tag')!.toString(), 'l2');
  assert.deepEqual(shape(merged), { '/a': 'file:l1' });
  assert.equal([...walkTree(merged)].length, 2);
});

// ---- merge and layered create through the CLI ----

const CHUNK = 0x1000;
const blobDir = path.join(work, 'blobs');
fs.mkdirSync(blobDir);

function layer(name: string, files: Record<string, Buffer | string>): string {
  const dir = path.join(work, name);
  for (const [f, data] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.writeFileSync(path.join(dir, f), data);
  }
  return dir;
}

/** A layer bootstrap from `source` as a GNU tar layer (-t tar-rafs keeps its whiteouts, as image layers do). */
function build(name: string, source: string, extra: string[] = []): string {
  const boot = path.join(work, `${name}.boot`);
  const tarFile = path.join(work, `${name}.tar`);
  execFileSync('tar', ['--format=posix', '--numeric-owner', '-C', source, '-cf', tarFile, '.']);
  mustRun('nydus-image', ['create', '-t', 'tar-rafs', '-B', boot, '-D', blobDir, '--compressor', 'none', '--chunk-size', '0x1000', ...extra, tarFile]);
  return boot;
}

interface BlobInfo { blob_id: string; chunk_count: number; compressed_size: number }
const blobsOf = (boot: string): BlobInfo[] => JSON.parse(mustRun('nydus-image', ['inspect', '-B', boot, '-R', 'blobs']).stdout);
const statOf = (boot: string, p: string) => JSON.parse(mustRun('nydus-image', ['inspect', '-B', boot, '-R', `stat ${p}`]).stdout);

const c = [0, 1, 2, 3].map((i) => prand(CHUNK, 100 + i));
const base = layer('base', { 'p/three': Buffer.concat([c[0], c[1], c[2]]), small: 'tiny\n' });
const upper = layer('upper', {
  // c0, c1 and c2 are the parent's; c3 and the tail are new.
  'q/mixed': Buffer.concat([c[0], c[1], c[3], Buffer.from('tail')]),
  'q/same': Buffer.concat([c[0], c[1], c[2]]),
  '.wh.small': '',
});
const baseBoot = build('base', base);
const fullBoot = build('upper-alone', upper);

/** Bytes of `file` in the image, through unpack and GNU tar. */
function contentOf(boot: string, file: string): Buffer {
  const tarFile = path.join(work, `${path.basename(boot)}-${Date.now()}.tar`);
  mustRun('nydus-image', ['unpack', '-B', boot, '-D', blobDir, '-o', tarFile]);
  return execFileSync('tar', ['-xOf', tarFile, `.${file}`]);
}

test('create --parent-bootstrap stores only the chunks the parent lacks, and the result is parent + layer', () => {
  const boot = build('upper-on-base', upper, ['--parent-bootstrap', baseBoot]);
  const alone = blobsOf(fullBoot)[0];
  const blobs = blobsOf(boot);
  assert.deepEqual(blobs.map((b) => b.blob_id).slice(0, 1), [blobsOf(baseBoot)[0].blob_id], 'the parent blob keeps index 0');
  assert.equal(blobs.length, 2);
  // Alone the layer stores c0 c1 c2 c3 tail; on the parent only c3 and tail: 3 chunks fewer,
  // each 4096 bytes of data and a 16-byte chunk-info entry.
  assert.equal(alone.chunk_count - blobs[1].chunk_count, 3);
  assert.equal(alone.compressed_size - blobs[1].compressed_size, 3 * (CHUNK + 16));
  assert.deepEqual(statOf(boot, '/q/same').chunks.map((x: any) => x.blob_id), Array(3).fill(blobs[0].blob_id));
  // The parent's tree is under the layer's, whiteouts applied.
  const tree = JSON.parse(mustRun('nydus-image', ['inspect', '-B', boot, '-R', 'chunks']).stdout).map((f: any) => f.path).sort();
  assert.deepEqual(tree, ['/p/three', '/q/mixed', '/q/same']);
  const check = mustRun('nydus-image', ['check', '-B', boot, '-D', blobDir]);
  assert.match(check.stderr, /, 5 verified\)/, 'c0 c1 c2 from the parent, c3 and the tail from the layer');
  assert.ok(contentOf(boot, '/q/mixed').equals(Buffer.concat([c[0], c[1], c[3], Buffer.from('tail')])));
});

test('create --chunk-dict references the dictionary chunks: its blob joins the table only when used', () => {
  const boot = build('upper-dict', upper, ['--chunk-dict', `bootstrap=${baseBoot}`]);
  const blobs = blobsOf(boot);
  assert.deepEqual(blobs.map((b) => b.blob_id).slice(1), [blobsOf(baseBoot)[0].blob_id]);
  assert.equal(blobsOf(fullBoot)[0].compressed_size - blobs[0].compressed_size, 3 * (CHUNK + 16));
  // Only the layer's own tree: a chunk dictionary is not a parent.
  const tree = JSON.parse(mustRun('nydus-image', ['inspect', '-B', boot, '-R', 'chunks']).stdout).map((f: any) => f.path).sort();
  assert.deepEqual(tree, ['/.wh.small', '/q/mixed', '/q/same']);
  assert.ok(contentOf(boot, '/q/same').equals(Buffer.concat([c[0], c[1], c[2]])));
  // A layer that shares nothing with the dictionary does not list its blob.
  const other = build('other-dict', layer('other', { z: prand(5000, 7) }), ['--chunk-dict', baseBoot]);
  assert.equal(blobsOf(other).length, 1);
  // A layer whose every chunk is in the dictionary writes no blob of its own.
  const before = fs.readdirSync(blobDir).length;
  const dup = build('dup-dict', layer('dup', { again: Buffer.concat([c[1], c[2]]) }), ['--chunk-dict', baseBoot]);
  assert.deepEqual(blobsOf(dup).map((b) => b.blob_id), [blobsOf(baseBoot)[0].blob_id]);
  assert.equal(fs.readdirSync(blobDir).length, before);
  mustRun('nydus-image', ['check', '-B', dup, '-D', blobDir]);
});

test('merge: one blob per layer in layer order, chunk table and chunk indexes renumbered, unused blobs dropped', () => {
  const mid = build('mid', layer('mid', { 'p/three': 'replaced\n', m: prand(9000, 8) }));
  const top = build('top', layer('top', { '.wh.m': '', t: 'top\n' }));
  const out = path.join(work, 'merged.boot');
  mustRun('nydus-image', ['merge', '-B', out, baseBoot, fullBoot, mid, top]);
  const ids = [baseBoot, fullBoot, mid, top].map((b) => blobsOf(b)[0].blob_id);
  // base's only file with data beyond `small` (whited out) is p/three, replaced by mid: base's blob is unused.
  assert.deepEqual(blobsOf(out).map((b) => b.blob_id), [ids[1], ids[2], ids[3]]);
  assert.deepEqual(statOf(out, '/q/same').chunks.map((x: any) => x.blob_id), Array(3).fill(ids[1]));
  assert.deepEqual(statOf(out, '/p/three').chunks.map((x: any) => x.blob_id), [ids[2]]);
  const stats = JSON.parse(mustRun('nydus-image', ['inspect', '-B', out]).stdout);
  // q/mixed and q/same share c0 c1 in upper's blob: 5 distinct chunks there, 1 in mid, 1 in top.
  assert.equal(stats.superblock.chunk_table.size / 80, 7);
  assert.equal(stats.superblock.extra_devices, 3);
  const check = mustRun('nydus-image', ['check', '-B', out, '-D', blobDir]);
  assert.match(check.stderr, /valid RAFS v6 image \(\d+ inodes, \d+ chunks, 7 verified\)/);
  assert.ok(contentOf(out, '/t').equals(Buffer.from('top\n')));
});

test('check, export and unpack of a merged image whose blob directory lacks some of its blobs stop with one error naming them', () => {
  const out = path.join(work, 'merged.boot');
  const ids = blobsOf(out).map((b) => b.blob_id);
  // Only the middle layer's blob is there.
  const partial = path.join(work, 'partial-blobs');
  fs.mkdirSync(partial);
  fs.copyFileSync(path.join(blobDir, ids[1]), path.join(partial, ids[1]));
  const missing = new RegExp(`^nydus-image: error: ${out}: 2 of the 3 blobs it names are missing from blob directory ${partial}: ${ids[0]}, ${ids[2]}\n$`);
  for (const args of [['check'], ['export', '--block', '-O', path.join(work, 'partial.img')], ['unpack', '-o', path.join(work, 'partial.tar')]]) {
    const r = runCli('nydus-image', [...args, '-B', out, '-D', partial]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, missing, args[0]);
  }
  assert.ok(!fs.existsSync(path.join(work, 'partial.img')) && !fs.existsSync(path.join(work, 'partial.tar')), 'no output is left');
  const one = runCli('nydus-image', ['check', '-B', out, '--blob', path.join(partial, ids[1])]);
  assert.equal(one.status, 1);
  assert.match(one.stderr, /^nydus-image: error: \S+ names 3 blobs but 1 blob path was given; give a blob directory \(-D\) or a blob path \(--blob\) for each\n$/);
});

test('merge --blob-digests, --original-blob-ids, --blob-sizes and the TOC flags rewrite each layer blob entry', () => {
  const out = path.join(work, 'renamed.boot');
  const d = ['a'.repeat(64), 'b'.repeat(64)];
  const toc = ['1'.repeat(64), '2'.repeat(64)];
  // Sizes as a registry reports the layer blobs (at least what their chunks need: the gate checks that).
  const sizes = [baseBoot, fullBoot].map((b) => blobsOf(b)[0].compressed_size + 111);
  mustRun('nydus-image', ['merge', '-B', out, '--blob-digests', d.join(','), '--blob-sizes', `${sizes[0]}, ${sizes[1]}`,
    '--blob-toc-digests', toc.join(','), '--blob-toc-sizes', '0x300,512', baseBoot, fullBoot]);
  const blobs = blobsOf(out);
  assert.deepEqual(blobs.map((b) => [b.blob_id, b.compressed_size]), [[d[0], sizes[0]], [d[1], sizes[1]]]);
  // A size that cannot hold the blob's chunks would make an image every reader refuses: merge refuses
  // it, through the same gate, and writes nothing.
  const small = path.join(work, 'too-small.boot');
  const refused = runCli('nydus-image', ['merge', '-B', small, '--blob-sizes', '111,222', baseBoot, fullBoot]);
  assert.equal(refused.status, 1);
  assert.match(refused.stderr, /merge would write a bootstrap its readers refuse .*stored range .* lies outside blob .*too-small\.boot was not written/);
  assert.equal(fs.existsSync(small), false);
  const table = openBootstrap(out).blobs;
  assert.deepEqual(table.map((b) => [b.blob_toc_digest.toString('hex'), b.blob_toc_size]), [[toc[0], 0x300], [toc[1], 512]]);
  const out2 = path.join(work, 'renamed2.boot');
  mustRun('nydus-image', ['merge', '-B', out2, '--original-blob-ids', `${'c'.repeat(64)},${'d'.repeat(64)}`, baseBoot, fullBoot]);
  assert.deepEqual(blobsOf(out2).map((b) => b.blob_id), ['c'.repeat(64), 'd'.repeat(64)]);
  // The device slots name the same blobs: the kernel finds blobs by these tags.
  const r = runCli('nydus-image', ['check', '-B', out2]);
  assert.equal(r.status, 0, r.stderr);
});

test('merge --parent-bootstrap lays the layers over a flattened image and keeps its blobs first', () => {
  const out = path.join(work, 'on-parent.boot');
  const top = build('top2', layer('top2', { '.wh.p': '', n: 'new\n' }));
  mustRun('nydus-image', ['merge', '-B', out, '--parent-bootstrap', baseBoot, fullBoot, top]);
  const paths = JSON.parse(mustRun('nydus-image', ['inspect', '-B', out, '-R', 'chunks']).stdout).map((f: any) => f.path).sort();
  assert.deepEqual(paths, ['/n', '/q/mixed', '/q/same']);
  mustRun('nydus-image', ['check', '-B', out, '-D', blobDir]);
});

test('merge --prefetch-policy fs takes the prefetch list from stdin; a path below one listed before, or not absolute, is left out with a warning (as nydus-image)', () => {
  const out = path.join(work, 'prefetch.boot');
  const r = spawnSync(path.join(repoRoot, 'bin', 'nydus-image'), ['merge', '-B', out, '--prefetch-policy', 'fs', baseBoot, fullBoot], { input: '/q/same\n/q\n/q/same/\nq\n/p/three\n/p\n', encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const table = JSON.parse(mustRun('nydus-image', ['inspect', '-B', out, '-R', 'prefetch']).stdout);
  assert.deepEqual(table.map((e: any) => e.path), [['/q/same'], ['/q'], ['/p/three'], ['/p']]);
  assert.match(r.stderr, /prefetch path \/q\/same\/ is covered by an earlier one; left out/);
  assert.match(r.stderr, /prefetch path q is not absolute; left out/);
  const again = spawnSync(path.join(repoRoot, 'bin', 'nydus-image'), ['merge', '-B', out, '--prefetch-policy', 'fs', baseBoot, fullBoot], { input: '/q\n/q/same\n', encoding: 'utf8' });
  assert.equal(again.status, 0, again.stderr);
  assert.deepEqual(JSON.parse(mustRun('nydus-image', ['inspect', '-B', out, '-R', 'prefetch']).stdout).map((e: any) => e.path), [['/q']], 'a directory listed first brings its files; the file is not listed again');
});

test('create and merge are reproducible (no build time, as nydus-image writes none); --repeatable records no owners, as nydus-image', () => {
  const src = layer('repro', { 'a/file': 'data\n', owned: 'mine\n' });
  fs.chownSync(path.join(src, 'owned'), 1234, 5678);
  // The tar layer made once: the same layer converted twice (its root entry's mtime is its content).
  const tarFile = path.join(work, 'repro.tar');
  execFileSync('tar', ['--format=posix', '--numeric-owner', '-C', src, '-cf', tarFile, '.']);
  const outs = [0, 1].map((i) => {
    // A second later (the build time nydus-ts wrote was in seconds). The root of a directory source
    // keeps its mtime (as mkfs.erofs; nydus-image leaves it out): it is the source's, not the build's.
    if (i) execFileSync('sleep', ['1.1']);
    const dir = path.join(work, `repro-${i}.boot`);
    mustRun('nydus-image', ['create', '-B', dir, '-D', blobDir, src]);
    const tarLayer = path.join(work, `repro-tar-${i}.boot`);
    mustRun('nydus-image', ['create', '-t', 'tar-rafs', '-B', tarLayer, '-D', blobDir, '--compressor', 'none', '--chunk-size', '0x1000', tarFile]);
    const merged = path.join(work, `repro-merged-${i}.boot`);
    mustRun('nydus-image', ['merge', '-B', merged, baseBoot, tarLayer]);
    return [dir, tarLayer, merged].map((f) => fs.readFileSync(f));
  });
  for (const [k, what] of ['directory create', 'tar create', 'merge'].entries()) assert.ok(outs[0][k].equals(outs[1][k]), `${what}: the same bytes twice`);
  // Owners as GNU tar reads them from the image unpacked.
  const ownerOf = (boot: string, file: string) => {
    const out = path.join(work, `${path.basename(boot)}.tar`);
    mustRun('nydus-image', ['unpack', '-B', boot, '-D', blobDir, '-o', out]);
    const line = execFileSync('tar', ['--numeric-owner', '-tvf', out], { encoding: 'utf8' }).split('\n').find((l) => l.endsWith(` ${file}`) || l.endsWith(` ./${file}`));
    assert.ok(line, `${file} in ${out}`);
    return line.split(/\s+/)[1];
  };
  assert.equal(ownerOf(path.join(work, 'repro-0.boot'), 'owned'), '1234/5678', 'owners recorded by default');
  const ownerless = path.join(work, 'repro-ownerless.boot');
  mustRun('nydus-image', ['create', '-B', ownerless, '-D', blobDir, '--repeatable', src]);
  assert.equal(ownerOf(ownerless, 'owned'), '0/0', '--repeatable: every file is root\'s');
  assert.match(mustRun('nydus-image', ['--version']).stdout, /^Version:\s*(v\S+)$/m, 'the version line acceleration-service reads');
});

function assertRefused(args: string[], pattern: RegExp, status = 1): void {
  const r = runCli('nydus-image', args);
  assert.equal(r.status, status, r.stderr);
  assert.match(r.stderr, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at |internal error/);
}

test('merge refuses what it cannot do, naming the flag or the file', () => {
  const out = path.join(work, 'refused.boot');
  assertRefused(['merge', '-B', out], /Not enough non-option arguments: got 0, need at least 1/);
  for (const flag of ['--blob-dir', '--config']) {
    assertRefused(['merge', '-B', out, flag, 'x', baseBoot], new RegExp(`${flag} is not supported`));
  }
  assertRefused(['merge', '-B', out, '--blob-digests', 'a'.repeat(64), baseBoot, fullBoot], /number of blob digest entries 1 doesn't match number of sources 2/);
  assertRefused(['merge', '-B', out, '--blob-digests', 'xyz', baseBoot], /blob digest "xyz" of layer 0 is not 64 lowercase hex digits/);
  assertRefused(['merge', '-B', out, '--blob-sizes', 'ten', baseBoot], /invalid number in --blob-sizes "ten"/);
  assertRefused(['merge', '-B', out, '--blob-toc-sizes', '1,2,3', baseBoot, fullBoot], /number of toc size entries 3 doesn't match number of sources 2/);
  assertRefused(['merge', '-B', out, '--blob-toc-digests', 'abc', baseBoot], /blob TOC digest "abc" of layer 0 is not 64 lowercase hex digits/);
  assertRefused(['merge', '-B', out, '--chunk-dict', 'boltdb=/x', baseBoot], /invalid chunk dict type "boltdb"/);
  assertRefused(['merge', '-B', out, '--prefetch-policy', 'blob', baseBoot], /--prefetch-policy blob is not supported/);
  assertRefused(['merge', '-B', out, '-W', 'aufs', baseBoot], /unsupported whiteout spec "aufs"/);
  assertRefused(['merge', '-B', out, path.join(work, 'missing.boot')], /missing\.boot: no such file/);
  fs.writeFileSync(path.join(work, 'junk.boot'), Buffer.alloc(8192));
  assertRefused(['merge', '-B', out, path.join(work, 'junk.boot')], /junk\.boot: not an EROFS/);
  const bigChunks = path.join(work, 'big-chunks.boot');
  mustRun('nydus-image', ['create', '-B', bigChunks, '-D', blobDir, '--chunk-size', '0x2000', base]);
  // Layers that cannot make one image exit 2, as nydus-image's (acceleration-service converts again without its cache).
  assertRefused(['merge', '-B', out, baseBoot, bigChunks], /layer bootstrap .*big-chunks\.boot uses chunk size 0x2000, layer bootstrap .*base\.boot uses 0x1000/, 2);
  const ownerless = build('ownerless', base, ['--repeatable']);
  assertRefused(['merge', '-B', out, baseBoot, ownerless], /layer bootstrap .*ownerless\.boot records no file owners \(built with --repeatable\), layer bootstrap .*base\.boot records file owners/, 2);
  assert.ok(!fs.existsSync(out));
  // An output that exists is replaced, as nydus-image does; a merge that fails leaves it as it was.
  const existing = path.join(work, 'existing.boot');
  fs.writeFileSync(existing, 'old');
  assertRefused(['merge', '-B', existing, path.join(work, 'junk.boot')], /junk\.boot: not an EROFS/);
  assert.equal(fs.readFileSync(existing, 'utf8'), 'old');
  mustRun('nydus-image', ['merge', '-B', existing, baseBoot]);
  assert.match(mustRun('nydus-image', ['check', existing]).stdout, /RAFS filesystem metadata is valid/);
});

test('create refuses a parent or dictionary with another digester or chunk size; compressors may differ', () => {
  const zstd = path.join(work, 'zstd.boot');
  mustRun('nydus-image', ['create', '-B', zstd, '-D', blobDir, '--chunk-size', '0x1000', base]);
  const boot = path.join(work, 'refused-create.boot');
  assertRefused(['create', '-B', boot, '-D', blobDir, '--digester', 'sha256', '--chunk-size', '0x1000', '--parent-bootstrap', zstd, upper],
    /parent bootstrap .*zstd\.boot uses digester blake3, this build uses sha256/);
  assertRefused(['create', '-B', boot, '-D', blobDir, '--chunk-size', '0x2000', '--chunk-dict', `bootstrap=${zstd}`, upper],
    /chunk dictionary .*zstd\.boot uses chunk size 0x1000, this build uses 0x2000/);
  assertRefused(['create', '-B', boot, '-D', blobDir, '--chunk-dict', 'db=x', upper], /invalid chunk dict type "db"/);
  assert.ok(!fs.existsSync(boot));
  // An uncompressed layer on a zstd parent: each blob keeps its compressor in the blob table.
  const mixed = build('mixed', upper, ['--parent-bootstrap', zstd]);
  assert.deepEqual((blobsOf(mixed) as any[]).map((b) => b.compressor), [3, 0]);
  const check = mustRun('nydus-image', ['check', '-B', mixed, '-D', blobDir]);
  assert.match(check.stderr, /, 5 verified\)/);
  assert.ok(contentOf(mixed, '/q/same').equals(Buffer.concat([c[0], c[1], c[2]])));
  // And merged with layers of the other compressor.
  const out = path.join(work, 'merged-mixed.boot');
  mustRun('nydus-image', ['merge', '-B', out, zstd, fullBoot]);
  assert.deepEqual((blobsOf(out) as any[]).map((b) => b.compressor), [3, 0]);
  assert.ok(contentOf(out, '/q/mixed').equals(Buffer.concat([c[0], c[1], c[3], Buffer.from('tail')])));
});

// ---- the daemon serves a merged image: one cache file per layer blob ----

test('nydusd serves a merged image: each layer blob is a cookie, every referenced chunk reads back', async () => {
  const zblobs = path.join(work, 'zblobs');
  const mk = (name: string, files: Record<string, Buffer | string>) => {
    const boot = path.join(work, `${name}.z.boot`);
    // -W none keeps the .wh. entries in the layer bootstrap (a lowest-layer directory build under oci
    // rules would leave them out); the merge applies them as oci whiteouts.
    createImage({ source: layer(`${name}-z`, files), bootstrap: boot, blobDir: zblobs, chunkSize: 0x40000, compressor: 'zstd', digester: 'blake3', whiteoutSpec: 'none' });
    return boot;
  };
  const l1 = mk('z1', { a: prand(700000, 21), gone: prand(300000, 22) });
  const l2 = mk('z2', { '.wh.gone': '', b: prand(500000, 23) });
  const merged = path.join(work, 'z-merged.boot');
  const { blobs } = mergeImages({ sources: [l1, l2], bootstrap: merged });
  assert.equal(blobs.length, 2);
  const state = new DaemonState(path.join(work, 'z-state'));
  const registry = new ImageRegistry(state, pino({ level: 'silent' }));
  try {
    await registry.add({
      type: 'bootstrap', id: 'merged', domain_id: '',
      config_v2: {
        version: 2, id: 'merged', backend: { type: 'localfs', localfs: { dir: zblobs } },
        cache: { type: 'fscache', fscache: { work_dir: work } }, metadata_path: merged,
      },
    });
    const port = new FakePort();
    const session = new OnDemandSession(port, registry, state, pino({ level: 'silent' }), 2);
    const image = openBootstrap(merged);
    blobs.forEach((id, i) => {
      session.handle({ type: 'open', msgId: 10 + i, objectId: i, volumeKey: 'erofs,merged', cookieKey: id, fd: port.give(100 + i), flags: 0 });
      session.handle({ type: 'read', msgId: 20 + i, objectId: i, offset: 0, len: image.blobs[i].uncompressed_size });
    });
    for (let i = 0; i < 50 && port.completed.length < 2; i++) await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(port.completed.sort(), [20, 21]);
    // Every chunk the merged tree references is in its blob's cache file, verified against its digest.
    const files = inspectImage(merged, 'chunks') as Array<{ path: string; chunks: Array<{ blob_id: string; uncompressed_offset: number; uncompressed_size: number; digest: string }> }>;
    assert.deepEqual(files.map((f) => f.path).sort(), ['/a', '/b']);
    for (const f of files) {
      for (const c of f.chunks) {
        const cache = port.files.get(100 + blobs.indexOf(c.blob_id))!;
        const bytes = cache.subarray(c.uncompressed_offset, c.uncompressed_offset + c.uncompressed_size);
        assert.equal(chunkDigest('blake3', bytes).toString('hex'), c.digest, `${f.path} chunk at ${c.uncompressed_offset}`);
      }
    }
    assert.deepEqual(port.violations, []);
  } finally {
    await registry.close();
    state.close();
  }
});
