/**
 * The validation gate (src/image/validate.ts) against hostile bootstraps and blobs: each test is a
 * failure the readers or the daemon had before the gate (issue 10, items 3, 4, 10, 11, 12-17).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import crypto from 'node:crypto';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import pino from 'pino';
import { FormatError, NydusError } from '../erofs/errors.ts';
import { ErofsImage } from '../erofs/image.ts';
import { EROFS_NULL_ADDR } from '../erofs/chunk.ts';
import { EROFS_FEATURE_COMPAT_SB_CHKSUM, EROFS_SUPER_OFFSET, erofsSuperBlock, superBlockChecksum } from '../erofs/super.ts';
import { RAFS_V6_SUPER_EXT_OFFSET, rafsV6Blob, rafsV6SuperBlockExt } from '../erofs/rafs.ts';
import { LocalFsBackend } from '../src/daemon/backend/localfs.ts';
import { erofsDeviceSlot } from '../erofs/devtable.ts';
import { erofsInodeExtended } from '../erofs/inode.ts';
import { rafsChunkInfo, BLOB_CCT_HEADER_SIZE } from '../erofs/blobmeta.ts';
import { createImage } from '../src/builder/create.ts';
import { checkImage } from '../src/image/check.ts';
import { inspectImage } from '../src/image/inspect.ts';
import { exportBlock } from '../src/image/export-block.ts';
import { unpackToTar } from '../src/image/unpack.ts';
import { validateImage } from '../src/image/validate.ts';
import { ImageRegistry } from '../src/daemon/daemon.ts';
import { DaemonState } from '../src/daemon/state.ts';
import { hardlinkHeavyImage, prand, tmpDir } from './helpers/fixtures.ts';
import { runCli } from './helpers/cli.ts';
import { chunkIndexOffset, inodeAt } from './helpers/image-fields.ts';

const work = tmpDir('validate');
const src = path.join(work, 'src');
const blobDir = path.join(work, 'blobs');
const boot = path.join(work, 'good.boot');
let good: Buffer;
let blobId: string;
const big = prand(5 * 4096 + 77, 7);

before(() => {
  fs.mkdirSync(path.join(src, 'dir'), { recursive: true });
  fs.writeFileSync(path.join(src, 'big'), big);
  fs.writeFileSync(path.join(src, 'dir/small'), 'small\n');
  fs.linkSync(path.join(src, 'dir/small'), path.join(src, 'hard'));
  fs.symlinkSync('big', path.join(src, 'ln'));
  blobId = createImage({ source: src, bootstrap: boot, blobDir, chunkSize: 0x1000, compressor: 'zstd', digester: 'blake3' }).blob!.blobId;
  good = fs.readFileSync(boot);
});

after(() => fs.rmSync(work, { recursive: true, force: true }));

let serial = 0;
/** Writes a patched copy of the good bootstrap and returns its path. */
function patched(patch: (b: Buffer, img: ErofsImage) => void): string {
  const b = Buffer.from(good);
  patch(b, new ErofsImage(good, 'good'));
  const file = path.join(work, `patched-${serial++}.boot`);
  fs.writeFileSync(file, b);
  return file;
}

const inodeOffset = (p: string) => inodeAt(good, p).offset;

function setBlobId(b: Buffer, img: ErofsImage, id: string): void {
  rafsV6Blob.encodeInto(b, img.ext!.s_blob_table_offset, { blob_id: Buffer.from(id, 'latin1') });
  erofsDeviceSlot.encodeInto(b, img.sb.devt_slotoff * 128, { tag: Buffer.from(id, 'latin1') });
}

const isFormatError = (re: RegExp) => (e: unknown) => e instanceof FormatError && re.test((e as Error).message);

