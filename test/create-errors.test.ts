/** Bad input to `nydus-image create`: one clear line naming the file, exit status 1, nothing left behind. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { tmpDir } from './helpers/fixtures.ts';
import { mustRun, repoRoot, runCli } from './helpers/cli.ts';

const work = tmpDir('create-errors');
fs.chmodSync(work, 0o777);
after(() => fs.rmSync(work, { recursive: true, force: true }));

function assertCleanFailure(r: { status: number | null; stderr: string }, pattern: RegExp): void {
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at |internal error/, 'no stack trace, no internal error');
}

test('a missing source, a file as source, bad flags', () => {
  const boot = path.join(work, 'x.boot');
  assertCleanFailure(runCli('nydus-image', ['create', '-B', boot, '-D', work, path.join(work, 'missing')]), /source directory .*missing: does not exist/);
  fs.writeFileSync(path.join(work, 'file'), 'x');
  assertCleanFailure(runCli('nydus-image', ['create', '-B', boot, '-D', work, path.join(work, 'file')]), /is not a directory/);
  fs.mkdirSync(path.join(work, 'src'));
  assertCleanFailure(runCli('nydus-image', ['create', '-B', boot, '-D', work, '--chunk-size', '0x1234', path.join(work, 'src')]), /invalid chunk size/);
  assertCleanFailure(runCli('nydus-image', ['create', '-B', boot, '-D', work, '--compressor', 'lz4', path.join(work, 'src')]), /unsupported compressor "lz4"/);
  assertCleanFailure(runCli('nydus-image', ['create', '-B', boot, '-D', work, '--fs-version', '5', path.join(work, 'src')]), /unsupported fs version "5"/);
  // What nydus-image takes that nydus-ts has not: refused by name, the source not taken for a flag's value.
  assertCleanFailure(runCli('nydus-image', ['create', '-B', boot, '-D', work, '--encrypt', path.join(work, 'src')]), /--encrypt: encrypted images are not supported by nydus-ts/);
  assertCleanFailure(runCli('nydus-image', ['create', '-B', boot, '-D', work, '--batch-size', '0x1000', path.join(work, 'src')]), /--batch-size 0x1000: batched chunks are not supported by nydus-ts; 0 \(the default\) is/);
  for (const sub of ['compact', 'chunkdict', 'optimize', 'stat']) {
    assertCleanFailure(runCli('nydus-image', [sub, ...(sub === 'chunkdict' ? ['generate', '--database', 'x'] : ['--bootstrap', boot]), boot]), new RegExp(`nydus-image ${sub} is not implemented by nydus-ts`));
  }
  assert.ok(!fs.existsSync(boot));
  // --batch-size 0 (no batching) and --disable-check (nydus-ts checks nothing after a build) are what nydus-ts does.
  mustRun('nydus-image', ['create', '-B', boot, '-D', work, '--batch-size', '0', '--disable-check', path.join(work, 'src')]);
  assert.ok(fs.existsSync(boot));
  fs.rmSync(boot);
});

test('an unreadable file in the source (run as nobody) names the file and leaves no blob behind', () => {
  const src = path.join(work, 'locked');
  fs.mkdirSync(src);
  fs.chmodSync(src, 0o755);
  fs.writeFileSync(path.join(src, 'ok'), 'fine');
  fs.writeFileSync(path.join(src, 'secret'), 'no');
  fs.chmodSync(path.join(src, 'secret'), 0o600);
  const out = path.join(work, 'out');
  fs.mkdirSync(out, { mode: 0o777 });
  fs.chmodSync(out, 0o777);
  const r = spawnSync('runuser', ['-u', 'nobody', '--', path.join(repoRoot, 'bin/nydus-image'), 'create', '-B', path.join(out, 'b.boot'), '-D', out, src], { encoding: 'utf8' });
  assertCleanFailure({ status: r.status, stderr: r.stderr }, /cannot read .*locked\/secret: EACCES/);
  assert.deepEqual(fs.readdirSync(out), [], 'no partial blob or bootstrap');
});

test('check, inspect and unpack refuse a bootstrap given twice; inspect -D reads the blobs and names one missing', () => {
  const src = path.join(work, 'twice-src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'f'), 'data');
  const boot = path.join(work, 'twice.boot');
  const blobs = path.join(work, 'twice-blobs');
  assert.equal(runCli('nydus-image', ['create', '-B', boot, '-D', blobs, src]).status, 0);
  for (const cmd of [['check'], ['inspect'], ['unpack', '-o', path.join(work, 'twice.tar')]]) {
    assertCleanFailure(runCli('nydus-image', [...cmd, '-B', path.join(work, 'other.boot'), boot]), /give the bootstrap once: as the BOOTSTRAP argument or as -B\/--bootstrap, not both/);
  }
  const stats = runCli('nydus-image', ['inspect', boot, '-D', blobs]);
  assert.equal(stats.status, 0, stats.stderr);
  assert.equal(JSON.parse(stats.stdout).files, 1);
  const empty = path.join(work, 'no-blobs');
  fs.mkdirSync(empty);
  assertCleanFailure(runCli('nydus-image', ['inspect', boot, '-D', empty]), new RegExp(`blob .*${fs.readdirSync(blobs)[0]}`));
});

test('merge writes its progress line at --log-level info only; create -J and merge -J carry nydus-image\'s report fields', () => {
  const src = path.join(work, 'log-src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'f'), 'data');
  const boot = path.join(work, 'log.boot');
  const json = path.join(work, 'create.json');
  assert.equal(runCli('nydus-image', ['create', '-B', boot, '-D', path.join(work, 'log-blobs'), '-c', 'none', '-J', json, src]).status, 0);
  const report = JSON.parse(fs.readFileSync(json, 'utf8'));
  assert.deepEqual([report.bootstrap, report.fs_version, report.compressor, report.external_bootstrap], [boot, '6', 'none', '']);
  assert.deepEqual(report.blobs, fs.readdirSync(path.join(work, 'log-blobs')));
  const merged = path.join(work, 'merged.boot');
  const info = runCli('nydus-image', ['merge', '-B', merged, '-J', path.join(work, 'merge.json'), boot]);
  assert.match(info.stderr, /merged 1 layers into/);
  assert.equal(JSON.parse(fs.readFileSync(path.join(work, 'merge.json'), 'utf8')).compressor, 'none');
  const quiet = runCli('nydus-image', ['merge', '-B', merged, '--log-level', 'warn', boot]);
  assert.equal(quiet.status, 0, quiet.stderr);
  assert.equal(quiet.stderr, '');
});

/** A tar of 200,000 empty files in 200 directories (it gzips to a few MiB), made once. */
function manyEntriesTar(): string {
  const tar = path.join(work, 'many-entries.tar');
  if (fs.existsSync(tar)) return tar;
  const gen = spawnSync('python3', ['-c', `
import tarfile, sys
with tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT) as t:
    for d in range(200):
        for i in range(1000):
            ti = tarfile.TarInfo(f'usr/share/d{d:04d}/some-file-name-{i:06d}.txt'); ti.mode = 0o644; t.addfile(ti)
`, tar], { encoding: 'utf8' });
  assert.equal(gen.status, 0, `python3 made the tar: ${gen.stderr}`);
  return tar;
}

