/**
 * The addon's chunk verification (native/fscache/chunk_verify.cc, blake3.cc), which the daemon runs
 * on libuv's thread pool, against independent oracles: the published BLAKE3 digest of the empty
 * input, the @napi-rs/blake-hash binding and OpenSSL's SHA-256 (through node:crypto), and the
 * JavaScript verifyRun with zstd-napi.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { fscacheBinding } from '../native/fscache/index.ts';
import { dataRangesOf } from '../native/fscache/index.ts';
import { compressChunk } from '../src/blob/compress.ts';
import { RUN_FIELDS, type StoredRun, setRunChunk, verifyBlobRange, verifyRun, verifyRunNative } from '../src/blob/verify.ts';
import { prand } from './helpers/fixtures.ts';
import { blake3, digestMismatches, nativeVerdict, sha256 } from './helpers/digest-sweep.ts';

test('BLAKE3 in the addon: the published digest of the empty input', async () => {
  const empty = Buffer.from('af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262', 'hex');
  assert.equal(await nativeVerdict(Buffer.alloc(0), empty, 0), null);
  const other = Buffer.from(empty);
  other[31] ^= 1;
  assert.match(String(await nativeVerdict(Buffer.alloc(0), other, 0)), /digest mismatch/);
});

test('BLAKE3 and SHA-256 in the addon agree with blake-hash and OpenSSL on every tree shape, and refuse a flipped bit', async () => {
  assert.deepEqual(await digestMismatches(), []);
});

test('BLAKE3 in the addon, 16 lanes at a time and a chunk at a time (the code its timing did not pick here, too): both agree with blake-hash', () => {
  for (const code of ['lanes', 'chunks']) {
    const r = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./helpers/digest-sweep.ts', import.meta.url))], { encoding: 'utf8', env: { ...process.env, NYDUS_BLAKE3: code } });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), [], `NYDUS_BLAKE3=${code}`);
  }
});

/** A new cache file of 1 MiB, all a hole, open for reading and writing. */
function sparseCacheFile(file: string): number {
  const fd = fs.openSync(file, 'w+');
  fs.ftruncateSync(fd, 1 << 20);
  return fd;
}

/** A run of chunks, some zstd-compressed, some raw, at block-aligned places with padding between them. */
function sampleRun(digester: 'blake3' | 'sha256', corrupt: number[]): { run: StoredRun; plain: Buffer[]; outOffsets: number[] } {
  const plain = [Buffer.alloc(5000, 'a'), prand(9000, 2), Buffer.alloc(4096, 'x'), Buffer.concat([prand(30_000, 3), Buffer.alloc(40_000, 'q')]), Buffer.alloc(1, 'z')];
  const compressed = (i: number) => i === 0 || i === 2 || i === 3;
  // compressChunk's result lives in a scratch buffer: copied at once.
  const stored = plain.map((p, i) => Buffer.from(compressed(i) ? compressChunk('zstd', p)! : p));
  for (const i of corrupt) stored[i][stored[i].length >> 1] ^= 1;
  const outOffsets: number[] = [];
  let out = 0;
  for (const p of plain) {
    outOffsets.push(out);
    out = Math.ceil((out + p.length) / 4096) * 4096;
  }
  const layout = new Float64Array(plain.length * RUN_FIELDS);
  let at = 0;
  stored.forEach((b, i) => {
    setRunChunk(layout, i, { storedOffset: at, storedSize: b.length, outOffset: outOffsets[i], outSize: plain[i].length, compressed: compressed(i) });
    at += b.length;
  });
  const digest = digester === 'blake3' ? blake3 : sha256;
  return {
    plain, outOffsets,
    run: {
      stored: Buffer.concat(stored), compressor: 'zstd', digester, layout, digestSize: 32,
      digests: Buffer.concat(plain.map(digest)), outSize: out, where: plain.map((_, i) => `chunk ${i}`),
    },
  };
}

