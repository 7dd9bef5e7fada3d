/**
 * I/O amplification of demand READs (nydus's amplify_io), through the fscache session and a fake
 * cachefiles port: an image of many small files, one chunk each, laid out back to back in the blob.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { createImage } from '../src/builder/create.ts';
import { exportBlock } from '../src/image/export-block.ts';
import { openImage } from '../src/image/open.ts';
import { BlobMap } from '../src/daemon/blob-map.ts';
import { ImageRegistry } from '../src/daemon/daemon.ts';
import { DaemonState } from '../src/daemon/state.ts';
import { OnDemandSession } from '../src/daemon/frontend/cachefiles.ts';
import { BlobCacheFile, WorkGuard } from '../src/daemon/blob-cache.ts';
import { AMPLIFY_IO_DEFAULT, parseBlobCacheEntry } from '../src/daemon/config.ts';
import type { ChunkRef } from '../src/builder/tree.ts';
import { FakePort, settle, waitFor } from './helpers/cachefiles-port.ts';
import { prand, tmpDir } from './helpers/fixtures.ts';

const work = tmpDir('amplify');
const log = pino({ level: 'silent' });
const FILES = 160;
let boot: string;
let blobDir: string;
let blobId: string;
let chunks: readonly ChunkRef[];
/** The uncompressed blob, as the export holds it: what the cache file must equal. */
let blobBytes: Buffer;
const registries: ImageRegistry[] = [];

before(async () => {
  const src = path.join(work, 'src');
  fs.mkdirSync(src);
  // 6000 bytes each: one chunk a file, 8 KiB apart in the blob; half random (stored raw), half text.
  for (let i = 0; i < FILES; i++) {
    fs.writeFileSync(path.join(src, `f${String(i).padStart(2, '0')}`), i % 2 ? prand(6000, i) : Buffer.alloc(6000, `text of file ${i}\n`));
  }
  blobDir = path.join(work, 'blobs');
  boot = path.join(work, 'img.boot');
  blobId = createImage({ source: src, bootstrap: boot, blobDir, chunkSize: 0x100000, compressor: 'zstd', digester: 'blake3' }).blob!.blobId;
  const opened = openImage(boot);
  chunks = BlobMap.fromImage(opened.image).get(blobId)!.all();
  opened.close();
  const exported = path.join(work, 'ref.erofs');
  await exportBlock({ bootstrap: boot, blobDir, output: exported });
  const ref = fs.readFileSync(exported);
  const size = chunks[chunks.length - 1].uncompressedOffset + chunks[chunks.length - 1].uncompressedSize;
  blobBytes = ref.subarray(ref.length - Math.ceil(size / 4096) * 4096);
  assert.equal(chunks.length, FILES, 'one chunk a file');
});

after(async () => {
  for (const r of registries) await r.close();
  fs.rmSync(work, { recursive: true, force: true });
});

const entry = (id: string, rafs: object = {}, dir = blobDir) => ({
  type: 'bootstrap', id, domain_id: '',
  config_v2: {
    version: 2, id, backend: { type: 'localfs', localfs: { dir } },
    cache: { type: 'fscache', fscache: { work_dir: work } }, metadata_path: boot, rafs,
  },
});

async function session(name: string, body: object) {
  const state = new DaemonState(path.join(work, `state-${name}`));
  const registry = new ImageRegistry(state, log);
  registries.push(registry);
  await registry.add(body);
  const port = new FakePort();
  const s = new OnDemandSession(port, registry, state, log, 4);
  const id = (body as { id: string }).id;
  s.handle({ type: 'open', msgId: 1, objectId: 1, volumeKey: `erofs,${id}`, cookieKey: blobId, fd: port.give(50), flags: 0 });
  let msgId = 10;
  const read = (c: ChunkRef) => {
    const m = msgId++;
    s.handle({ type: 'read', msgId: m, objectId: 1, offset: c.uncompressedOffset, len: Math.ceil(c.uncompressedSize / 4096) * 4096 });
    return m;
  };
  const file = { volume: `erofs,${id}`, cookie: blobId };
  return { state, registry, port, session: s, read, file, reads: () => registry.metrics().localfs?.read_count ?? 0 };
}

/** Whether the cache file holds exactly the blob's bytes of a chunk. */
function holds(port: FakePort, c: ChunkRef): boolean {
  const f = port.files.get(50);
  if (!f) return false;
  const at = c.uncompressedOffset;
  return f.subarray(at, at + c.uncompressedSize).equals(blobBytes.subarray(at, at + c.uncompressedSize));
}