test('item 3: 3,000 hardlinks to a 64 MiB file with 4 KiB chunks: inspect and daemon registration well under 2 s', { timeout: 300_000 }, async () => {
  const { bootstrap: hb, blobDir: hlBlobs } = hardlinkHeavyImage(work);
  let t = process.hrtime.bigint();
  const stats = inspectImage(hb, 'stats') as { files: number; file_bytes: number };
  const inspectMs = Number(process.hrtime.bigint() - t) / 1e6;
  assert.equal(stats.files, 3000);
  assert.equal(stats.file_bytes, 3000 * (64 << 20));
  assert.ok(inspectMs < 2000, `inspect -R stats took ${inspectMs} ms`);

  const state = new DaemonState(path.join(work, 'hl-state'));
  const registry = new ImageRegistry(state, pino({ level: 'silent' }));
  // The registration worker is started (from the TypeScript sources, through tsx) before the clock runs.
  await registry.add({
    type: 'bootstrap', id: 'warm', domain_id: '',
    config_v2: { version: 2, id: 'warm', backend: { type: 'localfs', localfs: { dir: blobDir } }, cache: { type: 'fscache', fscache: { work_dir: work } }, metadata_path: boot },
  }, false);
  t = process.hrtime.bigint();
  await registry.add({
    type: 'bootstrap', id: 'hl', domain_id: '',
    config_v2: {
      version: 2, id: 'hl', backend: { type: 'localfs', localfs: { dir: hlBlobs } },
      cache: { type: 'fscache', fscache: { work_dir: work } }, metadata_path: hb, rafs: { prefetch: { enable: true } },
    },
  }, false);
  const addMs = Number(process.hrtime.bigint() - t) / 1e6;
  state.close();
  assert.ok(addMs < 2000, `registration took ${addMs} ms`);
  process.stderr.write(`3,000 hardlinks: inspect -R stats ${inspectMs.toFixed(0)} ms, daemon registration ${addMs.toFixed(0)} ms\n`);
});

test('item 4: the daemon refuses what check refuses (chunk sizes, blob ids)', async () => {
  const state = new DaemonState(path.join(work, 'reg-state'));
  const registry = new ImageRegistry(state, pino({ level: 'silent' }));
  const add = (file: string, id: string) => registry.add({
    type: 'bootstrap', id, domain_id: '',
    config_v2: { version: 2, id, backend: { type: 'localfs', localfs: { dir: blobDir } }, cache: { type: 'fscache', fscache: { work_dir: work } }, metadata_path: file },
  }, false);
  const huge = patched((b, img) => rafsChunkInfo.encodeInto(b, img.ext!.s_chunk_table_offset, { compressed_size: 0xffffffff }));
  await assert.rejects(add(huge, 'a'), isFormatError(/compressed size 4294967295 is out of range/));
  const outside = patched((b, img) => rafsChunkInfo.encodeInto(b, img.ext!.s_chunk_table_offset, { compressed_offset: 2 ** 40 }));
  await assert.rejects(add(outside, 'b'), isFormatError(/stored range .* lies outside blob/));
  const badId = patched((b, img) => setBlobId(b, img, 'A'.repeat(64)));
  await assert.rejects(add(badId, 'c'), isFormatError(/invalid blob id/));
  await add(boot, 'ok');
  state.close();
});

test('item 10: a blob id "../fifo" never opens anything outside -D, and a FIFO blob is refused without a hang', () => {
  execFileSync('mkfifo', [path.join(work, 'fifo')]);
  const evil = patched((b, img) => setBlobId(b, img, '../fifo'));
  for (const args of [['unpack', '-B', evil, '-D', blobDir, '-o', path.join(work, 'evil.tar')], ['export', '--block', '-B', evil, '-D', blobDir, '-O', path.join(work, 'evil.img')], ['check', '-B', evil, '-D', blobDir]]) {
    const r = runCli('nydus-image', args, { timeoutMs: 60_000 });
    assert.equal(r.status, 1, `${args[0]}: ${r.stderr}`);
    assert.match(r.stderr, /blob table entry 0: invalid blob id "\.\.\/fifo"/);
  }
  const r = runCli('nydus-image', ['unpack', '-B', boot, '--blob', path.join(work, 'fifo'), '-o', path.join(work, 'fifo.tar')], { timeoutMs: 60_000 });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /blob .*fifo is not a regular file/);
});