test('verifyRunNative gives what verifyRun gives: bytes, zeroed padding and failures, the same messages', async () => {
  for (const digester of ['blake3', 'sha256'] as const) {
    for (const corrupt of [[], [1], [0, 3], [4]]) {
      const { run, plain, outOffsets } = sampleRun(digester, corrupt);
      const native = await verifyRunNative(run);
      const reference = verifyRun(run);
      assert.deepEqual(native.errors, reference.errors, `${digester}, corrupt ${corrupt}`);
      assert.ok(Buffer.from(native.data).equals(Buffer.from(reference.data)), `${digester}, corrupt ${corrupt}: same output`);
      plain.forEach((p, i) => {
        const got = Buffer.from(native.data.buffer, native.data.byteOffset + outOffsets[i], p.length);
        if (corrupt.includes(i)) assert.ok(got.every((b) => b === 0), `chunk ${i} failed and is zeros`);
        else assert.ok(got.equals(p), `chunk ${i} verified`);
      });
      for (const i of corrupt) assert.match(String(native.errors[i]), new RegExp(`^chunk ${i}: (digest mismatch|zstd decompression failed)`));
    }
  }
});

test('verifyRunNative zeroes what no chunk covers even in a dirty buffer, and refuses places outside its buffers', async () => {
  const { run } = sampleRun('blake3', []);
  const out = new Uint8Array(run.outSize).fill(0xee);
  const errors = await fscacheBinding().verifyRunNative(run.stored, run.layout, run.digests, 32, out, 1, 0);
  assert.deepEqual(errors, [null, null, null, null, null]);
  assert.ok(Buffer.from(out).equals(Buffer.from(verifyRun(run).data)), 'padding and tail are zeros, as verifyRun leaves them');
  const b = fscacheBinding();
  const outside = Float64Array.from(run.layout);
  outside[RUN_FIELDS * 4 + 2] = run.outSize; // the last chunk's output offset: past the end
  assert.throws(() => b.verifyRunNative(run.stored, outside, run.digests, 32, out, 1, 0), /chunk 4 lies outside its buffers/);
  assert.throws(() => b.verifyRunNative(run.stored, run.layout, run.digests.subarray(0, 64), 32, out, 1, 0), /fewer digests than chunks/);
  assert.throws(() => b.verifyRunNative(run.stored, run.layout.subarray(1), run.digests, 32, out, 1, 0), /not whole chunks/);
  const fraction = Float64Array.from(run.layout);
  fraction[1] = 0.5;
  assert.throws(() => b.verifyRunNative(run.stored, fraction, run.digests, 32, out, 1, 0), /not a whole number/);
  // A compressed chunk in a blob without a compressor is refused, not copied.
  const [none] = await b.verifyRunNative(run.stored, run.layout.subarray(0, RUN_FIELDS), run.digests, 32, new Uint8Array(5000), 0, 0);
  assert.equal(none, 'chunk is marked compressed but the compressor is none');
});

