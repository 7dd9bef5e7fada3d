/**
 * The daemon's pipeline without a kernel: the API registers an image, then OPEN/READ messages go
 * through a fake cachefiles port that records what would be written into the cache files.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { createImage } from '../src/builder/create.ts';
import { exportBlock } from '../src/image/export-block.ts';
import { ImageRegistry } from '../src/daemon/daemon.ts';
import { DaemonState } from '../src/daemon/state.ts';
import { OnDemandSession } from '../src/daemon/ondemand.ts';
import { FakePort } from './helpers/fake-port.ts';
import { startApi } from '../src/daemon/api.ts';
import { openBootstrap } from '../src/image/open.ts';
import { inspectImage } from '../src/image/inspect.ts';
import { VerifyPool } from '../src/daemon/verify-pool.ts';
import { chunkDigest } from '../src/blob/digest.ts';
import { NydusError } from '../erofs/errors.ts';
import { prand, tmpDir } from './helpers/fixtures.ts';
import { apiRequest as api } from './helpers/api-client.ts';
import { repoRoot } from './helpers/cli.ts';
import { spawn, spawnSync } from 'node:child_process';

const work = tmpDir('daemon');
const log = pino({ level: 'silent' });
let boot: string;
let blobDir: string;
let blobId: string;

const settle = () => new Promise((r) => setTimeout(r, 200));

before(() => {
  const src = path.join(work, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'a'), prand(700000, 1));
  fs.writeFileSync(path.join(src, 'b'), Buffer.alloc(300000, 'b'));
  blobDir = path.join(work, 'blobs');
  boot = path.join(work, 'img.boot');
  const r = createImage({ source: src, bootstrap: boot, blobDir, chunkSize: 0x40000, compressor: 'zstd', digester: 'blake3' });
  blobId = r.blob!.blobId;
});

after(() => fs.rmSync(work, { recursive: true, force: true }));

const entry = (id: string, extra: object = {}) => ({
  type: 'bootstrap', id, domain_id: '',
  config_v2: {
    version: 2, id, backend: { type: 'localfs', localfs: { dir: blobDir } },
    cache: { type: 'fscache', fscache: { work_dir: work } }, metadata_path: boot, ...extra,
  },
});

test('API: register through PUT /api/v2/blobs, refuse bad bodies with 400, socket is 0600', async () => {
  const state = new DaemonState(path.join(work, 'state1'));
  const registry = new ImageRegistry(state, log);
  const sock = path.join(work, 'api1.sock');
  const server = await startApi(sock, { id: 'd1', supervisor: '', registry, state, session: () => null, log });
  try {
    assert.equal(fs.statSync(sock).mode & 0o777, 0o600);
    assert.equal((await api(sock, 'PUT', '/api/v2/blobs', entry('img1'))).status, 204);
    const bad = await api(sock, 'PUT', '/api/v2/blobs', '{not json');
    assert.equal(bad.status, 400);
    assert.match(bad.body.message, /not valid JSON/);
    const noPath = await api(sock, 'PUT', '/api/v2/blobs', { type: 'bootstrap', id: 'x', config_v2: { backend: { type: 'localfs', localfs: { dir: '/' } } } });
    assert.equal(noPath.status, 400);
    assert.match(noPath.body.message, /metadata_path is required/);
    const legacy = await api(sock, 'PUT', '/api/v2/blobs', {
      type: 'bootstrap', id: 'img2', domain_id: 'dom',
      config: { backend_type: 'localfs', backend_config: { dir: blobDir }, cache_type: 'fscache', cache_config: { work_dir: work }, metadata_path: boot },
    });
    assert.equal(legacy.status, 204);
    const daemon = await api(sock, 'GET', '/api/v1/daemon');
    assert.equal(daemon.body.state, 'RUNNING');
    assert.deepEqual(Object.keys(daemon.body.backend_collection).sort(), ['img1', 'img2']);
    assert.equal((await api(sock, 'DELETE', '/api/v2/blobs?domain_id=dom')).status, 204);
    assert.equal((await api(sock, 'GET', '/api/v2/blobs')).body.length, 1);
    assert.equal((await api(sock, 'DELETE', '/api/v2/blobs?blob_id=nope')).status, 404);
    // nydusctl is a client of the same socket (run asynchronously: this process serves the API).
    const ctl = (args: string[]) => new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      const p = spawn(path.join(repoRoot, 'bin/nydusctl'), args);
      let out = '';
      let err = '';
      p.stdout.on('data', (d) => (out += d));
      p.stderr.on('data', (d) => (err += d));
      p.on('exit', (code) => resolve({ code, out, err }));
    });
    const info = await ctl(['--sock', sock, 'info', '--raw']);
    assert.equal(info.code, 0, info.err);
    assert.equal(JSON.parse(info.out).state, 'RUNNING');
    const blobcache = await ctl(['--sock', sock, 'metrics', 'blobcache', '--blob-id', blobId]);
    assert.equal(JSON.parse(blobcache.out).blob_id, blobId);
    const down = await ctl(['--sock', path.join(work, 'no.sock'), 'info']);
    assert.equal(down.code, 1);
    assert.match(down.err, /^nydusctl: error: cannot reach nydusd/);
  } finally {
    server.close();
    state.close();
  }
});

test('session: OPEN and READ fill the cache files with exactly the image bytes', async () => {
  const state = new DaemonState(path.join(work, 'state2'));
  const registry = new ImageRegistry(state, log);
  registry.add(entry('img'));
  const port = new FakePort();
  const session = new OnDemandSession(port, registry, state, log, 2);
  session.handle({ type: 'open', msgId: 1, objectId: 10, volumeKey: 'erofs,img', cookieKey: 'img', fd: 100, flags: 0 });
  session.handle({ type: 'open', msgId: 2, objectId: 11, volumeKey: 'erofs,img', cookieKey: blobId, fd: 101, flags: 0 });
  session.handle({ type: 'open', msgId: 3, objectId: 12, volumeKey: 'erofs,img', cookieKey: 'f'.repeat(64), fd: 102, flags: 0 });
  const image = openBootstrap(boot);
  assert.deepEqual(port.copens, [[1, fs.statSync(boot).size], [2, image.blobs[0].uncompressed_size], [3, -2]]);
  assert.deepEqual(port.closed, [102], 'the fd of a refused open is closed');
  session.handle({ type: 'read', msgId: 4, objectId: 10, offset: 0, len: fs.statSync(boot).size });
  session.handle({ type: 'read', msgId: 5, objectId: 11, offset: 0, len: image.blobs[0].uncompressed_size });
  await settle();
  assert.deepEqual(port.completed.sort(), [4, 5]);
  assert.ok(port.files.get(100)!.subarray(0, fs.statSync(boot).size).equals(fs.readFileSync(boot)));
  // The blob's cache file equals the uncompressed blob: export it and compare its data region.
  const exported = path.join(work, 'ref.erofs');
  exportBlock({ bootstrap: boot, blobDir, output: exported });
  const ref = fs.readFileSync(exported);
  const cache = port.files.get(101)!;
  const dataStart = ref.length - image.blobs[0].uncompressed_size;
  assert.ok(cache.subarray(0, image.blobs[0].uncompressed_size).equals(ref.subarray(dataStart)), 'cache file holds the uncompressed blob');
  assert.equal(state.count(blobId), image.blobs[0].chunk_count, 'every chunk is marked after its write');
  state.close();
});

test('session: a corrupt chunk is never written; the read completes without data', async () => {
  const badDir = path.join(work, 'bad-blobs');
  fs.mkdirSync(badDir);
  const data = fs.readFileSync(path.join(blobDir, blobId));
  data[10] ^= 0x55;
  fs.writeFileSync(path.join(badDir, blobId), data);
  const state = new DaemonState(path.join(work, 'state3'));
  const registry = new ImageRegistry(state, log);
  const e = entry('bad');
  e.config_v2.backend.localfs.dir = badDir;
  registry.add(e);
  const port = new FakePort();
  const session = new OnDemandSession(port, registry, state, log, 2);
  session.handle({ type: 'open', msgId: 1, objectId: 1, volumeKey: 'erofs,bad', cookieKey: blobId, fd: 7, flags: 0 });
  session.handle({ type: 'read', msgId: 2, objectId: 1, offset: 0, len: 4096 });
  await settle();
  assert.deepEqual(port.completed, [2]);
  // Byte 10 of the blob is in chunk 0 (at uncompressed offset 0): that chunk is never written or marked.
  assert.deepEqual(port.writes.filter(([fd, off]) => fd === 7 && off === 0), [], 'the corrupt chunk was not written');
  assert.equal(session.stats.readErrors, 1);
  assert.ok(!state.isCached(blobId, 0));
  state.close();
});

test('state: registered images and cached chunks survive a restart', () => {
  const dir = path.join(work, 'state4');
  let state = new DaemonState(dir);
  new ImageRegistry(state, log).add(entry('persist'));
  state.mark(blobId, [0, 2]);
  state.close();
  state = new DaemonState(dir);
  const registry = new ImageRegistry(state, log);
  registry.restore();
  assert.deepEqual(registry.list().map((e) => e.id), ['persist']);
  assert.deepEqual([...state.cached(blobId)].sort(), [0, 2]);
  assert.ok(registry.resolve('persist', blobId));
  state.close();
});

test('session: marks of a blob whose cache file holds no data are dropped on open', () => {
  const state = new DaemonState(path.join(work, 'state5'));
  const registry = new ImageRegistry(state, log);
  registry.add(entry('reconcile'));
  state.mark(blobId, [0, 1]);
  const emptyCacheFile = fs.openSync(path.join(work, 'empty-cache-file'), 'w+');
  const session = new OnDemandSession(new FakePort(), registry, state, log, 1);
  session.handle({ type: 'open', msgId: 1, objectId: 1, volumeKey: 'erofs,reconcile', cookieKey: blobId, fd: emptyCacheFile, flags: 0 });
  assert.equal(state.count(blobId), 0);
  fs.closeSync(emptyCacheFile);
  state.close();
});

test('session: prefetch fetches exactly the files of the prefetch table, ahead of any read', async () => {
  const boot2 = path.join(work, 'prefetch.boot');
  createImage({ source: path.join(work, 'src'), bootstrap: boot2, blobDir, chunkSize: 0x40000, compressor: 'zstd', digester: 'blake3', prefetchPaths: ['/b'] });
  const state = new DaemonState(path.join(work, 'state6'));
  const registry = new ImageRegistry(state, log);
  const e = entry('pf', { rafs: { prefetch: { enable: true } } });
  e.config_v2.metadata_path = boot2;
  registry.add(e);
  const port = new FakePort();
  const session = new OnDemandSession(port, registry, state, log, 2);
  session.handle({ type: 'open', msgId: 1, objectId: 1, volumeKey: 'erofs,pf', cookieKey: blobId, fd: 9, flags: 0 });
  await settle();
  const chunksOfB = (inspectImage(boot2, 'stat /b') as { chunks: Array<{ chunk_index: number }> }).chunks.map((c) => c.chunk_index);
  assert.deepEqual([...state.cached(blobId)].sort(), [...new Set(chunksOfB)].sort());
  assert.equal(session.stats.prefetchedChunks, new Set(chunksOfB).size);
  assert.deepEqual(port.completed, [], 'no read was asked for');
  state.close();
});

test('verify pool: worker threads return verified bytes and refuse a corrupt chunk', async () => {
  const pool = new VerifyPool(2);
  try {
    const data = prand(100000, 42);
    const job = { stored: data, compressed: false, compressor: 'zstd' as const, uncompressedSize: data.length, digester: 'blake3' as const, digest: chunkDigest('blake3', data), where: 'test chunk' };
    // verify() takes ownership of the stored bytes: each call gets its own copy.
    const out = await Promise.all([1, 2, 3].map(() => pool.verify({ ...job, stored: Buffer.from(data) })));
    for (const o of out) assert.ok(o.equals(data));
    const bad = Buffer.from(data);
    bad[5] ^= 1;
    await assert.rejects(pool.verify({ ...job, stored: bad }), (e: Error) => e instanceof NydusError && e.errno === 5 && /digest mismatch/.test(e.message));
  } finally {
    await pool.close();
  }
});

test('nydusd: missing flags and a kernel without on-demand cachefiles are one clear line, exit 1', () => {
  const run = (args: string[]) => spawnSync(path.join(repoRoot, 'bin/nydusd'), args, { encoding: 'utf8', timeout: 60_000 });
  const noCache = run(['singleton', '--apisock', path.join(work, 'x.sock')]);
  assert.equal(noCache.status, 1);
  assert.match(noCache.stderr, /^nydusd: error: --fscache <dir> is required/);
  // This host's kernel has no /dev/cachefiles on-demand support; the guest kernel test covers the rest.
  const r = run(['singleton', '--fscache', path.join(work, 'cache'), '--apisock', path.join(work, 'x.sock')]);
  if (!fs.existsSync('/dev/cachefiles')) {
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^nydusd: error: cannot bind the fscache cache at .*cachefiles/);
    assert.equal(r.stderr.trim().split('\n').length, 1);
  }
});