test('config: rafs.batch_size is the amplification window (nydus default 1 MiB, at least 128 KiB, at most 256 MiB)', () => {
  assert.equal(parseBlobCacheEntry(entry('a')).amplifyIo, AMPLIFY_IO_DEFAULT);
  assert.equal(AMPLIFY_IO_DEFAULT, 1 << 20);
  assert.equal(parseBlobCacheEntry(entry('a', { batch_size: 0x400000 })).amplifyIo, 0x400000);
  assert.equal(parseBlobCacheEntry(entry('a', { batch_size: 0 })).amplifyIo, 0x20000, 'raised to 128 KiB as nydusd does');
  assert.throws(() => parseBlobCacheEntry(entry('a', { batch_size: 0x10000001 })), /config_v2\.rafs\.batch_size must be at most 268435456 bytes/);
  assert.throws(() => parseBlobCacheEntry(entry('a', { batch_size: 'big' })), /config_v2\.rafs\.batch_size must be a whole number/);
});

test('amplification: a READ of one chunk fills the window after it, in one backend read, every byte verified; reading on, the window streams on', async () => {
  const t = await session('window', entry('win', { batch_size: 0x20000 }));
  const readLen = (c: ChunkRef) => Math.ceil(c.uncompressedSize / 4096) * 4096;
  const upTo = (end: number) => chunks.filter((c) => c.uncompressedOffset + c.uncompressedSize <= end);
  const marked = () => [...t.state.cached(t.file)].sort((a, b) => a - b);
  // A first READ (nothing to read on from): the read-ahead of two chunks only, and no stream.
  t.read(chunks[0]);
  await waitFor(() => t.session.inflight().length === 0, 'the first READ');
  await settle();
  assert.deepEqual(marked(), [0, 1, 2].map((i) => chunks[i].indexInBlob));
  assert.deepEqual([t.reads(), t.port.writes.length], [2, 2], 'its chunk, and the two after it in one backend read and one write');
  // Reading on: the window from that READ's offset, its own chunk in a backend read of its own and
  // the rest of the window in one. The kernel asks only for holes, so the daemon does not see the
  // reader read on through what is in the file: once the window is in, it streams on in steps of
  // half a window (256 KiB now: the window doubled) up to two windows past the READ, and stops there.
  const first = chunks[3];
  const m = t.read(first);
  await waitFor(() => t.session.inflight().length === 0, 'the READ to complete');
  await settle();
  assert.ok(t.port.completed.includes(m));
  const inWindow = upTo(first.uncompressedOffset + 0x20000);
  const streamed = upTo(first.uncompressedOffset + readLen(first) + 2 * 0x40000);
  assert.ok(inWindow.length >= 10 && streamed.length > inWindow.length + 32 && streamed.length < chunks.length, `window of ${inWindow.length} chunks, stream to ${streamed.length}`);
  assert.deepEqual(marked(), streamed.map((c) => c.indexInBlob), 'exactly the chunks up to the stream\'s end are marked');
  for (const c of chunks) assert.equal(holds(t.port, c), streamed.includes(c), `chunk ${c.indexInBlob} in the cache file`);
  const afterStream = t.reads();
  assert.ok(afterStream >= 4 + 2 && afterStream <= 4 + 5, `the window in one backend read, the stream in steps of its own (${afterStream - 4})`);
  // The reader overtakes the stream: a READ just past it reads on, and the stream reaches further
  // (four windows of 512 KiB: the blob's end).
  const next = chunks[streamed.length];
  t.read(next);
  await waitFor(() => t.session.inflight().length === 0 && t.state.count(t.file) === chunks.length, 'a READ past the stream, and the stream to the blob\'s end');
  await settle();
  for (const c of chunks) assert.ok(holds(t.port, c), `chunk ${c.indexInBlob} in the cache file`);
  assert.deepEqual(Object.values(t.state.fetches(blobId)).filter((n) => n !== 1), [], 'no chunk fetched twice');
  assert.equal(t.session.stats.readErrors, 0);
  assert.deepEqual(t.port.violations, []);
  t.state.close();
});