test('a layer of more entries than the heap holds: one clear line naming the layer and the way to a larger heap, not a crash', () => {
  const tar = manyEntriesTar();
  const boot = path.join(work, 'many.boot');
  const r = spawnSync(path.join(repoRoot, 'bin/nydus-image'), ['create', '-t', 'tar-rafs', '-B', boot, '-D', path.join(work, 'many-blobs'), tar],
    { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '--max-old-space-size=96' }, timeout: 300_000 });
  assertCleanFailure(r, /(layer .*many-entries\.tar|the layout of the image): \d+ entries fill \d+ MiB of the about 96 MiB heap .*NODE_OPTIONS=--max-old-space-size=<MiB>/);
  assert.doesNotMatch(r.stderr, /FATAL ERROR|heap out of memory/);
  assert.ok(!fs.existsSync(boot), 'no bootstrap left behind');
});

test('an image of more entries than the heap holds: check says so naming the bootstrap, not a crash', () => {
  const boot = path.join(work, 'many-big-heap.boot');
  mustRun('nydus-image', ['create', '-t', 'tar-rafs', '-B', boot, '-D', path.join(work, 'many-big-heap-blobs'), manyEntriesTar()]);
  const r = spawnSync(path.join(repoRoot, 'bin/nydus-image'), ['check', '-B', boot],
    { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '--max-old-space-size=64' }, timeout: 300_000 });
  assertCleanFailure(r, /: \d+ entries fill \d+ MiB of the about 64 MiB heap .*NODE_OPTIONS=--max-old-space-size=<MiB>/);
  assert.ok(r.stderr.includes(`${boot}: `), `the error names the bootstrap: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /FATAL ERROR|heap out of memory/);
  // With room, the same image checks clean: the limit is the heap's, not the image's.
  mustRun('nydus-image', ['check', '-B', boot]);
});

test('a directory source changed after the walk: a file swapped for a symlink (to a file outside the source), a path through a directory swapped for a symlink, or a file swapped for a FIFO is refused naming it, never read through, never waited on', async () => {
  const { treeFromDirectory } = await import('../src/builder/source-dir.ts');
  const outside = path.join(work, 'outside');
  fs.mkdirSync(path.join(outside, 'd'), { recursive: true });
  fs.writeFileSync(path.join(outside, 'secret'), 'outside the source');
  fs.writeFileSync(path.join(outside, 'd', 'f'), 'outside the source too');
  const cases: Array<[string, (src: string) => void, string]> = [
    ['file to symlink', (src) => {
      fs.rmSync(path.join(src, 'f'));
      fs.symlinkSync(path.join(outside, 'secret'), path.join(src, 'f'));
    }, '/f'],
    ['directory to symlink', (src) => {
      fs.rmSync(path.join(src, 'd'), { recursive: true });
      fs.symlinkSync(path.join(outside, 'd'), path.join(src, 'd'));
    }, '/d/f'],
    ['file to FIFO', (src) => {
      fs.rmSync(path.join(src, 'f'));
      spawnSync('mkfifo', [path.join(src, 'f')]);
    }, '/f'],
  ];
  for (const [what, swap, victim] of cases) {
    const src = path.join(work, `swap-${what.replace(/ /g, '-')}`);
    fs.mkdirSync(path.join(src, 'd'), { recursive: true });
    fs.writeFileSync(path.join(src, 'f'), 'inside the source');
    fs.writeFileSync(path.join(src, 'd', 'f'), 'inside the source');
    const tree = treeFromDirectory(src);
    const byPath = new Map<string, any>();
    const walk = (n: any) => {
      byPath.set(n.path, n);
      for (const c of n.children ?? []) walk(c);
    };
    walk(tree);
    swap(src);
    const buf = Buffer.alloc(64);
    assert.throws(() => byPath.get(victim).data.read(buf, 17, 0), new RegExp(`${victim.replace(/\//g, '\\/')} changed during the build: it is no longer the file the walk found`), what);
  }
});

test('inHole (a sparse file\'s holes, asked once a chunk): a binary search over the data ranges agrees with a scan of them', async () => {
  const { inHole } = await import('../native/fscache/index.ts');
  const ranges: Array<[number, number]> = [];
  for (let at = 100; at < 100_000; at += 997) ranges.push([at, at + 13 + (at % 50)]);
  const scan = (from: number, to: number) => !ranges.some(([a, b]) => a < to && b > from);
  for (let from = 0; from < 101_000; from += 37) {
    for (const len of [1, 7, 100, 997, 5000]) assert.equal(inHole(ranges, from, from + len), scan(from, from + len), `${from}+${len}`);
  }
  assert.equal(inHole([], 0, 10), true);
});

test('a build killed before its blob is whole leaves a temporary blob that the next build into the directory removes; one locked by a live build, or just made, stays', async () => {
  const { spawn } = await import('node:child_process');
  const src = path.join(work, 'stale-src');
  fs.mkdirSync(src);
  // Enough data that the build is still writing its blob when it is killed.
  const piece = Buffer.alloc(1 << 20);
  for (let i = 0; i < 256; i++) {
    piece.fill(i);
    piece.writeUInt32LE(i * 2654435761 >>> 0, 0);
    fs.writeFileSync(path.join(src, `f${i}`), piece);
  }
  const blobs = path.join(work, 'stale-blobs');
  fs.mkdirSync(blobs);
  const build = spawn(path.join(repoRoot, 'bin/nydus-image'), ['create', '--log-level', 'warn', '--compressor', 'none', '-B', path.join(work, 'stale.boot'), '-D', blobs, src], { stdio: 'ignore' });
  const temps = () => fs.readdirSync(blobs).filter((n) => /^\.blob-\d+-\d+\.tmp$/.test(n));
  for (let i = 0; i < 600 && temps().length === 0; i++) await new Promise((r) => setTimeout(r, 20));
  build.kill('SIGKILL');
  await new Promise((r) => build.once('exit', r));
  const left = temps();
  assert.equal(left.length, 1, `the killed build left its temporary blob (${fs.readdirSync(blobs)})`);
  // Aged past the minute a build may take to lock its own.
  const old = new Date(Date.now() - 120_000);
  fs.utimesSync(path.join(blobs, left[0]), old, old);
  // Another one held by a live build (flock(1) here), aged too, and one just made.
  const held = path.join(blobs, '.blob-1-1.tmp');
  const young = path.join(blobs, '.blob-2-2.tmp');
  fs.writeFileSync(held, 'x');
  fs.utimesSync(held, old, old);
  fs.writeFileSync(young, 'y');
  const holder = spawn('flock', [held, 'sleep', '60'], { stdio: 'ignore' });
  try {
    await new Promise((r) => setTimeout(r, 300));
    const small = path.join(work, 'stale-small');
    fs.mkdirSync(small);
    fs.writeFileSync(path.join(small, 'a'), 'a');
    mustRun('nydus-image', ['create', '--log-level', 'warn', '-B', path.join(work, 'stale2.boot'), '-D', blobs, small]);
    assert.deepEqual(temps().sort(), ['.blob-1-1.tmp', '.blob-2-2.tmp'], 'the stale one is gone; the locked one and the young one stay');
  } finally {
    holder.kill('SIGKILL');
  }
});

test('the prefetch list on stdin is read as nydus-image reads it and bounded: a line that is not UTF-8 is refused naming it, a path longer than PATH_MAX left out with a short warning, white space at a line\'s ends said, `.` parts dropped, a file named twice listed once, a list past 64 MiB refused (found by the prefetch probe)', async () => {
  const { spawnSync: spawnBytes } = await import('node:child_process');
  const src = path.join(work, 'plist-src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'trail '), 'with a space');
  fs.writeFileSync(path.join(src, 'trail'), 'without');
  const create = (input: Buffer | string, name: string) => spawnBytes(path.join(repoRoot, 'bin/nydus-image'),
    ['create', '--prefetch-policy', 'fs', '-B', path.join(work, `${name}.boot`), '-D', path.join(work, `${name}-blobs`), src],
    { input, encoding: 'utf8', timeout: 120_000, maxBuffer: 1 << 26 });
  const bad = create(Buffer.concat([Buffer.from('/trail\n/bad'), Buffer.from([0xfe]), Buffer.from('\n')]), 'plist-utf8');
  assert.equal(bad.status, 1, bad.stderr);
  assert.match(bad.stderr, /the prefetch list \(standard input\): line 2 is not UTF-8/);
  const long = create(`/${'x'.repeat(1 << 20)}\n/trail \n`, 'plist-long');
  assert.equal(long.status, 0, long.stderr);
  assert.match(long.stderr, /prefetch path on line 1 is 1048577 bytes, longer than a path can be \(starts "\/x{63}"\); left out/);
  assert.ok(long.stderr.length < 4096, `the warnings are short (${long.stderr.length} bytes)`);
  assert.match(long.stderr, /prefetch path "\/trail " has white space at an end; read as "\/trail", as nydus-image reads it/);
  // `.` parts are no parts (as Rust's Path compares them); two names of one file are one entry.
  fs.writeFileSync(path.join(src, 'hl1'), 'linked');
  fs.linkSync(path.join(src, 'hl1'), path.join(src, 'hl2'));
  assert.equal(create('/./trail\n/hl1\n/hl2\n', 'plist-dots').status, 0);
  const table = JSON.parse(mustRun('nydus-image', ['inspect', path.join(work, 'plist-dots.boot'), '-R', 'prefetch']).stdout) as Array<{ path: string[] }>;
  assert.deepEqual(table.map((e) => e.path), [['/trail'], ['/hl1', '/hl2']]);
  const huge = create(Buffer.alloc(65 << 20, 0x0a), 'plist-huge');
  assert.equal(huge.status, 1);
  assert.match(huge.stderr, /the prefetch list \(standard input\) holds more than 64 MiB/);
});

test('a source entry whose path from the root is past PATH_MAX is refused in one short line, as a layer tar\'s is (found by the scale probe: the whole path, twice, 8.7 KB)', () => {
  const src = path.join(work, 'deep-src');
  fs.mkdirSync(src);
  // 20 levels of 250-byte names: 5,020 bytes from the root (made through relative steps: no absolute path that long is opened).
  const name = 'n'.repeat(250);
  const made = spawnSync('python3', ['-c', `
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
for i in range(20):
    os.mkdir(sys.argv[2], dir_fd=fd); n = os.open(sys.argv[2], os.O_RDONLY, dir_fd=fd); os.close(fd); fd = n
`, src, name], { encoding: 'utf8' });
  assert.equal(made.status, 0, made.stderr);
  const r = runCli('nydus-image', ['create', '-B', path.join(work, 'deep.boot'), '-D', path.join(work, 'deep-blobs'), src]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /the entry "\/n{127}"\.\.\. \(\d+ bytes\) is longer than 4095 bytes from the root \(PATH_MAX - 1\): no process could name it/);
  assert.ok(r.stderr.length < 600, `one short line (${r.stderr.length} bytes)`);
  // (rm(1) walks a tree past PATH_MAX; fs.rmSync opens each entry by its whole path.)
  spawnSync('rm', ['-rf', src]);
});
