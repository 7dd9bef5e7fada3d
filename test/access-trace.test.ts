/**
 * Access traces without a kernel: READs through a fake cachefiles port, then nydus's
 * GET /api/v1/metrics/{pattern,files} and `nydusctl metrics pattern --paths`. Prefetch is no access;
 * a chunk files share counts for the one most of whose chunks were read (the first in directory order
 * among equals); the trace is bounded.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type http from 'node:http';
import pino from 'pino';
import { createImage } from '../src/builder/create.ts';
import { ImageRegistry } from '../src/daemon/daemon.ts';
import { DaemonState } from '../src/daemon/state.ts';
import { OnDemandSession } from '../src/daemon/frontend/cachefiles.ts';
import { startApi } from '../src/daemon/api.ts';
import { inspectImage } from '../src/image/inspect.ts';
import { AccessTrace, ACCESS_TRACE_MAX_ENTRIES } from '../src/daemon/access-trace.ts';
import { BlobMap, packChunks } from '../src/daemon/blob-map.ts';
import { FakePort, waitFor } from './helpers/cachefiles-port.ts';
import { apiRequest as api, blobCacheEntry } from './helpers/api-client.ts';
import { prand, tmpDir } from './helpers/fixtures.ts';
import { repoRoot } from './helpers/cli.ts';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

/** nydusctl as a child process, without blocking the API server this process runs. */
async function nydusctl(...args: string[]): Promise<string> {
  return (await promisify(execFile)(path.join(repoRoot, 'bin/nydusctl'), args, { encoding: 'utf8' })).stdout;
}

const work = tmpDir('access-trace');
const log = pino({ level: 'silent' });
let boot: string;
let blobDir: string;
let blobId: string;
/** Each file's chunks' uncompressed offsets, and its nid. */
const files = new Map<string, { nid: number; offsets: number[] }>();

before(() => {
  const src = path.join(work, 'src');
  fs.mkdirSync(path.join(src, 'd'), { recursive: true });
  fs.writeFileSync(path.join(src, 'a'), prand(700000, 1));
  fs.writeFileSync(path.join(src, 'b'), prand(5000, 2));
  // The same bytes as b: its chunk is b's (b comes first in directory order).
  fs.writeFileSync(path.join(src, 'c'), prand(5000, 2));
  fs.writeFileSync(path.join(src, 'd', 'e'), prand(300000, 3));
  blobDir = path.join(work, 'blobs');
  boot = path.join(work, 'img.boot');
  blobId = createImage({ source: src, bootstrap: boot, blobDir, chunkSize: 0x40000, compressor: 'zstd', digester: 'blake3' }).blob!.blobId;
  for (const f of inspectImage(boot, 'chunks') as Array<{ path: string; nid: number; chunks: Array<{ uncompressed_offset: number }> }>) {
    files.set(f.path, { nid: f.nid, offsets: f.chunks.map((c) => c.uncompressed_offset) });
  }
});

const registries: ImageRegistry[] = [];
const servers: http.Server[] = [];
after(async () => {
  for (const s of servers) s.close();
  for (const r of registries) await r.close();
  fs.rmSync(work, { recursive: true, force: true });
});

const entry = (id: string, extra: object = {}) => blobCacheEntry(id, { bootstrap: boot, blobDir, workDir: work }, extra);

async function daemon(name: string) {
  const state = new DaemonState(path.join(work, `state-${name}`));
  const registry = new ImageRegistry(state, log);
  registries.push(registry);
  const sock = path.join(work, `${name}.sock`);
  const server = await startApi(sock, { id: name, registry, state, lifecycle: null, log });
  servers.push(server);
  const port = new FakePort();
  const session = new OnDemandSession(port, registry, state, log, 2);
  let msg = 1;
  let fd = 100;
  return {
    sock, registry, session,
    /** OPENs the blob of image `id` as the kernel would; returns its object id. */
    openBlob(id: string, objectId: number): void {
      session.handle({ type: 'open', msgId: msg++, objectId, volumeKey: `erofs,${id}`, cookieKey: blobId, fd: port.give(fd++), flags: 0 });
    },
    async read(objectId: number, offset: number, len: number): Promise<void> {
      session.handle({ type: 'read', msgId: msg++, objectId, offset, len });
      await waitFor(() => session.inflight().length === 0, 'the READ to finish');
    },
  };
}

