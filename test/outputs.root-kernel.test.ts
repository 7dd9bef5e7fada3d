/**
 * Where nydus-image's outputs land, and sources it must take as a user means them: /dev/null and
 * /dev/stdout are written into, never replaced by a regular file (as root that would destroy them for
 * the whole system); standard input is never an output; a symlink to an output file keeps pointing at
 * the new one; a source directory given through a symlink is its target; symlinks with several names
 * keep one inode; merge refuses what would make a bootstrap its readers refuse; an option given twice
 * is named. The /dev cases run in a mount namespace of their own over a scratch /dev, so a failure
 * cannot touch this machine's.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { tmpDir } from './helpers/fixtures.ts';
import { manifest, diffManifests } from './helpers/manifest.ts';
import { loopMount, umount } from './helpers/mount.ts';
import { mustRun, repoRoot, runCli } from './helpers/cli.ts';

const work = tmpDir('outputs');
const mounts: string[] = [];
after(() => {
  for (const m of mounts) umount(m);
  fs.rmSync(work, { recursive: true, force: true });
});

function source(name: string): string {
  const dir = path.join(work, name);
  fs.mkdirSync(path.join(dir, 'd'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'f'), 'hello\n'.repeat(5000));
  fs.writeFileSync(path.join(dir, 'd', 'g'), 'world\n');
  return dir;
}

function mounted(image: string, name: string): string {
  const dir = path.join(work, 'mnt', name);
  loopMount(image, dir);
  mounts.push(dir);
  return dir;
}

test('root-kernel outputs: /dev/null and /dev/stdout are written into and stay what they are; - (standard input) is refused as an output', () => {
  const src = source('dev-src');
  const boot = path.join(work, 'dev.boot');
  const blobDir = path.join(work, 'dev-blobs');
  mustRun('nydus-image', ['create', '-B', boot, '-D', blobDir, src]);
  const img = path.join(repoRoot, 'bin/nydus-image');
  const q = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;
  // In a mount namespace of its own, over a tmpfs /dev holding only what the commands need.
  const script = `set -u
mount -t tmpfs devtmp /dev
mknod -m 666 /dev/null c 1 3
ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
show() { echo "STATE $1 $(stat -c %F /dev/null) / $(stat -c %F /dev/stdout) / $(stat -c %F /dev/stdin)"; }
${img} unpack ${q(boot)} -D ${q(blobDir)} -o /dev/null >/dev/null 2>&1; echo "RC unpack-null $?"; show unpack-null
${img} export --block -B ${q(boot)} -D ${q(blobDir)} -O /dev/null >/dev/null 2>&1; echo "RC export-null $?"; show export-null
${img} create -B ${q(path.join(work, 'dev2.boot'))} --blob /dev/null ${q(src)} >/dev/null 2>&1; echo "RC create-blob-null $?"; show create-blob-null
${img} unpack ${q(boot)} -D ${q(blobDir)} -o /dev/stdout > ${q(path.join(work, 'stdout.tar'))} 2>/dev/null; echo "RC unpack-stdout $?"; show unpack-stdout
${img} unpack ${q(boot)} -D ${q(blobDir)} -o - </dev/null >/dev/null 2>${q(path.join(work, 'dash.err'))}; echo "RC unpack-dash $?"; show unpack-dash
${img} create -B - -D ${q(blobDir)} ${q(src)} </dev/null >/dev/null 2>&1; echo "RC create-dash $?"; show create-dash
`;
  const r = spawnSync('unshare', ['-m', 'bash', '-c', script], { encoding: 'utf8', timeout: 300_000 });
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  const rc = Object.fromEntries(lines.filter((l) => l.startsWith('RC ')).map((l) => l.split(' ').slice(1)));
  assert.deepEqual(rc, { 'unpack-null': '0', 'export-null': '0', 'create-blob-null': '0', 'unpack-stdout': '0', 'unpack-dash': '1', 'create-dash': '1' });
  for (const l of lines.filter((x) => x.startsWith('STATE '))) {
    assert.match(l, / character special file \/ symbolic link \/ symbolic link$/, `after ${l.split(' ')[1]}, /dev/null, /dev/stdout and /dev/stdin are as they were: ${l}`);
  }
  // The tar written into /dev/stdout is the image's tree (GNU tar lists it).
  const listed = execFileSync('tar', ['-tf', path.join(work, 'stdout.tar')], { encoding: 'utf8' }).trim().split('\n').sort();
  assert.deepEqual(listed, ['./', './d/', './d/g', './f'].sort());
  assert.match(fs.readFileSync(path.join(work, 'dash.err'), 'utf8'), /cannot write an output to \/dev\/stdin: that is standard input/);
});

test('outputs: a symlink to the output file stays a symlink and names the new file; a directory is refused', () => {
  const src = source('link-src');
  const real = path.join(work, 'real.boot');
  const link = path.join(work, 'link.boot');
  fs.writeFileSync(real, 'old');
  fs.symlinkSync(real, link);
  mustRun('nydus-image', ['create', '-B', link, '-D', path.join(work, 'link-blobs'), src]);
  assert.ok(fs.lstatSync(link).isSymbolicLink(), 'the link is kept');
  assert.notEqual(fs.readFileSync(real, 'utf8'), 'old', 'the file it names was replaced');
  mustRun('nydus-image', ['check', '-B', link, '-D', path.join(work, 'link-blobs')]);
  const r = runCli('nydus-image', ['unpack', link, '-D', path.join(work, 'link-blobs'), '-o', work]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, new RegExp(`cannot write ${work}: it is a directory`));
});

test('root-kernel sources: a directory given through a symlink is built as its target; a symlink with two names keeps one inode', () => {
  const src = source('sym-src');
  fs.symlinkSync('f', path.join(src, 'ln'));
  // link(2) of the symlink itself: two names, one inode, nlink 2.
  execFileSync('python3', ['-c', 'import os,sys; os.link(sys.argv[1], sys.argv[2], follow_symlinks=False)', path.join(src, 'ln'), path.join(src, 'd', 'ln2')]);
  assert.equal(fs.lstatSync(path.join(src, 'ln')).nlink, 2);
  const via = path.join(work, 'via-link');
  fs.symlinkSync(src, via);
  const boot = path.join(work, 'sym.boot');
  const blobDir = path.join(work, 'sym-blobs');
  mustRun('nydus-image', ['create', '-B', boot, '-D', blobDir, via]);
  mustRun('nydus-image', ['check', '-B', boot, '-D', blobDir]);
  const img = path.join(work, 'sym.img');
  mustRun('nydus-image', ['export', '--block', '-B', boot, '-D', blobDir, '-O', img]);
  const dir = mounted(img, 'sym');
  assert.deepEqual(diffManifests(manifest(src), manifest(dir)).slice(0, 20), [], 'the image is the target directory');
  const [a, b] = [fs.lstatSync(path.join(dir, 'ln')), fs.lstatSync(path.join(dir, 'd', 'ln2'))];
  assert.deepEqual([a.isSymbolicLink(), a.nlink, b.nlink, a.ino === b.ino], [true, 2, 2, true], 'one symlink inode under two names');
});

test('merge: blob ids, digests or sizes that would make a bootstrap its readers refuse are refused, and nothing is written', () => {
  const [lower, upper] = ['lower', 'upper'].map((n) => {
    const s = source(`merge-${n}`);
    fs.writeFileSync(path.join(s, `${n}-only`), `${n}\n`.repeat(100));
    const boot = path.join(work, `${n}.boot`);
    mustRun('nydus-image', ['create', '-B', boot, '-D', path.join(work, 'merge-blobs'), s]);
    return boot;
  });
  const out = path.join(work, 'merged.boot');
  const a = 'a'.repeat(64);
  const cases: Array<[string[], RegExp]> = [
    [['--original-blob-ids', 'x,y'], /merge would write a bootstrap its readers refuse .*invalid blob id "x"/],
    [['--blob-sizes', '1,1'], /merge would write a bootstrap its readers refuse .*outside blob/],
    [['--blob-digests', `${a},${a}`], new RegExp(`layers 0 and 1 \\(blobs [0-9a-f]{64} and [0-9a-f]{64}\\) would both have blob id ${a} in the merged image`)],
  ];
  for (const [flags, message] of cases) {
    const r = runCli('nydus-image', ['merge', '-B', out, ...flags, lower, upper]);
    assert.equal(r.status, 1, `${flags.join(' ')}: ${r.stdout}`);
    assert.match(r.stderr, message);
    assert.equal(fs.existsSync(out), false, 'no bootstrap was written');
  }
  mustRun('nydus-image', ['merge', '-B', out, lower, upper]);
  mustRun('nydus-image', ['check', '-B', out, '-D', path.join(work, 'merge-blobs')]);
});

test('an option given twice is refused naming it, never an internal error (nydus-image, nydusify, nydusctl)', () => {
  const src = source('twice-src');
  const boot = path.join(work, 'twice.boot');
  mustRun('nydus-image', ['create', '-B', boot, '-D', path.join(work, 'twice-blobs'), src]);
  const cases: Array<[string[], string]> = [
    [['create', '-B', 'a.boot', '-B', 'b.boot', src], '--bootstrap'],
    [['unpack', boot, '-o', 'a.tar', '--output', 'b.tar'], '--output'],
    [['inspect', boot, '-R', 'stats', '-R', 'blobs'], '--request'],
  ];
  for (const [args, flag] of cases) {
    const r = runCli('nydus-image', args);
    assert.deepEqual([r.status, r.stderr], [1, `nydus-image: error: ${flag} is given more than once\n`], args.join(' '));
  }
  // The other CLIs alike.
  for (const [cli, args, flag] of [['nydusify', ['convert', '--source', 'a', '--source', 'b', '--target', 'c'], '--source'], ['nydusctl', ['--sock', '/x', '--sock', '/y', 'info'], '--sock']] as const) {
    const r = runCli(cli, [...args]);
    assert.deepEqual([r.status, r.stderr], [1, `${cli}: error: ${flag} is given more than once\n`]);
  }
});
