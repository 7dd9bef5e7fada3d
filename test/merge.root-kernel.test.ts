/**
 * `nydus-image merge` and layered `create`, judged by the kernel: three layers with deletions, opaque
 * directories, type changes, hardlinks and xattrs are written once in OCI form (for our builder) and
 * once in overlayfs form; the kernel's overlayfs over the latter is the oracle for the flattened tree,
 * compared entry by entry with a loop mount of the export of our merged image. Needs root.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { prand, tmpDir } from './helpers/fixtures.ts';
import { manifest, diffManifests } from './helpers/manifest.ts';
import { fileBackedMount, loopMount, umount } from './helpers/mount.ts';
import { mustRun, runCli } from './helpers/cli.ts';
import { type LayerEntry, type WhiteoutForm, writeLayer } from './helpers/layers.ts';

const work = tmpDir('merge-kernel');
const blobDir = path.join(work, 'blobs');
const mounts: string[] = [];
const big = prand(2 * 1024 * 1024 + 777, 11);

const LAYERS: LayerEntry[][] = [
  [
    { path: 'keep', type: 'dir', xattrs: { 'user.layer': '1' } },
    { path: 'keep/a', type: 'file', data: 'a from layer 1\n' },
    { path: 'keep/gone-file', type: 'file', data: 'deleted by layer 2\n' },
    { path: 'keep/big', type: 'file', data: big },
    { path: 'hard1', type: 'file', data: 'shared inode\n', xattrs: { 'user.h': 'x' } },
    { path: 'hard2', type: 'hardlink', target: 'hard1' },
    { path: 'keep/hard3', type: 'hardlink', target: 'hard1' },
    { path: 'f2d', type: 'file', data: 'becomes a directory\n' },
    { path: 'd2f/inner/deep', type: 'file', data: 'deep\n' },
    { path: 'deldir/sub/x', type: 'file', data: 'x\n' },
    { path: 'opq/a', type: 'file', data: 'hidden by opaque\n' },
    { path: 'opq/sub/b', type: 'file', data: 'hidden too\n' },
    { path: 'link', type: 'symlink', target: 'keep/a' },
    { path: 'chr', type: 'chrdev', major: 1, minor: 3 },
    { path: 'fifo', type: 'fifo' },
    { path: 'owned', type: 'file', data: 'owned\n', mode: 0o640, owner: [1000, 2000] },
    { path: 'repl', type: 'file', data: 'old content\n' },
  ],
  [
    { path: 'keep', type: 'dir', mode: 0o750, xattrs: { 'user.layer': '2' } },
    { path: 'keep/gone-file', type: 'whiteout' },
    { path: 'keep/new', type: 'file', data: 'new in layer 2, deleted by layer 3\n' },
    { path: 'keep/big2', type: 'file', data: big },
    { path: 'f2d', type: 'dir' },
    { path: 'f2d/child', type: 'file', data: 'child of a dir that was a file\n' },
    { path: 'd2f', type: 'file', data: 'a file where a directory was\n' },
    { path: 'deldir', type: 'whiteout' },
    { path: 'opq', type: 'dir', opaque: true, xattrs: { 'user.o': 'y' } },
    { path: 'opq/c', type: 'file', data: 'only this survives\n' },
    { path: 'l2a', type: 'file', data: 'layer 2 hardlink\n', owner: [5, 6] },
    { path: 'l2b', type: 'hardlink', target: 'l2a' },
  ],
  [
    { path: 'keep/new', type: 'whiteout' },
    { path: 'deldir/fresh', type: 'file', data: 'recreated after deletion\n' },
    { path: 'repl', type: 'file', data: 'new content\n', mode: 0o600 },
    { path: 'link', type: 'whiteout' },
    { path: 'opq/d', type: 'file', data: 'added over the opaque dir\n' },
    { path: 'chr2', type: 'chrdev', major: 4, minor: 64 },
  ],
];

function layerDir(form: WhiteoutForm, i: number): string {
  return path.join(work, `${form}-layer${i + 1}`);
}

/**
 * A layer bootstrap as images carry layers: the directory as a GNU tar, built with -t tar-rafs, which
 * keeps its whiteouts (a lowest-layer directory build leaves them out, as nydus does).
 */