test('GET /api/v1/metrics/pattern lists the files in the order of their first demand read, with nydus\'s fields and the path', async () => {
  const d = await daemon('pattern');
  assert.equal((await api(d.sock, 'PUT', '/api/v2/blobs', entry('img'))).status, 204);
  d.openBlob('img', 1);
  const start = Date.now();
  // d/e, then the second chunk of a, then c (whose chunk is b's), then a's first chunk and d/e again.
  await d.read(1, files.get('/d/e')!.offsets[0], 4096);
  await d.read(1, files.get('/a')!.offsets[1], 8192);
  await d.read(1, files.get('/c')!.offsets[0], 4096);
  await d.read(1, files.get('/a')!.offsets[0], 4096);
  await d.read(1, files.get('/d/e')!.offsets[0] + 8192, 4096);
  const r = await api(d.sock, 'GET', '/api/v1/metrics/pattern?id=img');
  assert.equal(r.status, 200);
  assert.deepEqual(r.body.map((p: { path: string }) => p.path), ['/d/e', '/a', '/b'], 'first-read order; a shared chunk counts for the first file holding it');
  const e = r.body[0];
  assert.equal(e.ino, files.get('/d/e')!.nid, 'ino is the nid (the inode number the kernel shows)');
  assert.equal(e.nr_read, 2, '/d/e: two demand reads of its chunk');
  assert.equal(r.body[1].nr_read, 2, '/a: a read of each of two chunks');
  assert.ok(e.first_access_time_secs * 1000 + e.first_access_time_nanos / 1e6 >= start - 1000, 'first access time is wall time');
  assert.ok(Number.isInteger(e.first_access_time_nanos) && e.first_access_time_nanos < 1e9);
  // Without id, the only image there is.
  assert.deepEqual((await api(d.sock, 'GET', '/api/v1/metrics/pattern')).body, r.body);

  // nydus's files metrics: ino -> counters (and the path).
  const m = await api(d.sock, 'GET', '/api/v1/metrics/files?id=img');
  assert.equal(m.status, 200);
  assert.deepEqual(Object.keys(m.body).map(Number).sort(), ['/d/e', '/a', '/b'].map((p) => files.get(p)!.nid).sort());
  assert.deepEqual(m.body[files.get('/a')!.nid], { total_fops: 2, data_read: 2 * 0x40000, block_count_read: new Array(8).fill(0), fop_hits: [0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], fop_errors: new Array(15).fill(0), path: '/a' });

  // latest=true: the inodes read since the last such call, as nydus's ranges, then cleared.
  const latest = await api(d.sock, 'GET', '/api/v1/metrics/files?id=img&latest=true');
  assert.deepEqual(latest.body, ['/d/e', '/a', '/b'].map((p) => files.get(p)!.nid).sort((x, y) => x - y).map((n) => [n]));
  assert.deepEqual((await api(d.sock, 'GET', '/api/v1/metrics/files?id=img&latest=true')).body, [], 'cleared by the previous call');
  await d.read(1, files.get('/a')!.offsets[2], 4096);
  assert.deepEqual((await api(d.sock, 'GET', '/api/v1/metrics/files?id=img&latest=true')).body, [[files.get('/a')!.nid]], 'a file read again shows again');
  assert.equal((await api(d.sock, 'GET', '/api/v1/metrics/pattern?id=img')).body.length, 3, 'latest leaves the pattern as it was');

  // nydusctl: the paths alone, ready for nydus-image create --prefetch-policy fs.
  assert.equal(await nydusctl('--sock', d.sock, 'metrics', 'pattern', '--id', 'img', '--paths'), '/d/e\n/a\n/b\n');
  const ctl = JSON.parse(await nydusctl('--sock', d.sock, 'metrics', 'files', '--id', 'img'));
  assert.deepEqual(ctl, (await api(d.sock, 'GET', '/api/v1/metrics/files?id=img')).body);
  assert.deepEqual(ctl[files.get('/a')!.nid], { total_fops: 3, data_read: 700000, block_count_read: new Array(8).fill(0), fop_hits: [0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], fop_errors: new Array(15).fill(0), path: '/a' }, 'the third chunk of /a read since');

  // An image that is not there is nydus's NoCounter: 404; two images need an id.
  const missing = await api(d.sock, 'GET', '/api/v1/metrics/pattern?id=nope');
  assert.equal(missing.status, 404);
  assert.match(missing.body.message, /no image "nope"/);
  assert.equal((await api(d.sock, 'PUT', '/api/v2/blobs', entry('img2'))).status, 204);
  const ambiguous = await api(d.sock, 'GET', '/api/v1/metrics/files');
  assert.equal(ambiguous.status, 404);
  assert.match(ambiguous.body.message, /2 images are registered: say which with \?id=/);
  assert.deepEqual((await api(d.sock, 'GET', '/api/v1/metrics/pattern?id=img2')).body, [], 'each image has its own trace');
  assert.equal((await api(d.sock, 'POST', '/api/v1/metrics/pattern')).status, 400, 'a known path with another method');
  d.session.closeAll();
});

test('prefetch fetches the whole blob and traces nothing; a READ after it does', async () => {
  const d = await daemon('prefetch');
  assert.equal((await api(d.sock, 'PUT', '/api/v2/blobs', entry('pf', { rafs: { prefetch: { enable: true, prefetch_all: true } } }))).status, 204);
  d.openBlob('pf', 1);
  await waitFor(() => d.session.stats.prefetchedChunks >= 5, 'the prefetch of every chunk');
  assert.deepEqual((await api(d.sock, 'GET', '/api/v1/metrics/pattern?id=pf')).body, []);
  await d.read(1, files.get('/b')!.offsets[0], 4096);
  assert.deepEqual((await api(d.sock, 'GET', '/api/v1/metrics/pattern?id=pf')).body.map((p: { path: string }) => p.path), ['/b']);
  d.session.closeAll();
});