test('item 11: mtimes before 1970 and after 2106 survive create and unpack; a failed create leaves nothing', () => {
  const dir = path.join(work, 'times');
  fs.mkdirSync(dir);
  for (const [name, stamp] of [['old', '-86400.25'], ['older', '-1.000000001'], ['future', '4294967301.5']]) {
    fs.writeFileSync(path.join(dir, name), name);
    execFileSync('touch', ['-d', `@${stamp}`, path.join(dir, name)]);
  }
  const tb = path.join(work, 'times.boot');
  createImage({ source: dir, bootstrap: tb, blobDir: path.join(work, 'times-blobs'), chunkSize: 0x1000, compressor: 'zstd', digester: 'blake3' });
  const v = validateImage(new ErofsImage(fs.readFileSync(tb), tb));
  const byName = new Map(v.inodes.get(v.rootNid)!.entries!.map((e) => [e.name.toString(), v.inodes.get(e.nid)!.inode]));
  assert.deepEqual([byName.get('old')!.mtimeSec, byName.get('old')!.mtimeNsec], [-86401, 750000000]);
  assert.deepEqual([byName.get('older')!.mtimeSec, byName.get('older')!.mtimeNsec], [-2, 999999999]);
  assert.deepEqual([byName.get('future')!.mtimeSec, byName.get('future')!.mtimeNsec], [4294967301, 500000000]);
  const tar = path.join(work, 'times.tar');
  unpackToTar({ bootstrap: tb, blobDir: path.join(work, 'times-blobs'), output: tar });
  // GNU tar, an independent reader of the pax times, extracts them as the source had them.
  const x = path.join(work, 'times-x');
  fs.mkdirSync(x);
  execFileSync('tar', ['-xf', tar, '-C', x], { stdio: 'pipe' });
  for (const name of ['old', 'older', 'future']) {
    assert.equal(fs.statSync(path.join(x, name), { bigint: true }).mtimeNs, fs.statSync(path.join(dir, name), { bigint: true }).mtimeNs, name);
  }
  const out = path.join(work, 'failed');
  // The bootstrap cannot be written (its directory is missing): by then the blob was written, and goes.
  assert.throws(() => createImage({ source: dir, bootstrap: path.join(out, 'missing-dir', 'x.boot'), blobDir: out, chunkSize: 0x1000, compressor: 'zstd', digester: 'blake3' }), /cannot write .*missing-dir\/x\.boot/);
  assert.equal(fs.existsSync(out), false, 'no blob, no bootstrap, not even the blob directory the failed create made');
});

test('item 12: nydus-image --log-level and --log-file work', () => {
  const logFile = path.join(work, 'image.log');
  const quiet = runCli('nydus-image', ['--log-level', 'error', 'check', '-B', boot]);
  assert.equal(quiet.status, 0, quiet.stderr);
  assert.equal(quiet.stderr, '');
  const logged = runCli('nydus-image', ['check', '-B', boot, '--log-file', logFile]);
  assert.equal(logged.status, 0, logged.stderr);
  assert.equal(logged.stderr, '');
  assert.match(fs.readFileSync(logFile, 'utf8'), /INFO nydus-image: .*good\.boot is a valid RAFS v6 image/);
  assert.match(runCli('nydus-image', ['check', '-B', boot]).stderr, /is a valid RAFS v6 image/);
});

test('item 13: the superblock checksum is verified when EROFS_FEATURE_COMPAT_SB_CHKSUM is set', () => {
  const withSum = (corrupt: boolean) => patched((b) => {
    const at = EROFS_SUPER_OFFSET;
    b.writeUInt32LE(b.readUInt32LE(at + erofsSuperBlock.offsetOf('feature_compat')) | EROFS_FEATURE_COMPAT_SB_CHKSUM, at + erofsSuperBlock.offsetOf('feature_compat'));
    b.writeUInt32LE(superBlockChecksum(b.subarray(0, 4096)), at + erofsSuperBlock.offsetOf('checksum'));
    if (corrupt) b[at + erofsSuperBlock.offsetOf('volume_name')] ^= 1;
  });
  checkImage({ bootstrap: withSum(false), blobDir });
  assert.throws(() => checkImage({ bootstrap: withSum(true), blobDir }), isFormatError(/erofs_super_block checksum 0x[0-9a-f]+ does not match/));
});

test('item 14: an empty blob id and out-of-range blob sizes are FormatErrors, not EISDIR or RangeError', async () => {
  const empty = patched((b, img) => setBlobId(b, img, ''));
  for (const size of [0x1000005d1000, 0x7fffffff, 0x7ffff000]) {
    const file = patched((b, img) => rafsV6Blob.encodeInto(b, img.ext!.s_blob_table_offset, { uncompressed_size: size }));
    await assert.rejects(exportBlock({ bootstrap: file, blobDir, output: path.join(work, 'size.img') }), isFormatError(/device slot 0 has \d+ blocks|exceeds/));
  }
  assert.throws(() => unpackToTar({ bootstrap: empty, blobDir, output: path.join(work, 'empty.tar') }), isFormatError(/invalid blob id ""/));
  assert.ok(!fs.existsSync(path.join(work, 'size.img')) && !fs.existsSync(path.join(work, 'empty.tar')));
});

