/**
 * Bad input to check, inspect, export and unpack: corrupt, truncated and foreign bootstraps give a
 * NydusError naming the file (the CLI prints it in one line and exits 1), never another exception,
 * a hang or a crash.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { NydusError } from '../erofs/errors.ts';
import { createImage } from '../src/builder/create.ts';
import { checkImage } from '../src/image/check.ts';
import { inspectImage } from '../src/image/inspect.ts';
import { exportBlock } from '../src/image/export-block.ts';
import { unpackToTar } from '../src/image/unpack.ts';
import { prand, tmpDir } from './helpers/fixtures.ts';
import { runCli } from './helpers/cli.ts';

const work = tmpDir('corrupt');
const boot = path.join(work, 'good.boot');
const blobDir = path.join(work, 'blobs');
let good: Buffer;

before(() => {
  const src = path.join(work, 'src');
  fs.mkdirSync(path.join(src, 'dir/sub'), { recursive: true });
  fs.writeFileSync(path.join(src, 'a'), prand(300000, 1));
  fs.writeFileSync(path.join(src, 'dir/b'), 'bbb');
  fs.writeFileSync(path.join(src, 'dir/sub/c'), prand(5000, 2));
  fs.symlinkSync('dir/b', path.join(src, 'ln'));
  for (let i = 0; i < 40; i++) fs.writeFileSync(path.join(src, 'dir', `f${i}`), `file ${i}`);
  createImage({ source: src, bootstrap: boot, blobDir, chunkSize: 0x10000, compressor: 'zstd', digester: 'blake3' });
  good = fs.readFileSync(boot);
});

after(() => fs.rmSync(work, { recursive: true, force: true }));

/** Every operation on `file` either succeeds or throws a NydusError that names a file. */
function exercise(file: string): number {
  let failures = 0;
  const ops: Array<() => unknown> = [
    () => checkImage({ bootstrap: file, blobDir }),
    () => inspectImage(file, 'stats'),
    () => inspectImage(file, 'chunks'),
    () => {
      const out = path.join(work, 'out.img');
      fs.rmSync(out, { force: true });
      return exportBlock({ bootstrap: file, blobDir, output: out });
    },
    () => {
      const out = path.join(work, 'out.tar');
      fs.rmSync(out, { force: true });
      return unpackToTar({ bootstrap: file, blobDir, output: out });
    },
  ];
  for (const op of ops) {
    try {
      op();
    } catch (e) {
      failures++;
      assert.ok(e instanceof NydusError, `${file}: expected a NydusError, got ${(e as Error)?.stack}`);
      assert.ok(e.message.includes(file) || e.message.includes(blobDir), `error does not name the file: ${e.message}`);
    }
  }
  return failures;
}

test('the good image passes every operation', () => {
  assert.equal(exercise(boot), 0);
});

test('1,000 random corruptions never crash, hang or escape as a foreign exception', { timeout: 600_000 }, () => {
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const file = path.join(work, 'bad.boot');
  let detected = 0;
  for (let i = 0; i < 1000; i++) {
    const buf = Buffer.from(good);
    // Aim half of the hits at the first block (superblocks, tables, inodes) where it matters most.
    const at = i % 2 ? rnd(4096) : rnd(buf.length);
    const len = 1 + rnd(4);
    for (let k = 0; k < len && at + k < buf.length; k++) buf[at + k] = rnd(256);
    fs.writeFileSync(file, buf);
    if (exercise(file) > 0) detected++;
  }
  assert.ok(detected > 100, `only ${detected} corruptions were detected`);
});

test('truncated and foreign bootstraps are refused with a clear message', () => {
  const file = path.join(work, 'trunc.boot');
  for (const len of [0, 100, 1024, 1100, 1200, 4095, 4096, 8000, good.length - 1]) {
    fs.writeFileSync(file, good.subarray(0, len));
    assert.ok(exercise(file) > 0, `truncation to ${len} bytes went unnoticed`);
  }
  fs.writeFileSync(file, prand(16384, 9));
  assert.equal(exercise(file), 5);
  assert.equal(exercise(path.join(work, 'missing.boot')), 5);
});

test('CLI: a corrupt bootstrap is one line on stderr and exit status 1', () => {
  const file = path.join(work, 'cli.boot');
  const buf = Buffer.from(good);
  buf.writeUInt32LE(0xdeadbeef, 1024);
  fs.writeFileSync(file, buf);
  for (const args of [['check', '-B', file], ['inspect', '-B', file], ['export', '--block', '-B', file, '-D', blobDir, '-O', path.join(work, 'x.img')], ['unpack', '-B', file, '-D', blobDir, '-o', path.join(work, 'x.tar')]]) {
    const r = runCli('nydus-image', args, { timeoutMs: 60_000 });
    assert.equal(r.status, 1, `${args[0]}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^nydus-image: error: ${file.replace(/[.]/g, '\\.')}: not an EROFS/RAFS v6 image`));
    assert.equal(r.stderr.trim().split('\n').length, 1);
  }
  assert.ok(!fs.existsSync(path.join(work, 'x.img')) && !fs.existsSync(path.join(work, 'x.tar')), 'no partial output is left behind');
});

test('a corrupt chunk in the blob is an I/O error on read, not wrong bytes', () => {
  const blob = path.join(blobDir, fs.readdirSync(blobDir)[0]);
  const copyDir = path.join(work, 'badblob');
  fs.mkdirSync(copyDir, { recursive: true });
  const data = fs.readFileSync(blob);
  data[100] ^= 0xff;
  fs.writeFileSync(path.join(copyDir, path.basename(blob)), data);
  assert.throws(() => checkImage({ bootstrap: boot, blobDir: copyDir }), (e: Error) => e instanceof NydusError && /chunk 0/.test(e.message));
});