test('amplification: a READ from inside a chunk past the last READ jumped there (an mmap fault\'s read-around), however near: the read-ahead only, no window', async () => {
  const t = await session('jump', entry('jump', { batch_size: 0x20000 }));
  const marked = () => [...t.state.cached(t.file)].sort((a, b) => a - b);
  t.read(chunks[20]);
  await waitFor(() => t.session.inflight().length === 0, 'the first READ');
  await settle();
  assert.deepEqual(marked(), [20, 21, 22].map((i) => chunks[i].indexInBlob), 'the READ\'s chunk and the read-ahead');
  // Under cachefiles a reader that reads on asks from a hole's start, a chunk's start; this READ
  // starts a page into chunk 23, within a window of the last: it is a jump, not reading on.
  const c = chunks[23];
  assert.ok(c.uncompressedSize > 4096);
  t.session.handle({ type: 'read', msgId: 99, objectId: 1, offset: c.uncompressedOffset + 4096, len: 4096 });
  await waitFor(() => t.session.inflight().length === 0, 'the READ inside a chunk');
  await settle();
  assert.ok(t.port.completed.includes(99));
  assert.deepEqual(marked(), [20, 21, 22, 23, 24, 25].map((i) => chunks[i].indexInBlob), 'its chunk and the read-ahead of two chunks: the window did not open');
  // The same READ at the chunk's start reads on: the window opens.
  t.read(chunks[26]);
  await waitFor(() => t.session.inflight().length === 0 && t.state.count(t.file) > 30, 'a READ that reads on');
  t.state.close();
});

test('amplification: a corrupt chunk in the window is never written and fails only a READ of its own bytes', async () => {
  const badDir = path.join(work, 'bad-blobs');
  fs.mkdirSync(badDir);
  const data = fs.readFileSync(path.join(blobDir, blobId));
  const bad = chunks[5];
  data[bad.compressedOffset + Math.floor(bad.compressedSize / 2)] ^= 0x5a;
  fs.writeFileSync(path.join(badDir, blobId), data);
  const t = await session('corrupt', entry('bad', { batch_size: 0x20000 }, badDir));
  // A reader reading on: the second READ's window holds the corrupt chunk.
  t.read(chunks[0]);
  await waitFor(() => t.session.inflight().length === 0, 'the first READ');
  t.read(chunks[3]);
  await waitFor(() => t.session.inflight().length === 0, 'the READ of a good chunk');
  await settle();
  assert.equal(t.session.stats.readErrors, 0, 'the good chunk\'s READ succeeds');
  assert.ok(holds(t.port, chunks[3]) && holds(t.port, chunks[4]) && holds(t.port, chunks[6]), 'its good neighbours are written');
  assert.ok(!t.state.isCached(t.file, bad.indexInBlob), 'the corrupt chunk is not marked');
  assert.deepEqual(t.port.writes.filter(([, off]) => off === bad.uncompressedOffset), [], 'nor written');
  // The kernel asks for it: EIO (completed without data), still nothing written.
  t.read(bad);
  await waitFor(() => t.session.inflight().length === 0, 'the READ of the corrupt chunk');
  assert.equal(t.session.stats.readErrors, 1);
  assert.deepEqual(t.port.writes.filter(([, off]) => off === bad.uncompressedOffset), []);
  assert.deepEqual(t.port.violations, []);
  t.state.close();
});

test('amplification with prefetch and READs racing: every chunk fetched once, the cache file equals the blob', async () => {
  const t = await session('race', entry('race', { prefetch: { enable: true, prefetch_all: true, threads: 2, batch_size: 0x8000 } }));
  // Every chunk asked for twice, in a scrambled order, while the prefetch runs.
  const order = [...chunks, ...chunks].map((c, i) => ({ c, k: (i * 7919) % 97 })).sort((a, b) => a.k - b.k).map((x) => x.c);
  const ids = order.map((c) => t.read(c));
  await waitFor(() => t.session.inflight().length === 0 && t.state.count(t.file) === chunks.length, 'every READ and the prefetch');
  assert.deepEqual(t.port.completed.sort((a, b) => a - b), ids);
  assert.equal(t.session.stats.readErrors, 0);
  for (const c of chunks) assert.ok(holds(t.port, c), `chunk ${c.indexInBlob} holds the blob's bytes`);
  const fetches = t.state.fetches(blobId);
  assert.equal(Object.keys(fetches).length, chunks.length);
  assert.deepEqual(Object.entries(fetches).filter(([, n]) => n !== 1), [], 'no chunk fetched twice');
  assert.deepEqual(t.port.violations, []);
  t.state.close();
});