test('the trace keeps a bounded number of first reads; reads beyond the bound are counted as dropped', () => {
  const chunks = Array.from({ length: ACCESS_TRACE_MAX_ENTRIES + 10 }, (_, i) => ({
    blobIndex: 0, indexInBlob: i, digest: Buffer.alloc(32), uncompressedOffset: i * 4096, uncompressedSize: 4096,
    compressedOffset: i * 4096, compressedSize: 4096, compressed: false,
  }));
  const map = new BlobMap('f'.repeat(64), 0, chunks.length * 4096, 'none', 'blake3', packChunks(chunks));
  const trace = new AccessTrace([map]);
  const blob = trace.blob(0);
  blob.record(0, chunks.length * 4096);
  blob.record(4096, 4096);
  const snap = trace.snapshot();
  assert.equal(snap.chunks.length / 2, ACCESS_TRACE_MAX_ENTRIES);
  assert.equal(trace.dropped, 10);
  assert.deepEqual([...snap.reads.subarray(0, 3)], [1, 2, 1], 'reads per chunk');
  assert.equal(trace.takeRecent().chunks.length / 2, ACCESS_TRACE_MAX_ENTRIES);
  blob.record(chunks.length * 4096 - 4096, 4096);
  assert.deepEqual([...trace.takeRecent().chunks], [0, chunks.length - 1], 'after a full period, every chunk counts as new again');
});

/**
 * The chunk of zeros every hole and run of zeros of an image shares: traced, it counts for the file of
 * which the trace holds the largest share, not for the first file holding it (a large file never read,
 * which fed back as a prefetch list was fetched whole first). Found by the prefetch probe.
 */
test('a shared chunk counts for the file most of whose chunks were read, not for the first file holding it', async () => {
  const { resolveTraceFiles } = await import('../src/daemon/trace-files.ts');
  const { openImage } = await import('../src/image/open.ts');
  const src = path.join(work, 'zeros-src');
  fs.mkdirSync(path.join(src, 'a'), { recursive: true });
  fs.mkdirSync(path.join(src, 'z'));
  const chunk = 0x10000;
  // First in directory order: a large file with one chunk of zeros among its data.
  const big = prand(50 * chunk, 9);
  big.fill(0, 7 * chunk, 8 * chunk);
  fs.writeFileSync(path.join(src, 'a', 'unrelated-big'), big);
  fs.writeFileSync(path.join(src, 'z', 'prealloc'), Buffer.alloc(4 * chunk));
  const sparse = fs.openSync(path.join(src, 'z', 'sparse-db'), 'w');
  fs.writeSync(sparse, Buffer.from('tail'), 0, 4, 5 * chunk);
  fs.closeSync(sparse);
  const zboot = path.join(work, 'zeros.boot');
  createImage({ source: src, bootstrap: zboot, blobDir: path.join(work, 'zeros-blobs'), chunkSize: chunk, compressor: 'zstd', digester: 'blake3' });
  const { image } = openImage(zboot);
  const chunks = image.blobs[0].chunks;
  const nidOf = new Map((inspectImage(zboot, 'chunks') as Array<{ path: string; nid: number }>).map((f) => [f.path, f.nid]));
  const fileOf = (p: string) => image.inodes.get(nidOf.get(p)!)!;
  const zero = chunks.indexOf(fileOf('/z/prealloc').chunks![0]!);
  const tail = chunks.indexOf(fileOf('/z/sparse-db').chunks![5]!);
  assert.ok(zero >= 0 && tail >= 0 && zero !== tail);
  assert.ok(fileOf('/a/unrelated-big').chunks!.includes(chunks[zero]), 'the large file holds the chunk of zeros too');
  const trace = (positions: number[]) => resolveTraceFiles({
    metadataPath: zboot, blobs: [{ id: image.blobs[0].id, chunkCount: chunks.length }], chunks: Uint32Array.from(positions.flatMap((p) => [0, p])),
  }).files.map((f) => f.path);
  // The sparse file read: its tail, and its holes (the chunk of zeros). (The preallocated file holds
  // that chunk alone: as large a share of it, but fewer of its chunks traced.)
  assert.deepEqual(trace([tail, zero]), ['/z/sparse-db']);
  // The preallocated file read: all of it is the chunk of zeros; it comes first in directory order of
  // the two files read whole.
  assert.deepEqual(trace([zero]), ['/z/prealloc']);
  // The large file read: its own chunks, the chunk of zeros among them.
  const bigChunks = [...new Set(fileOf('/a/unrelated-big').chunks!)].map((c) => chunks.indexOf(c!));
  assert.deepEqual(trace(bigChunks), ['/a/unrelated-big']);
});