test('item 15: holes are zeros in unpack, the other chunks are still checked, export keeps the chunk indexes', async () => {
  const holed = patched((b) => b.writeUInt32LE(EROFS_NULL_ADDR, chunkIndexOffset(good, '/big', 2) + 4));
  const r = checkImage({ bootstrap: holed, blobDir });
  assert.equal(r.holes, 1);
  const full = checkImage({ bootstrap: boot, blobDir });
  assert.equal(r.verifiedChunks, full.verifiedChunks - 1, 'every chunk but the hole is verified');
  const tar = path.join(work, 'holed.tar');
  unpackToTar({ bootstrap: holed, blobDir, output: tar });
  const data = execFileSync('tar', ['-xOf', tar, './big'], { maxBuffer: 1 << 26 });
  const want = Buffer.from(big);
  want.fill(0, 2 * 4096, 3 * 4096);
  assert.ok(data.equals(want), 'the hole reads as zeros, the rest as the file');
  // A chunk size other than the image's (the 1 GiB chunk of the fuzz run) is refused.
  const bits = patched((b) => erofsInodeExtended.encodeInto(b, inodeOffset('/big'), { i_u: 0x20 | 18 }));
  assert.throws(() => unpackToTar({ bootstrap: bits, blobDir, output: path.join(work, 'bits.tar') }), isFormatError(/chunk size 1073741824 differs/));
  const img = path.join(work, 'holed.img');
  await exportBlock({ bootstrap: holed, blobDir, output: img });
  // fsck.erofs accepts it (its --extract of erofs-utils 1.5 drops hole chunks instead of writing
  // zeros, so the content is checked through the kernel in validate.root-kernel.test.ts).
  const fsck = spawnSync('fsck.erofs', [img], { encoding: 'utf8' });
  assert.equal(fsck.status, 0, `fsck.erofs: ${fsck.stdout}${fsck.stderr}`);
});

test('item 15: unpack writes holes as GNU sparse entries: GNU tar restores them as holes, a 1 GiB hole costs the tar a few KiB', { timeout: 300_000 }, () => {
  const dir = path.join(work, 'sparse-src');
  fs.mkdirSync(dir);
  const file = path.join(dir, 's');
  const head = prand(100_000, 11);
  const tail = prand(5000, 12);
  const size = (1 << 30) + tail.length;
  const fd = fs.openSync(file, 'w');
  fs.writeSync(fd, head, 0, head.length, 0);
  fs.writeSync(fd, tail, 0, tail.length, 1 << 30);
  fs.closeSync(fd);
  const chunkSize = 1 << 20;
  const sb = path.join(work, 'sparse.boot');
  const sblobs = path.join(work, 'sparse-blobs');
  createImage({ source: dir, bootstrap: sb, blobDir: sblobs, chunkSize, compressor: 'zstd', digester: 'blake3' });
  // Chunks 1..1023 (the zeros between head and tail) become holes: 1023 MiB the image does not store.
  const b = fs.readFileSync(sb);
  const first = chunkIndexOffset(b, '/s', 1);
  for (let k = 1; k < 1024; k++) b.writeUInt32LE(EROFS_NULL_ADDR, first + (k - 1) * 8 + 4);
  fs.writeFileSync(sb, b);
  const tar = path.join(work, 'sparse.tar');
  unpackToTar({ bootstrap: sb, blobDir: sblobs, output: tar });
  const tarSize = fs.statSync(tar).size;
  // The stored data (chunk 0 and the tail chunk) and headers; nothing for the holes.
  assert.ok(tarSize < chunkSize + tail.length + 16384, `the tar is ${tarSize} bytes`);
  const out = path.join(work, 'sparse-out');
  fs.mkdirSync(out);
  execFileSync('tar', ['-xf', tar, '-C', out]);
  const got = path.join(out, 's');
  const st = fs.statSync(got);
  assert.equal(st.size, size);
  assert.ok(st.blocks * 512 < 8 * chunkSize, `GNU tar wrote ${st.blocks * 512} bytes of blocks: the holes were not restored as holes`);
  const want = crypto.createHash('sha256');
  want.update(head).update(Buffer.alloc(chunkSize - head.length));
  const zeros = Buffer.alloc(1 << 20);
  for (let k = 1; k < 1024; k++) want.update(zeros);
  want.update(tail);
  const sha = execFileSync('sha256sum', [got], { encoding: 'utf8' }).split(' ')[0];
  assert.equal(sha, want.digest('hex'), 'the extracted file has the image\'s bytes, holes as zeros');
  fs.rmSync(out, { recursive: true });
});