/** The test image registered as `id` with a 128 KiB window, in a state of its own, and its blob as the registry resolves it. */
async function registeredBlob(id: string) {
  const state = new DaemonState(path.join(work, `state-${id}`));
  const registry = new ImageRegistry(state, log);
  registries.push(registry);
  await registry.add(entry(id, { batch_size: 0x20000 }));
  const target = registry.resolve(id, blobId);
  assert.ok(target?.kind === 'blob');
  return { state, target };
}

/**
 * A cache file of the blob in memory, as a front end that asks for every read (fanotify's) has it,
 * started with no prefetch; `marked` is told as CacheFileIo.marked is, with the file's key.
 */
function memoryCacheFile(state: DaemonState, target: Awaited<ReturnType<typeof registeredBlob>>['target'], name: string, marked?: (key: { volume: string; cookie: string }) => void) {
  const bytes = Buffer.alloc(blobBytes.length);
  const held: Array<[number, number]> = [];
  const key = { volume: `erofs,${name}`, cookie: blobId };
  const io = {
    asksOnlyForMissing: false,
    write: async (offset: number, data: Uint8Array) => {
      bytes.set(data, offset);
      held.push([offset, offset + data.length]);
    },
    dataRanges: () => held,
    marked: marked && (() => marked(key)),
  };
  const counters = { prefetchedChunks: 0, staleMarks: 0, chunksWrittenByVerifier: 0 };
  const f = new BlobCacheFile(key, target.map, target.fetcher, io, new WorkGuard(() => undefined), state, counters, log, target.fill);
  f.start(null);
  return { f, key, bytes };
}

test('amplification: a READ the kernel was let do (its bytes held, BlobCacheFile.readOn) moves the window as fill() does', async () => {
  const { state, target } = await registeredBlob('readon');
  // Two cache files of the blob, in memory: one reader's READs served by fill(), the other's held ones by readOn().
  const a = memoryCacheFile(state, target, 'by-fill');
  const b = memoryCacheFile(state, target, 'by-read-on');
  for (const x of [a, b]) await x.f.fill(chunks[0].uncompressedOffset, 4096);
  await settle();
  // Reading on through the chunks the first READ brought in, then past the window that opens.
  for (const c of [chunks[1], chunks[2]]) {
    assert.ok(b.f.rangeCached(c.uncompressedOffset, 4096), `chunk ${c.indexInBlob} is held before its READ`);
    await a.f.fill(c.uncompressedOffset, 4096);
    b.f.readOn(c.uncompressedOffset, 4096);
    await waitFor(() => state.count(b.key) === state.count(a.key), 'the window after readOn');
    await settle();
  }
  const marked = (k: typeof a.key) => [...state.cached(k)].sort((x, y) => x - y);
  assert.ok(marked(a.key).length > 10, `the window reached past the first READ's read-ahead (${marked(a.key).length} chunks)`);
  assert.deepEqual(marked(b.key), marked(a.key), 'the same chunks fetched ahead');
  for (const i of marked(b.key)) {
    const c = chunks.find((x) => x.indexInBlob === i)!;
    assert.ok(b.bytes.subarray(c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize).equals(blobBytes.subarray(c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize)), `chunk ${i} holds the blob's bytes`);
  }
  state.close();
});

test('amplification: the front end hears of the chunks the window marked as they are marked, not at its next READ (CacheFileIo.marked: a fanotify cache file loses its mark the moment it is complete)', async () => {
  const { state, target } = await registeredBlob('marked');
  /** The marks the file had each time the front end was told of new ones. */
  const told: number[] = [];
  const { f, key } = memoryCacheFile(state, target, 'marked', (k) => told.push(state.count(k)));
  await f.fill(chunks[0].uncompressedOffset, 4096);
  // The READ's own chunks (the window's may land before the READ settles, or after: either way told).
  const afterRead = target.map.chunksIn(chunks[0].uncompressedOffset, 4096).length;
  // No READ after the first: the window's chunks land on their own.
  await waitFor(() => told.length > 0 && told[told.length - 1] > afterRead, 'the window\'s chunks marked and told');
  await settle();
  assert.ok(state.count(key) > afterRead, `the window fetched past the READ (${afterRead} then ${state.count(key)} chunks)`);
  assert.equal(told[told.length - 1], state.count(key), 'told after the last chunks were marked, with them counted');
  assert.deepEqual(told, [...told].sort((x, y) => x - y), 'told as marks grew');
  state.close();
});