test('verifyRunNative with a target writes the chunks that pass through its fd, whole pages at their places; a failed chunk stays a hole', async () => {
  const { run, plain, outOffsets } = sampleRun('blake3', [1]);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'verify-write-'));
  try {
    const file = path.join(dir, 'cache');
    const fd = sparseCacheFile(file);
    const at = 65536;
    const r = await verifyRunNative({ ...run, target: { fd, offset: at } });
    assert.equal(r.writeError, null, String(r.writeError));
    assert.deepEqual(r.errors.map((e) => e !== null), [false, true, false, false, false]);
    assert.match(String(r.errors[1]), /chunk 1: digest mismatch/);
    const onDisk = fs.readFileSync(file);
    plain.forEach((p, i) => {
      const place = at + outOffsets[i];
      if (i === 1) return;
      assert.ok(onDisk.subarray(place, place + p.length).equals(p), `chunk ${i} in the file`);
      assert.ok(Buffer.from(r.data.buffer, r.data.byteOffset + outOffsets[i], p.length).equals(p), `chunk ${i} in the output`);
      // Its last page's tail is zeros (block padding), as writeAligned leaves it.
      const end = Math.ceil((place + p.length) / 4096) * 4096;
      assert.ok(onDisk.subarray(place + p.length, end).every((b) => b === 0), `chunk ${i}'s padding`);
    });
    // What the file holds (SEEK_DATA/SEEK_HOLE): the stretch before the bad chunk, and the one after it.
    const chunkEnd = (i: number) => Math.ceil((outOffsets[i] + plain[i].length) / 4096) * 4096;
    assert.deepEqual(dataRangesOf(fd, 0, 1 << 20), [[at, at + chunkEnd(0)], [at + outOffsets[2], at + chunkEnd(4)]]);
    fs.closeSync(fd);

    // A write that fails says why; the run still verified.
    const ro = fs.openSync(file, 'r');
    const clean = sampleRun('blake3', []).run;
    const failed = await verifyRunNative({ ...clean, target: { fd: ro, offset: at } });
    fs.closeSync(ro);
    assert.equal((failed.writeError as NodeJS.ErrnoException).code, 'EBADF');
    assert.match(String(failed.writeError), /pwrite.*fd \d+, \d+ bytes at 65536/);
    assert.deepEqual(failed.errors, [null, null, null, null, null]);

    const b = fscacheBinding();
    const spare = new Uint8Array(clean.outSize + 4096);
    assert.throws(() => b.verifyRunNative(clean.stored, clean.layout, clean.digests, 32, spare, 1, 0, 3, 100), /multiple of 4096/);
    assert.throws(() => b.verifyRunNative(clean.stored, clean.layout, clean.digests, 32, new Uint8Array(clean.outSize), 1, 0, 3, 0), /outside its buffers|a page more/);
    const unaligned = Float64Array.from(clean.layout);
    unaligned[RUN_FIELDS * 2 + 2] += 512; // chunk 2's output offset off its page
    assert.throws(() => b.verifyRunNative(clean.stored, unaligned, clean.digests, 32, spare, 1, 0, 3, 0), /chunk 2 to write is not at a page boundary/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('verifyBlobRange reads its stored bytes from the blob file itself and writes the chunks that pass, as verifyRunNative with a target does; a read past the blob fails the whole run', async () => {
  const { run, plain, outOffsets } = sampleRun('blake3', [3]);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'verify-range-'));
  try {
    // The run's stored bytes at 12345 of a blob file, among other bytes.
    const blobFile = path.join(dir, 'blob');
    const before = prand(12345, 7);
    fs.writeFileSync(blobFile, Buffer.concat([before, run.stored, prand(999, 8)]));
    const blobFd = fs.openSync(blobFile, 'r');
    const file = path.join(dir, 'cache');
    const fd = sparseCacheFile(file);
    const at = 3 * 4096;
    const base = { blobFd, storedOffset: before.length, storedSize: run.stored.length, compressor: run.compressor, digester: run.digester, layout: run.layout, digests: run.digests, digestSize: 32, where: run.where };
    const r = await verifyBlobRange({ ...base, target: { fd, offset: at } });
    assert.equal(r.writeError, null, String(r.writeError));
    assert.deepEqual(r.errors.map((e) => e !== null), [false, false, false, true, false]);
    assert.match(String(r.errors[3]), /chunk 3: digest mismatch/);
    const onDisk = fs.readFileSync(file);
    plain.forEach((p, i) => {
      if (i === 3) return;
      assert.ok(onDisk.subarray(at + outOffsets[i], at + outOffsets[i] + p.length).equals(p), `chunk ${i} in the file`);
    });
    const chunkEnd = (i: number) => Math.ceil((outOffsets[i] + plain[i].length) / 4096) * 4096;
    assert.deepEqual(dataRangesOf(fd, 0, 1 << 20), [[at, at + chunkEnd(2)], [at + outOffsets[4], at + chunkEnd(4)]], 'the corrupt chunk is a hole');

    // A range the blob file does not have: nothing is verified or written.
    const fd2 = sparseCacheFile(path.join(dir, 'cache2'));
    await assert.rejects(verifyBlobRange({ ...base, storedOffset: before.length + 1000, target: { fd: fd2, offset: 0 } }), /pread.*the file ends at \d+, before the \d+ bytes at 13345/);
    await assert.rejects(verifyBlobRange({ ...base, blobFd: fd2 === 0 ? 1 : 1 << 20, target: { fd: fd2, offset: 0 } }), (e: NodeJS.ErrnoException) => e.code === 'EBADF');
    assert.deepEqual(dataRangesOf(fd2, 0, 1 << 20), [], 'nothing written after a failed read');
    fs.closeSync(fd2);

    const b = fscacheBinding();
    assert.throws(() => b.verifyBlobRange(blobFd, 0, 65 << 20, run.layout, run.digests, 32, 1, 0, fd, 0), /more than 64 MiB/);
    assert.throws(() => b.verifyBlobRange(blobFd, 0, 10, run.layout, run.digests, 32, 1, 0, fd, 0), /chunk \d lies outside its buffers/);
    assert.throws(() => b.verifyBlobRange(blobFd, 0, run.stored.length, run.layout, run.digests, 32, 1, 0, fd, 100), /multiple of 4096/);
    fs.closeSync(fd);
    fs.closeSync(blobFd);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('verifyBlobRange: an uncompressed chunk read straight into its place is verified as any other; corrupt, it is a hole, and its neighbours are whole', async () => {
  // Chunks 1 and 4 are stored uncompressed; 1 is corrupt.
  const { run, plain, outOffsets } = sampleRun('sha256', [1]);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'verify-in-place-'));
  try {
    const blobFile = path.join(dir, 'blob');
    fs.writeFileSync(blobFile, Buffer.concat([prand(777, 9), run.stored]));
    const blobFd = fs.openSync(blobFile, 'r');
    const fd = sparseCacheFile(path.join(dir, 'cache'));
    const r = await verifyBlobRange({ blobFd, storedOffset: 777, storedSize: run.stored.length, compressor: run.compressor, digester: run.digester, layout: run.layout, digests: run.digests, digestSize: 32, where: run.where, target: { fd, offset: 0 } });
    assert.equal(r.writeError, null, String(r.writeError));
    assert.deepEqual(r.errors.map((e) => e !== null), [false, true, false, false, false]);
    assert.match(String(r.errors[1]), /chunk 1: digest mismatch/);
    const onDisk = fs.readFileSync(path.join(dir, 'cache'));
    plain.forEach((p, i) => {
      if (i !== 1) assert.ok(onDisk.subarray(outOffsets[i], outOffsets[i] + p.length).equals(p), `chunk ${i} in the file`);
    });
    const chunkEnd = (i: number) => Math.ceil((outOffsets[i] + plain[i].length) / 4096) * 4096;
    assert.deepEqual(dataRangesOf(fd, 0, 1 << 20), [[0, chunkEnd(0)], [outOffsets[2], chunkEnd(4)]], 'the corrupt chunk is a hole');
    fs.closeSync(fd);
    fs.closeSync(blobFd);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('verifyBlobRange jobs at once share no buffer: sixteen runs of different bytes, each file gets its own', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'verify-range-many-'));
  try {
    const runs = Array.from({ length: 16 }, (_, k) => {
      const plain = [prand(70_000 + k * 1000, 500 + k), prand(9000, 600 + k)];
      const stored = plain.map((p) => Buffer.from(compressChunk('zstd', p) ?? p));
      const layout = new Float64Array(2 * RUN_FIELDS);
      setRunChunk(layout, 0, { storedOffset: 0, storedSize: stored[0].length, outOffset: 0, outSize: plain[0].length, compressed: compressChunk('zstd', plain[0]) !== null });
      const second = Math.ceil(plain[0].length / 4096) * 4096;
      setRunChunk(layout, 1, { storedOffset: stored[0].length, storedSize: stored[1].length, outOffset: second, outSize: plain[1].length, compressed: compressChunk('zstd', plain[1]) !== null });
      return { plain, stored: Buffer.concat(stored), layout, second };
    });
    const blobFile = path.join(dir, 'blob');
    fs.writeFileSync(blobFile, Buffer.concat(runs.map((r) => r.stored)));
    const blobFd = fs.openSync(blobFile, 'r');
    let at = 0;
    const results = await Promise.all(runs.map((r, k) => {
      const fd = sparseCacheFile(path.join(dir, `cache${k}`));
      const p = verifyBlobRange({
        blobFd, storedOffset: at, storedSize: r.stored.length, compressor: 'zstd', digester: 'blake3', layout: r.layout,
        digests: Buffer.concat(r.plain.map(blake3)), digestSize: 32, where: ['first', 'second'], target: { fd, offset: 0 },
      }).finally(() => fs.closeSync(fd));
      at += r.stored.length;
      return p;
    }));
    fs.closeSync(blobFd);
    results.forEach((r, k) => {
      assert.deepEqual(r.errors, [null, null], `run ${k}`);
      const file = fs.readFileSync(path.join(dir, `cache${k}`));
      assert.ok(file.subarray(0, runs[k].plain[0].length).equals(runs[k].plain[0]), `run ${k}, chunk 0`);
      assert.ok(file.subarray(runs[k].second, runs[k].second + runs[k].plain[1].length).equals(runs[k].plain[1]), `run ${k}, chunk 1`);
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('warmUp: a job per pool thread, each settled; verification works after it; a bad count is refused', async () => {
  const jobs = fscacheBinding().warmUp(4);
  assert.equal(jobs.length, 4);
  const lanes = await Promise.all(jobs);
  assert.ok(lanes.every((l) => l === lanes[0] && typeof l === 'boolean'), 'each says how BLAKE3 hashes here, the same');
  const data = prand(1 << 20, 7);
  assert.equal(await nativeVerdict(data, blake3(data), 0), null);
  for (const bad of [0, -1, 1.5, 1025, Number.NaN]) assert.throws(() => fscacheBinding().warmUp(bad), RangeError, String(bad));
});

/** The nice value of each of this process's threads (field 19 of /proc/self/task/<tid>/stat). */
function threadNices(): number[] {
  return fs.readdirSync('/proc/self/task').flatMap((t) => {
    try {
      return [Number(fs.readFileSync(`/proc/self/task/${t}/stat`, 'utf8').split(') ')[1].split(' ')[16])];
    } catch {
      return [];
    }
  });
}

/** `job` awaited, and whether a thread of this process was seen at nice 19 while it ran. */
async function loweredWhile<T>(job: Promise<T>): Promise<{ result: T; lowered: boolean }> {
  let lowered = false;
  let done = false;
  void job.finally(() => (done = true));
  while (!done) {
    if (threadNices().includes(19)) lowered = true;
    await new Promise((r) => setImmediate(r));
  }
  return { result: await job, lowered };
}

test('a background verification runs its pool thread at nice 19 and gives it its priority back; the bytes are the same', async () => {
  // 48 chunks of 1 MiB: long enough on a pool thread to be seen at work.
  const chunk = Buffer.concat([prand(1 << 19, 11), Buffer.alloc(1 << 19, 'n')]);
  const stored = Buffer.from(compressChunk('zstd', chunk)!);
  const count = 48;
  const layout = new Float64Array(count * RUN_FIELDS);
  for (let i = 0; i < count; i++) setRunChunk(layout, i, { storedOffset: 0, storedSize: stored.length, outOffset: i * chunk.length, outSize: chunk.length, compressed: true });
  const digest = blake3(chunk);
  const run: StoredRun = {
    stored, compressor: 'zstd', digester: 'blake3', layout, digests: Buffer.concat(Array.from({ length: count }, () => digest)),
    digestSize: 32, outSize: count * chunk.length, where: Array.from({ length: count }, (_, i) => `c${i}`),
  };
  assert.ok(threadNices().every((n) => n === 0), 'no thread starts lowered');
  const { result: r, lowered: seen } = await loweredWhile(verifyRunNative({ ...run, background: true }));
  assert.ok(seen, 'a thread ran at nice 19 while the job ran');
  assert.deepEqual(r.errors, Array(count).fill(null));
  assert.ok(Buffer.from(r.data.buffer, r.data.byteOffset + 5 * chunk.length, chunk.length).equals(chunk));
  assert.deepEqual([...new Set(threadNices())], [0], 'every thread is back at its own priority');
  // A job that is not background leaves every thread alone.
  const normal = await loweredWhile(verifyRunNative(run));
  assert.deepEqual(normal.result.errors, Array(count).fill(null));
  assert.equal(normal.lowered, false);
  // A background job raised before its thread took it (a reader came to wait for it while it was
  // queued on libuv's pool) never lowers its thread.
  const told = new Int32Array(2);
  assert.equal(fscacheBinding().raiseBackgroundThread(told), true);
  assert.equal(fscacheBinding().raiseBackgroundThread(told), false, 'raised once');
  const raised = await loweredWhile(verifyRunNative({ ...run, background: told }));
  assert.deepEqual(raised.result.errors, Array(count).fill(null));
  assert.equal(raised.lowered, false, 'the raised job ran at its thread\'s own priority');
  assert.deepEqual([...new Set(threadNices())], [0]);
});