test('item 16: check verifies the blob-meta chunk-info array and the blob sha256 against its id', () => {
  const blob = fs.readFileSync(path.join(blobDir, blobId));
  const copy = (name: string, patch: (b: Buffer) => void) => {
    const dir = path.join(work, name);
    fs.mkdirSync(dir);
    const b = Buffer.from(blob);
    patch(b);
    fs.writeFileSync(path.join(dir, blobId), b);
    return dir;
  };
  const header = blob.length - BLOB_CCT_HEADER_SIZE;
  const ciOffset = Number(blob.readBigUInt64LE(header + 16));
  const badCi = copy('bad-ci', (b) => { b[ciOffset + 8] ^= 0x10; });
  assert.throws(() => checkImage({ bootstrap: boot, blobDir: badCi }), isFormatError(/chunk info 0 .* the chunk table of .* says/));
  const badSum = copy('bad-sum', (b) => { b[header + 100] ^= 1; });
  assert.throws(() => checkImage({ bootstrap: boot, blobDir: badSum }), (e: Error) => e instanceof NydusError && /its sha256 is [0-9a-f]{64}, not its id/.test(e.message));
});

test('item 17: reserved bits, impossible values and names are refused', () => {
  const cases: Array<[string, (b: Buffer) => void, RegExp]> = [
    ['a reserved i_format bit', (b) => { b.writeUInt16LE(b.readUInt16LE(inodeOffset('/big')) | 0x20, inodeOffset('/big')); }, /reserved i_format bits/],
    ['i_reserved2', (b) => { b[inodeOffset('/big') + 50] = 1; }, /i_reserved2 is not zero/],
    ['an nlink lie', (b) => erofsInodeExtended.encodeInto(b, inodeOffset('/hard'), { i_nlink: 1 }), /has 2 names but i_nlink 1/],
    ['a symlink with a NUL', (b) => { const v = validateImage(new ErofsImage(good, 'g')); const ln = [...v.inodes.values()].find((i) => i.target)!; b[ln.inode.offset + ln.inode.headSize] = 0; }, /symlink target holds a NUL/],
    ['a fifo with a size', (b) => erofsInodeExtended.encodeInto(b, inodeOffset('/big'), { i_mode: 0o10644 }), /regular files can be chunk-based|file type/],
    ['a name with a slash', (b) => { const at = b.indexOf(Buffer.from('small')); b[at + 2] = 0x2f; }, /invalid file name|not sorted/],
  ];
  for (const [what, patch, re] of cases) {
    const file = patched(patch);
    assert.throws(() => checkImage({ bootstrap: file }), isFormatError(re), what);
  }
});