function create(boot: string, source: string, extra: string[] = []): void {
  const tarFile = `${boot}.tar`;
  tool('tar', ['--format=posix', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', source, '-cf', tarFile, '.'], 'tar');
  mustRun('nydus-image', ['create', '-t', 'tar-rafs', '-B', boot, '-D', blobDir, ...extra, tarFile]);
}

let oracle: Map<string, string>;
const ociBoots: string[] = [];

before(() => {
  for (const form of ['oci', 'overlayfs'] as const) LAYERS.forEach((l, i) => writeLayer(layerDir(form, i), l, form));
  const ovl = path.join(work, 'mnt', 'overlay');
  fs.mkdirSync(ovl, { recursive: true });
  const lower = LAYERS.map((_, i) => layerDir('overlayfs', i)).reverse().join(':');
  execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower}`, ovl], { stdio: 'pipe' });
  try {
    oracle = manifest(ovl);
  } finally {
    umount(ovl);
  }
  LAYERS.forEach((_, i) => {
    const boot = path.join(work, `oci-layer${i + 1}.boot`);
    create(boot, layerDir('oci', i));
    ociBoots.push(boot);
  });
});

after(() => {
  for (const m of mounts) if (fs.existsSync(m)) try { umount(m); } catch { /* not mounted */ }
  fs.rmSync(work, { recursive: true, force: true });
});

/** Exports `boot`, checks it with fsck.erofs and our checker, and compares its loop mount with the oracle. */
function assertFlattened(boot: string, name: string): void {
  const json = path.join(work, `${name}.check.json`);
  mustRun('nydus-image', ['check', '-B', boot, '-D', blobDir, '-J', json]);
  const report = JSON.parse(fs.readFileSync(json, 'utf8'));
  const stats = JSON.parse(mustRun('nydus-image', ['inspect', '-B', boot]).stdout);
  assert.equal(report.verifiedChunks, stats.superblock.chunk_table.size / 80, 'every chunk of the chunk table is read and verified');
  const img = path.join(work, `${name}.erofs`);
  mustRun('nydus-image', ['export', '--block', '-B', boot, '-D', blobDir, '-O', img]);
  execFileSync('fsck.erofs', [img], { stdio: 'pipe' });
  assertSameAsOracle(name, (dir) => loopMount(img, dir));
}

function assertSameAsOracle(name: string, mount: (dir: string) => void): void {
  const dir = path.join(work, 'mnt', name);
  mounts.push(dir);
  mount(dir);
  try {
    assert.deepEqual(diffManifests(oracle, manifest(dir)).slice(0, 30), [], `${name} differs from overlayfs over the same layers`);
  } finally {
    umount(dir);
  }
}

function inspect(boot: string, request: string): any {
  return JSON.parse(mustRun('nydus-image', ['inspect', '-B', boot, '-R', request]).stdout);
}

const blobIdOf = (boot: string): string => inspect(boot, 'blobs')[0].blob_id;

test('root-kernel: the oracle holds what the layers say', () => {
  const names = [...oracle.keys()].map((k) => k.split('/').map((h) => Buffer.from(h, 'hex').toString()).join('/'));
  for (const want of ['/keep/a', '/keep/big2', '/f2d/child', '/d2f', '/deldir/fresh', '/opq/c', '/opq/d', '/hard2', '/l2b']) assert.ok(names.includes(want), want);
  for (const gone of ['/keep/gone-file', '/keep/new', '/deldir/sub', '/opq/a', '/opq/sub', '/link', '/d2f/inner']) assert.ok(!names.includes(gone), gone);
  assert.ok(!names.some((n) => n.includes('.wh.')));
});

/** Runs a tool the test cannot do without, failing with what to install when it is missing. */
function tool(cmd: string, args: string[], pkg: string): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`${cmd} is needed for this test: apt-get install ${pkg}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
}

/** umoci's unpack of OCI layer tars made by GNU tar from `dirs` (lowest first); returns the rootfs. */
function umociUnpack(dirs: string[], name: string): string {
  const layout = path.join(work, `${name}-layout`);
  tool('umoci', ['init', '--layout', layout], 'umoci');
  tool('umoci', ['new', '--image', `${layout}:img`], 'umoci');
  dirs.forEach((dir, i) => {
    const tarFile = path.join(work, `${name}-layer${i + 1}.tar`);
    tool('tar', ['--format=posix', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', dir, '-cf', tarFile, '.'], 'tar');
    tool('umoci', ['raw', 'add-layer', '--image', `${layout}:img`, tarFile], 'umoci');
  });
  const bundle = path.join(work, `${name}-bundle`);
  tool('umoci', ['unpack', '--image', `${layout}:img`, bundle], 'umoci');
  return path.join(bundle, 'rootfs');
}

test('root-kernel: umoci unpacks the same layers, as OCI layer tars, to the same tree as overlayfs', () => {
  // A second, independent oracle: an OCI implementation applying the .wh. entries of real layer tars.
  const rootfs = umociUnpack(LAYERS.map((_, i) => layerDir('oci', i)), 'umoci');
  assert.deepEqual(diffManifests(oracle, manifest(rootfs)).slice(0, 30), []);
});

test('root-kernel: a hardlink group loses the links later layers delete, as umoci unpacks it', () => {
  // overlayfs would still count the deleted link (it shows the lower inode's nlink); an unpacked image does not.
  const dirs = [
    writeLayer(path.join(work, 'links1'), [
      { path: 'h1', type: 'file', data: 'linked\n' }, { path: 'h2', type: 'hardlink', target: 'h1' },
      { path: 'd/h3', type: 'hardlink', target: 'h1' }, { path: 'd/h4', type: 'hardlink', target: 'h1' },
    ], 'oci'),
    writeLayer(path.join(work, 'links2'), [{ path: 'h2', type: 'whiteout' }, { path: 'd', type: 'dir', opaque: true }], 'oci'),
  ];
  const want = manifest(umociUnpack(dirs, 'links'));
  const boots = dirs.map((d, i) => {
    const boot = path.join(work, `links${i + 1}.boot`);
    create(boot, d);
    return boot;
  });
  const boot = path.join(work, 'links-merged.boot');
  mustRun('nydus-image', ['merge', '-B', boot, ...boots]);
  const img = path.join(work, 'links.erofs');
  mustRun('nydus-image', ['export', '--block', '-B', boot, '-D', blobDir, '-O', img]);
  const dir = path.join(work, 'mnt', 'links');
  mounts.push(dir);
  loopMount(img, dir);
  try {
    const got = manifest(dir);
    assert.deepEqual(diffManifests(want, got), []);
    assert.equal(JSON.parse(got.get(`/${Buffer.from('h1').toString('hex')}`)!).nlink, '1');
  } finally {
    umount(dir);
  }
});

test('root-kernel: merge of OCI-form layers mounts as overlayfs shows the same layers', () => {
  const boot = path.join(work, 'merged-oci.boot');
  const json = path.join(work, 'merged-oci.json');
  mustRun('nydus-image', ['merge', '--bootstrap', boot, '-J', json, ...ociBoots]);
  // One blob per layer, in layer order; chunks stay in the blob of the layer that brought the file.
  const layerBlobs = ociBoots.map(blobIdOf);
  const report = JSON.parse(fs.readFileSync(json, 'utf8'));
  assert.deepEqual(report.blobs, layerBlobs);
  assert.equal(report.fs_version, '6');
  assert.equal(report.compressor, 'zstd');
  assert.deepEqual(inspect(boot, 'blobs').map((b: any) => b.blob_id), layerBlobs);
  for (const [file, layer] of [['/keep/big', 0], ['/keep/big2', 1], ['/f2d/child', 1], ['/repl', 2], ['/hard2', 0]] as const) {
    const chunks = inspect(boot, `stat ${file}`).chunks as Array<{ blob_id: string }>;
    assert.ok(chunks.length > 0 && chunks.every((c) => c.blob_id === layerBlobs[layer]), `${file} reads from layer ${layer + 1}'s blob`);
  }
  assertFlattened(boot, 'merged-oci');
});

test('root-kernel: the merged bootstrap mounts straight over the uncompressed layer blobs, one device per layer', () => {
  // No export in between: the kernel follows the merged device table and chunk indexes into the layer blobs.
  const boots = LAYERS.map((_, i) => {
    const boot = path.join(work, `none-layer${i + 1}.boot`);
    create(boot, layerDir('oci', i), ['--compressor', 'none']);
    return boot;
  });
  const boot = path.join(work, 'merged-none.boot');
  mustRun('nydus-image', ['merge', '-B', boot, ...boots]);
  const blobs = (inspect(boot, 'blobs') as Array<{ blob_id: string }>).map((b) => path.join(blobDir, b.blob_id));
  assert.equal(blobs.length, 3);
  execFileSync('fsck.erofs', [...blobs.map((b) => `--device=${b}`), boot], { stdio: 'pipe' });
  assertSameAsOracle('merged-none-file-backed', (dir) => fileBackedMount(boot, blobs, dir));
});

test('root-kernel: merge -W overlayfs of overlayfs-form layers gives the same tree', () => {
  const boots = LAYERS.map((_, i) => {
    const boot = path.join(work, `ovl-layer${i + 1}.boot`);
    create(boot, layerDir('overlayfs', i));
    return boot;
  });
  const boot = path.join(work, 'merged-ovl.boot');
  mustRun('nydus-image', ['merge', '-B', boot, '--whiteout-spec', 'overlayfs', ...boots]);
  assertFlattened(boot, 'merged-ovl');
});

test('root-kernel: create --parent-bootstrap layer by layer gives the same tree and stores no chunk twice', () => {
  let parent = ociBoots[0];
  for (let i = 1; i < LAYERS.length; i++) {
    const boot = path.join(work, `stacked${i + 1}.boot`);
    create(boot, layerDir('oci', i), ['--parent-bootstrap', parent]);
    parent = boot;
  }
  const blobs = inspect(parent, 'blobs') as Array<{ blob_id: string; chunk_count: number }>;
  assert.equal(blobs[0].blob_id, blobIdOf(ociBoots[0]), 'the parent blob comes first');
  // keep/big2 of layer 2 has the bytes of keep/big of layer 1: its chunks are the parent's.
  const big1 = inspect(parent, 'stat /keep/big').chunks.map((c: any) => [c.blob_id, c.chunk_index]);
  const big2 = inspect(parent, 'stat /keep/big2').chunks.map((c: any) => [c.blob_id, c.chunk_index]);
  assert.deepEqual(big2, big1);
  assertFlattened(parent, 'stacked');
});

test('root-kernel: a layer built with --chunk-dict merges with the same dictionary', () => {
  const boot2 = path.join(work, 'dict-layer2.boot');
  create(boot2, layerDir('oci', 1), ['--chunk-dict', `bootstrap=${ociBoots[0]}`]);
  const blobs = inspect(boot2, 'blobs') as Array<{ blob_id: string }>;
  assert.deepEqual(blobs.map((b) => b.blob_id).slice(1), [blobIdOf(ociBoots[0])], 'the dictionary blob follows the layer blob');
  const boot = path.join(work, 'merged-dict.boot');
  const r = runCli('nydus-image', ['merge', '-B', boot, ociBoots[0], boot2, ociBoots[2]]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /dict-layer2\.boot: it has more than one data blob of its own/);
  mustRun('nydus-image', ['merge', '-B', boot, '--chunk-dict', `bootstrap=${ociBoots[0]}`, ociBoots[0], boot2, ociBoots[2]]);
  assertFlattened(boot, 'merged-dict');
});