test('hostile: a chunk count beyond nydus\'s bound or the blob\'s blocks, and one blob id twice, are FormatErrors for every reader', () => {
  const blobEntry = (img: ErofsImage) => img.ext!.s_blob_table_offset;
  const huge = patched((b, img) => rafsV6Blob.encodeInto(b, blobEntry(img), { chunk_count: 0xffff_ffff }));
  assert.throws(() => validateImage(new ErofsImage(fs.readFileSync(huge), huge)), isFormatError(/chunk count 4294967295 exceeds 16777216/));
  const blocks = Math.ceil(new ErofsImage(good, 'good').blobs[0].uncompressed_size / 4096);
  const many = patched((b, img) => rafsV6Blob.encodeInto(b, blobEntry(img), { chunk_count: blocks + 1 }));
  assert.throws(() => checkImage({ bootstrap: many, blobDir }), isFormatError(new RegExp(`chunk count ${blocks + 1} exceeds the ${blocks} blocks`)));
  // Two blobs (a layer over the good image), the second renamed to the first's id.
  const upper = path.join(work, 'upper-src');
  fs.mkdirSync(upper);
  fs.writeFileSync(path.join(upper, 'new'), prand(10_000, 3));
  const two = path.join(work, 'two.boot');
  createImage({ source: upper, bootstrap: two, blobDir, chunkSize: 0x1000, compressor: 'zstd', digester: 'blake3', parentBootstrap: boot });
  const twoBuf = fs.readFileSync(two);
  const twice = path.join(work, 'twice.boot');
  const b = Buffer.from(twoBuf);
  const img = new ErofsImage(twoBuf, 'two');
  assert.equal(img.blobs.length, 2);
  rafsV6Blob.encodeInto(b, img.ext!.s_blob_table_offset + 256, { blob_id: Buffer.from(blobId, 'latin1') });
  erofsDeviceSlot.encodeInto(b, (img.sb.devt_slotoff + 1) * 128, { tag: Buffer.from(blobId, 'latin1') });
  fs.writeFileSync(twice, b);
  assert.throws(() => checkImage({ bootstrap: twice, blobDir }), isFormatError(new RegExp(`blob table entry 1: blob id ${blobId} is entry 0's too`)));
});

test('hostile: a bootstrap without a chunk table is refused by check, export and unpack alike (its chunks have no digest to verify)', async () => {
  const noTable = patched((b) => rafsV6SuperBlockExt.encodeInto(b, RAFS_V6_SUPER_EXT_OFFSET, { s_chunk_table_size: 0n as never }));
  const refused = isFormatError(/no chunk at offset \d+ of blob [0-9a-f]{64} in the chunk table \(its digest is needed to verify its data\)/);
  assert.throws(() => checkImage({ bootstrap: noTable, blobDir }), refused);
  await assert.rejects(exportBlock({ bootstrap: noTable, blobDir, output: path.join(work, 'no-table.img') }), refused);
  assert.throws(() => unpackToTar({ bootstrap: noTable, blobDir, output: path.join(work, 'no-table.tar') }), refused);
  assert.throws(() => inspectImage(noTable, 'stats'), refused);
  assert.ok(!fs.existsSync(path.join(work, 'no-table.img')) && !fs.existsSync(path.join(work, 'no-table.tar')));
});

test('hostile: a last directory entry name longer than 255 bytes is a FormatError, never cut short', () => {
  // Names of 250 bytes: a block holds 15 of them, its last one followed by NUL padding.
  const dir = path.join(work, 'longname-src');
  fs.mkdirSync(dir);
  const names = Array.from({ length: 40 }, (_, k) => `${String(k).padStart(2, '0')}${'x'.repeat(248)}`);
  for (const n of names) fs.writeFileSync(path.join(dir, n), 'data');
  const lb = path.join(work, 'longname.boot');
  createImage({ source: dir, bootstrap: lb, blobDir, chunkSize: 0x1000, compressor: 'zstd', digester: 'blake3' });
  const buf = fs.readFileSync(lb);
  // The first block's last name: the one the padding follows (the next name starts a block).
  const ends = names.map((n) => buf.indexOf(Buffer.from(n)) + n.length);
  const k = ends.findIndex((end, i) => i + 1 < names.length && buf.subarray(end, end + 10).equals(Buffer.alloc(10)));
  assert.ok(k >= 0, 'a name is followed by padding');
  buf.fill(0x41, ends[k], ends[k] + 10);
  const bad = path.join(work, 'longname-bad.boot');
  fs.writeFileSync(bad, buf);
  assert.throws(() => checkImage({ bootstrap: bad }), isFormatError(/bad name bounds \[\d+, \d+\) of entry/));
});

test('hostile: the daemon\'s localfs backend refuses a FIFO in place of a blob at once, never waiting for a writer', async () => {
  const dir = path.join(work, 'fifo-blobs');
  fs.mkdirSync(dir);
  execFileSync('mkfifo', [path.join(dir, blobId)]);
  const backend = new LocalFsBackend(dir);
  const t0 = Date.now();
  await assert.rejects(backend.read(blobId, 0, 4096), /is not a regular file/);
  assert.ok(Date.now() - t0 < 5000);
  await backend.close();
});
