/**
 * nydusd's registry and http-proxy backends against a real registry (Debian's docker-registry): an
 * image built here, its blob pushed, registered as nydus-snapshotter does, and read through the
 * on-demand session into a fake cachefiles port. The oracle for the cache file is the uncompressed
 * blob that exportBlock writes from the local blob. Auth (Basic, Bearer with a token refused mid-read,
 * registry_token), faults (5xx, stall, corrupt body), the proxy with and without fallback, and the
 * nydus-backend-proxy server and command.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import net from 'node:net';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import pino from 'pino';
import { request } from 'undici';
import { createImage } from '../src/builder/create.ts';
import { exportBlock } from '../src/image/export-block.ts';
import { openBootstrap } from '../src/image/open.ts';
import { ImageRegistry, configKeys } from '../src/daemon/daemon.ts';
import { DaemonState } from '../src/daemon/state.ts';
import { OnDemandSession } from '../src/daemon/frontend/cachefiles.ts';
import { startApi } from '../src/daemon/api.ts';
import { parseBlobCacheEntry } from '../src/daemon/config.ts';
import { RegistryBackend } from '../src/daemon/backend/registry.ts';
import { HttpProxyBackend } from '../src/daemon/backend/http-proxy.ts';
import { httpProxyConfigFrom, registryConfigFrom } from '../src/daemon/backend/remote-config.ts';
import { startBlobProxy, type BlobProxyServer } from '../src/daemon/backend/proxy-server.ts';
import { RegistryClient } from '../src/registry/index.ts';
import { NydusError } from '../erofs/errors.ts';
import { FakePort, waitFor } from './helpers/cachefiles-port.ts';
import { startRegistry, freePort, type RegistryServer } from './helpers/registry.ts';
import { FaultProxy, TokenAuthProxy } from './helpers/registry-proxy.ts';
import { apiRequest as api } from './helpers/api-client.ts';
import { repoRoot } from './helpers/cli.ts';
import { prand, tmpDir } from './helpers/fixtures.ts';

const work = tmpDir('backend-registry');
const log = pino({ level: process.env.TEST_LOG ?? 'silent' });
const REPO = 'nydus/app';
const USERS = { alice: 'wonderland' };
const AUTH = Buffer.from('alice:wonderland').toString('base64');
let boot: string;
let blobDir: string;
let blobId: string;
let blobSize: number;
/** The uncompressed blob: what a fully read cache file holds. */
let expected: Buffer;
let open: RegistryServer;
let locked: RegistryServer;
let proxyServer: BlobProxyServer;
const cleanups: Array<() => Promise<unknown> | unknown> = [];

before(async () => {
  const src = path.join(work, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'a'), prand(900_000, 7));
  fs.writeFileSync(path.join(src, 'b'), Buffer.alloc(200_000, 'b'));
  fs.writeFileSync(path.join(src, 'c'), prand(300_000, 8));
  blobDir = path.join(work, 'blobs');
  boot = path.join(work, 'img.boot');
  const r = createImage({ source: src, bootstrap: boot, blobDir, chunkSize: 0x20000, compressor: 'zstd', digester: 'blake3' });
  blobId = r.blob!.blobId;
  blobSize = fs.statSync(path.join(blobDir, blobId)).size;
  const exported = path.join(work, 'ref.erofs');
  await exportBlock({ bootstrap: boot, blobDir, output: exported });
  const ref = fs.readFileSync(exported);
  const size = openBootstrap(boot).blobs[0].uncompressed_size;
  expected = ref.subarray(ref.length - size);
  [open, locked] = await Promise.all([startRegistry(), startRegistry({ users: USERS })]);
  cleanups.push(() => open.stop(), () => locked.stop());
  const blob = fs.readFileSync(path.join(blobDir, blobId));
  for (const [reg, credentials] of [[open, undefined], [locked, { username: 'alice', password: 'wonderland' }]] as const) {
    const client = new RegistryClient({ plainHttp: true, dockerConfig: false, credentials });
    const pushed = await client.pushBlob(`${reg.host}/${REPO}`, blob);
    assert.equal(pushed.digest, `sha256:${blobId}`, 'a nydus blob id is the sha256 of the blob file');
    await client.close();
  }
  proxyServer = await startBlobProxy(blobDir, '127.0.0.1', 0);
  cleanups.push(() => proxyServer.close());
});

after(async () => {
  for (const c of cleanups.reverse()) await c();
  fs.rmSync(work, { recursive: true, force: true });
});

/** The legacy body nydus-snapshotter PUTs, with `backend_config` from its registry config. */
function legacyEntry(id: string, backendConfig: object, backendType = 'registry') {
  return {
    type: 'bootstrap', id, domain_id: '',
    config: {
      id, backend_type: backendType, backend_config: backendConfig, cache_type: 'fscache',
      cache_config: { work_dir: path.join(work, 'cache', id) }, metadata_path: boot,
    },
  };
}

function v2Entry(id: string, registry: object) {
  return {
    type: 'bootstrap', id, domain_id: '',
    config_v2: {
      version: 2, id, backend: { type: 'registry', registry },
      cache: { type: 'fscache', fscache: { work_dir: path.join(work, 'cache', id) } }, metadata_path: boot,
    },
  };
}

/** What the snapshotter sends for a plain-http registry (its fields and the ones it adds). */
function snapshotterConfig(host: string, extra: object = {}) {
  return { readahead: false, host, repo: REPO, auth: '', scheme: 'http', skip_verify: true, proxy: { fallback: false }, ...extra };
}

interface Reader {
  registry: ImageRegistry;
  session: OnDemandSession;
  port: FakePort;
  state: DaemonState;
  /** Reads [offset, offset+len) of the blob through a cachefiles READ; resolves when it is done. */
  read(offset?: number, len?: number): Promise<void>;
  close(): Promise<void>;
}

let nextMsg = 1;
let nextFd = 100;

/** Registers `body` and opens its blob through an on-demand session on a fake cachefiles port. */
async function reader(body: object): Promise<Reader> {
  const id = (body as { id: string }).id;
  const state = new DaemonState(path.join(work, 'state', `${id}-${nextFd}`));
  const registry = new ImageRegistry(state, log);
  await registry.add(body);
  const port = new FakePort();
  const session = new OnDemandSession(port, registry, state, log, 4);
  const fd = port.give(nextFd++);
  session.handle({ type: 'open', msgId: nextMsg++, objectId: fd, volumeKey: `erofs,${id}`, cookieKey: blobId, fd, flags: 0 });
  return {
    registry, session, port, state,
    async read(offset = 0, len = expected.length) {
      session.handle({ type: 'read', msgId: nextMsg++, objectId: fd, offset, len });
      await waitFor(() => session.inflight().length === 0, 'the READ to finish', 60_000);
      // A failed READ completes at its first bad chunk: wait for its other fetches (and read-ahead) too.
      await waitFor(() => Object.values(registry.metrics()).every((m) => m.read_latency_dist.reduce((a, b) => a + b, 0) === m.read_count), 'backend reads to settle', 60_000);
    },
    async close() {
      await registry.close();
      state.close();
    },
  };
}

function cacheOf(r: Reader): Buffer {
  return r.port.files.get([...r.port.files.keys()][0]) ?? Buffer.alloc(0);
}

/** Every byte written to the cache file is the blob's byte at that place (no wrong data, ever). */
function assertNoWrongBytes(r: Reader): void {
  const cache = cacheOf(r);
  const n = Math.min(cache.length, expected.length);
  for (const [, off] of r.port.writes) {
    if (off >= n) continue;
    const end = Math.min(n, off + 0x20000);
    assert.ok(cache.subarray(off, end).equals(expected.subarray(off, end)), `bytes written at ${off} are the blob's`);
  }
}

function assertWhole(r: Reader): void {
  assert.ok(cacheOf(r).subarray(0, expected.length).equals(expected), 'the cache file holds the uncompressed blob');
  assert.deepEqual(r.port.violations, []);
}

test('registry backend: the snapshotter\'s legacy body through the API; Range reads fill the cache file; metrics per backend and in Prometheus form', async () => {
  const faults = await FaultProxy.start(open.url);
  cleanups.push(() => faults.close());
  const body = legacyEntry('plain', snapshotterConfig(faults.host));
  const sock = path.join(work, 'api.sock');
  const r = await reader({ ...body, id: 'plain-direct' } as object);
  // The API path (PUT as the snapshotter does; its fields, with unknown ones such as readahead, accepted).
  const state = new DaemonState(path.join(work, 'state-api'));
  const registry = new ImageRegistry(state, log);
  const server = await startApi(sock, { id: 'd', registry, state, lifecycle: null, log });
  try {
    assert.equal((await api(sock, 'PUT', '/api/v2/blobs', body)).status, 204);
    const listed = await api(sock, 'GET', '/api/v2/blobs');
    assert.equal(listed.body[0].backend.type, 'registry');
    assert.equal(listed.body[0].backend.host, faults.host);
    await r.read();
    assertWhole(r);
    const gets = faults.seen.filter((s) => s.method === 'GET' && s.url === `/v2/${REPO}/blobs/sha256:${blobId}`);
    assert.ok(gets.length > 0 && gets.every((g) => /^bytes=\d+-\d+$/.test(String(g.headers.range))), 'blob reads are Range GETs');
    const m = r.registry.metrics().registry;
    assert.equal(m.read_count, gets.length);
    assert.equal(m.read_errors, 0);
    assert.ok(m.read_amount_total > 0 && m.read_amount_total <= blobSize);
    assert.equal(m.read_latency_dist.reduce((a, b) => a + b, 0), m.read_count, 'every read is in the latency histogram');
    // The API's backend metrics: nydus's totals, then per type (this daemon's registry read nothing yet).
    const backend = (await api(sock, 'GET', '/api/v1/metrics/backend')).body;
    assert.deepEqual([backend.read_count, backend.read_errors, typeof backend.backends], [0, 0, 'object']);
    const prom = await new Promise<{ status: number; type: string; text: string }>((resolve, reject) => {
      http.get({ socketPath: sock, path: '/api/v1/metrics/prometheus' }, (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode!, type: String(res.headers['content-type']), text }));
      }).on('error', reject);
    });
    assert.equal(prom.status, 200);
    assert.match(prom.type, /^text\/plain; version=0\.0\.4/);
    assert.match(prom.text, /^# TYPE nydusd_backend_read_duration_seconds histogram$/m);
    assert.match(prom.text, /^nydusd_images 1$/m);
  } finally {
    server.close();
    await registry.close();
    state.close();
    await r.close();
  }
});

test('registry backend: Basic auth from the `auth` field; wrong credentials are an EIO, not a hang', async () => {
  const r = await reader(legacyEntry('basic', snapshotterConfig(locked.host, { auth: AUTH })));
  await r.read();
  assertWhole(r);
  await r.close();
  const bad = await reader(legacyEntry('basic-bad', snapshotterConfig(locked.host, { auth: Buffer.from('alice:nope').toString('base64') })));
  await bad.read(0, 4096);
  assert.equal(bad.session.stats.readErrors, 1);
  assert.deepEqual(bad.port.writes, []);
  assert.ok(bad.registry.metrics().registry.read_errors >= 1);
  await bad.close();
});

test('PUT /api/v1/config registry_auth: an image registered with wrong credentials reads once they are renewed, also for one registered later; unknown keys and bad values are refused; GET never shows the value', async () => {
  const wrong = Buffer.from('alice:nope').toString('base64');
  const r = await reader(legacyEntry('renew', snapshotterConfig(locked.host, { auth: wrong })));
  const sock = path.join(work, 'api-config.sock');
  const server = await startApi(sock, { id: 'd', registry: r.registry, state: r.state, lifecycle: null, log });
  try {
    await r.read(0, 4096);
    assert.equal(r.session.stats.readErrors, 1, 'the wrong credentials are refused');
    assert.equal((await api(sock, 'PUT', '/api/v1/config?id=renew', { registry_auth: AUTH })).status, 204);
    await r.read();
    assertWhole(r);
    assertNoWrongBytes(r);
    assert.deepEqual((await api(sock, 'GET', '/api/v1/config?id=renew')).body, { registry_auth: '(set)' });
    // Set before the image is registered: its backend starts with them.
    assert.equal((await api(sock, 'PUT', '/api/v1/config?id=later', { registry_auth: AUTH })).status, 204);
    assert.equal((await api(sock, 'PUT', '/api/v2/blobs', legacyEntry('later', snapshotterConfig(locked.host, { auth: wrong })))).status, 204);
    const later = r.registry.resolve('later', blobId);
    assert.ok(later?.kind === 'blob');
    const first = later.map.at(0);
    const bytes = await later.fetcher.fetch(later.map, first);
    assert.ok(bytes.equals(expected.subarray(first.uncompressedOffset, first.uncompressedOffset + first.uncompressedSize)), 'read with the renewed credentials');
    // The ids nydus-snapshotter sends: `/<snapshot id>` to a shared daemon names the image it
    // registered for that snapshot (FscacheID), `/` to a dedicated daemon every image.
    const firstChunkOf = async (id: string) => {
      const img = r.registry.resolve(id, blobId);
      assert.ok(img?.kind === 'blob');
      const c = img.map.at(0);
      return (await img.fetcher.fetch(img.map, c)).equals(expected.subarray(c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize));
    };
    const snapshotImage = configKeys('/snap1')[1];
    assert.equal((await api(sock, 'PUT', '/api/v2/blobs', legacyEntry(snapshotImage, snapshotterConfig(locked.host, { auth: wrong })))).status, 204);
    assert.equal((await api(sock, 'PUT', '/api/v2/blobs', legacyEntry('dedicated', snapshotterConfig(locked.host, { auth: wrong })))).status, 204);
    await assert.rejects(firstChunkOf(snapshotImage), 'the wrong credentials first');
    assert.equal((await api(sock, 'PUT', '/api/v1/config?id=/snap1', { registry_auth: AUTH })).status, 204);
    assert.equal(await firstChunkOf(snapshotImage), true, 'the snapshot\'s image read with the renewed credentials');
    assert.deepEqual((await api(sock, 'GET', '/api/v1/config?id=/snap1')).body, { registry_auth: '(set)' });
    await assert.rejects(firstChunkOf('dedicated'), 'another image keeps its credentials');
    assert.equal((await api(sock, 'PUT', '/api/v1/config?id=/', { registry_auth: AUTH })).status, 204);
    assert.equal(await firstChunkOf('dedicated'), true, '`/` renews every image\'s');
    const refused = [
      [{ proxy_url: 'http://127.0.0.1:1' }, /unknown configuration key "proxy_url" \(known: registry_auth\)/],
      [{ registry_auth: 42 }, /registry_auth needs a string value/],
      [{ registry_auth: 'bm9jb2xvbg==' }, /registry_auth is not base64 of user:password/],
    ] as const;
    for (const [body, message] of refused) {
      const res = await api(sock, 'PUT', '/api/v1/config?id=renew', body);
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.match(String(res.body.message), message);
    }
  } finally {
    server.close();
    await r.close();
  }
});

test('registry backend: Bearer token auth; a token refused mid-read is fetched again; a ready registry_token is used as is', async () => {
  // The token proxy forwards to the Basic-auth registry; give it the credentials upstream.
  const upstream = await FaultProxy.start(locked.url, { upstreamAuthorization: `Basic ${AUTH}` });
  cleanups.push(() => upstream.close());
  const guarded = await TokenAuthProxy.start(upstream.url, { users: USERS });
  cleanups.push(() => guarded.close());
  const r = await reader(v2Entry('bearer', { scheme: 'http', host: guarded.host, repo: REPO, auth: AUTH, retry_limit: 1 }));
  const half = Math.floor(expected.length / 2 / 4096) * 4096;
  await r.read(0, half);
  const first = guarded.tokenRequests;
  assert.ok(first >= 1);
  guarded.revokeAll();
  await r.read(half, expected.length - half);
  assertWhole(r);
  assert.equal(r.session.stats.readErrors, 0);
  assert.ok(guarded.tokenRequests > first, 'a new token after the registry refused the first');
  await r.close();

  // registry_token: a token the snapshotter got already; nydusd asks the token server for none.
  const res = await request(`${guarded.realm}?service=nydus-ts-test&scope=repository:${REPO}:pull`, { headers: { authorization: `Basic ${AUTH}` } });
  const token = ((await res.body.json()) as { token: string }).token;
  const before = guarded.tokenRequests;
  const t = await reader(v2Entry('bearer-ready', { scheme: 'http', host: guarded.host, repo: REPO, registry_token: token }));
  await t.read();
  assertWhole(t);
  assert.equal(guarded.tokenRequests, before, 'the given registry_token served every read');
  // The token is a secret: it is not in GET /api/v2/blobs answers (JSON of the entry).
  assert.doesNotMatch(JSON.stringify(t.registry.list()), new RegExp(token));
  assert.doesNotMatch(JSON.stringify(parseBlobCacheEntry(v2Entry('x', { host: 'h', repo: 'r', auth: AUTH }))), new RegExp(AUTH));
  await t.close();
});

test('registry backend: 5xx answers are retried up to retry_limit; more of them are an EIO for that read only', async () => {
  const faults = await FaultProxy.start(open.url);
  cleanups.push(() => faults.close());
  const isBlob = (req: http.IncomingMessage) => req.method === 'GET' && req.url!.includes('/blobs/');
  faults.inject({ match: isBlob, fault: { kind: 'status', status: 503 }, times: 2 });
  const r = await reader(legacyEntry('retry', snapshotterConfig(faults.host, { retry_limit: 2 })));
  await r.read();
  assertWhole(r);
  assert.equal(r.session.stats.readErrors, 0);
  assert.equal(faults.seen.filter((s) => s.fault === 'status').length, 2);
  await r.close();

  faults.clearFaults();
  faults.inject({ match: isBlob, fault: { kind: 'status', status: 500 }, times: Infinity });
  const f = await reader(legacyEntry('retry-out', snapshotterConfig(faults.host, { retry_limit: 2 })));
  await f.read(0, 4096);
  assert.equal(f.session.stats.readErrors, 1, '500s beyond retry_limit 2: EIO');
  // The READ's chunk has reads of its own (the chunks read ahead come in another): the ones from offset 0.
  const chunk0Gets = faults.seen.filter((s) => s.fault === 'status' && String(s.headers.range).startsWith('bytes=0-'));
  assert.ok(chunk0Gets.length >= 3, 'the first chunk was asked for (at least) 1 + retry_limit times');
  faults.clearFaults();
  await f.read(0, 4096);
  assert.equal(f.session.stats.readErrors, 1, 'the next read succeeds');
  assert.ok(cacheOf(f).subarray(0, 4096).equals(expected.subarray(0, 4096)));
  await f.close();
});

test('registry backend: a stalled registry fails the read with EIO within the deadline; a later read succeeds', async () => {
  const faults = await FaultProxy.start(open.url);
  cleanups.push(() => faults.close());
  faults.inject({ match: (req) => req.method === 'GET' && req.url!.includes('/blobs/'), fault: { kind: 'stall' }, times: Infinity });
  const r = await reader(legacyEntry('stall', snapshotterConfig(faults.host, { timeout: 1, connect_timeout: 1 })));
  const start = Date.now();
  await r.read(0, 4096);
  const took = Date.now() - start;
  assert.equal(r.session.stats.readErrors, 1);
  assert.ok(took < 4_000, `the read ended after ${took} ms (timeout 1 s, no retries)`);
  assert.deepEqual(r.port.writes, []);
  faults.clearFaults();
  await r.read(0, 4096);
  assert.equal(r.session.stats.readErrors, 1);
  assert.ok(cacheOf(r).subarray(0, 4096).equals(expected.subarray(0, 4096)));
  // A body that stops midway is a stall as well.
  faults.inject({ match: (req) => req.method === 'GET' && req.url!.includes('/blobs/'), fault: { kind: 'stall-mid-body', after: 100 }, times: Infinity });
  const mid = Date.now();
  // Chunk 10, of random (incompressible) bytes: its answer is longer than the 100 bytes let through.
  await r.read(0x140000, 4096);
  assert.equal(r.session.stats.readErrors, 2);
  assert.ok(Date.now() - mid < 4_000);
  await r.close();
});

test('registry backend: a corrupted body is an EIO and never reaches the cache file', async () => {
  const faults = await FaultProxy.start(open.url);
  cleanups.push(() => faults.close());
  faults.inject({ match: (req) => req.method === 'GET' && req.url!.includes('/blobs/'), fault: { kind: 'corrupt-body' }, times: Infinity });
  const r = await reader(legacyEntry('corrupt', snapshotterConfig(faults.host)));
  await r.read();
  assert.equal(r.session.stats.readErrors, 1);
  // Chunks merged into one answer are verified one by one: those the corruption missed may be written,
  // a corrupt one never.
  assertNoWrongBytes(r);
  faults.clearFaults();
  await r.read();
  assertWhole(r);
  assertNoWrongBytes(r);
  await r.close();
});

test('registry backend with proxy.url (nydus-backend-proxy): reads go to the proxy; a down proxy falls back to the registry, or is an EIO without fallback', async () => {
  const registrySide = await FaultProxy.start(open.url);
  cleanups.push(() => registrySide.close());
  const blobGets = () => registrySide.seen.filter((s) => s.method === 'GET' && s.url.includes('/blobs/')).length;
  const viaProxy = await reader(legacyEntry('proxy', snapshotterConfig(registrySide.host, { proxy: { url: proxyServer.url, fallback: false } })));
  await viaProxy.read();
  assertWhole(viaProxy);
  assert.equal(blobGets(), 0, 'the registry served no blob bytes');
  await viaProxy.close();

  const down = `http://127.0.0.1:${await freePort()}`;
  const fallback = await reader(legacyEntry('proxy-fallback', snapshotterConfig(registrySide.host, { proxy: { url: down } })));
  await fallback.read();
  assertWhole(fallback);
  assert.ok(blobGets() > 0, 'the registry served the reads');
  await fallback.close();

  const strict = await reader(legacyEntry('proxy-strict', snapshotterConfig(registrySide.host, { proxy: { url: down, fallback: false } })));
  await strict.read(0, 4096);
  assert.equal(strict.session.stats.readErrors, 1);
  assert.deepEqual(strict.port.writes, []);
  await strict.close();
});

test('registry backend: a proxy whose ping_url fails is skipped (fallback) until it answers again', async () => {
  const pingPort = await freePort();
  const cfg = parseBlobCacheEntry(legacyEntry('ping', snapshotterConfig(open.host, {
    proxy: { url: proxyServer.url, ping_url: `http://127.0.0.1:${pingPort}/v2/`, check_interval: 1, fallback: true },
  }))).backend;
  assert.equal(cfg.type, 'registry');
  const backend = new RegistryBackend(cfg as Extract<typeof cfg, { type: 'registry' }>);
  try {
    const first = await backend.read(blobId, 0, 100);
    assert.ok(first.equals(fs.readFileSync(path.join(blobDir, blobId)).subarray(0, 100)));
    assert.deepEqual(backend.proxyStats, { viaProxy: 1, fellBack: 0 });
    await new Promise((r) => setTimeout(r, 1_500));
    await backend.read(blobId, 100, 100);
    assert.deepEqual(backend.proxyStats, { viaProxy: 1, fellBack: 1 }, 'after a failed ping the registry is asked directly');
    // The proxy's ping answers again: the next check sends reads back to the proxy.
    const ping = http.createServer((_req, res) => res.end('ok'));
    await new Promise<void>((resolve) => ping.listen(pingPort, '127.0.0.1', () => resolve()));
    cleanups.push(() => new Promise((resolve) => ping.close(resolve)));
    await new Promise((r) => setTimeout(r, 1_500));
    await backend.read(blobId, 200, 100);
    assert.deepEqual(backend.proxyStats, { viaProxy: 2, fellBack: 1 });
  } finally {
    await backend.close();
  }
});

test('stream_prefetch (nydus\'s streaming blob prefetch): each blob in one GET without Range, the cache file whole before any READ (registry in config_v2, http-proxy in the legacy body)', async () => {
  const registrySide = await FaultProxy.start(open.url);
  const proxySide = await FaultProxy.start(proxyServer.url);
  cleanups.push(() => registrySide.close(), () => proxySide.close());
  const streamed = { enable: true, threads_count: 2, stream_prefetch: true };
  const v2 = v2Entry('stream-registry', snapshotterConfig(registrySide.host)) as { config_v2: { cache: Record<string, unknown> } };
  v2.config_v2.cache.prefetch = { ...streamed, threads: 2 };
  const legacy = legacyEntry('stream-http-proxy', { addr: proxySide.url, path: '' }, 'http-proxy') as { config: Record<string, unknown> };
  legacy.config.prefetch_config = streamed;
  for (const [body, side, type] of [[v2, registrySide, 'registry'], [legacy, proxySide, 'http-proxy']] as const) {
    const r = await reader(body);
    try {
      await waitFor(() => cacheOf(r).subarray(0, expected.length).equals(expected), `${type}: the stream prefetch to fill the cache file`, 60_000);
      assertWhole(r);
      assertNoWrongBytes(r);
      const gets = side.seen.filter((q) => q.method === 'GET' && q.url.endsWith(blobId));
      assert.equal(gets.length, 1, `${type}: one GET for the blob (${JSON.stringify(gets.map((g) => g.headers.range))})`);
      assert.equal(gets[0].headers.range, undefined, `${type}: without Range`);
      await waitFor(() => r.registry.metrics()[type].read_count === 1, `${type}: the stream counted`);
      assert.equal(r.registry.metrics()[type].read_amount_total, blobSize, `${type}: one read of the whole blob in the metrics`);
    } finally {
      await r.close();
    }
  }
});

test('http-proxy backend: blobs at <addr><path>/<blob id> with Range; a missing server is an EIO', async () => {
  const body = legacyEntry('http-proxy', { addr: proxyServer.url, path: '', readahead: false }, 'http-proxy');
  const r = await reader(body);
  await r.read();
  assertWhole(r);
  assert.ok(r.registry.metrics()['http-proxy'].read_count > 0);
  await r.close();
  const gone = await reader(legacyEntry('http-proxy-gone', { addr: `http://127.0.0.1:${await freePort()}`, timeout: 1, connect_timeout: 1 }, 'http-proxy'));
  await gone.read(0, 4096);
  assert.equal(gone.session.stats.readErrors, 1);
  await gone.close();
});

test('config: bad registry and http-proxy fields are refused naming the field; unknown ones are accepted', () => {
  const reg = (extra: object) => () => parseBlobCacheEntry(legacyEntry('c', { host: 'h:5000', repo: 'r', ...extra }));
  assert.throws(reg({ scheme: 'ftp' }), /config\.backend_config\.scheme "ftp" must be http or https/);
  assert.throws(reg({ timeout: 0 }), /config\.backend_config\.timeout must be at least 1/);
  assert.throws(reg({ retry_limit: 300 }), /retry_limit must be at most 255/);
  assert.throws(reg({ auth: 'bm9jb2xvbg==' }), /auth is not base64 of user:password/);
  assert.throws(reg({ proxy: { url: 'ftp://x' } }), /proxy\.url "ftp:\/\/x" must be an http/);
  assert.throws(reg({ proxy: { dragonfly_scheduler_endpoint: 'http://s' } }), /dragonfly_scheduler_endpoint is not supported/);
  assert.throws(reg({ skip_verify: 'yes' }), /skip_verify must be true or false/);
  assert.throws(() => parseBlobCacheEntry(legacyEntry('c', { repo: 'r' })), /config\.backend_config\.host is required/);
  assert.throws(() => parseBlobCacheEntry(legacyEntry('c', { addr: '/run/p.sock' }, 'http-proxy')), /only http:\/\/ and https:\/\/ servers/);
  assert.throws(() => parseBlobCacheEntry(legacyEntry('c', { dir: '/' }, 'oss')), /backend type "oss" is not supported \(supported: localfs, registry, http-proxy\)/);
  const ok = parseBlobCacheEntry(legacyEntry('c', { host: 'h:5000', repo: 'r', readahead: false, something_new: 1 })).backend;
  assert.deepEqual(ok, {
    type: 'registry', scheme: 'https', host: 'h:5000', repo: 'r', blobUrlScheme: '', blobRedirectedHost: '',
    skipVerify: false, caCertFiles: [], timeoutSec: 5, connectTimeoutSec: 5, retryLimit: 0,
    proxy: { url: '', pingUrl: '', fallback: true, checkIntervalSec: 5, useHttp: false, checkPauseElapsedSec: 300 },
  }, "nydus's defaults");
});

test('nydus-backend-proxy: serves a blob directory with HEAD and Range; a registry-backend image reads through it', async () => {
  const child = spawn(path.join(repoRoot, 'bin/nydus-backend-proxy'), ['--blobsdir', blobDir, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  cleanups.push(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  await waitFor(() => /on (http:\/\/\S+)/.test(out) || child.exitCode !== null, 'nydus-backend-proxy to listen', 30_000);
  const url = /on (http:\/\/\S+)/.exec(out)?.[1];
  assert.ok(url, `nydus-backend-proxy did not start: ${err}`);
  const blob = fs.readFileSync(path.join(blobDir, blobId));
  const at = `${url}/v2/${REPO}/blobs/sha256:${blobId}`;
  const head = await request(at, { method: 'HEAD' });
  await head.body.dump();
  assert.deepEqual([head.statusCode, Number(head.headers['content-length']), head.headers['docker-content-digest']], [200, blob.length, `sha256:${blobId}`]);
  const part = await request(at, { headers: { range: 'bytes=1000-1999' } });
  assert.equal(part.statusCode, 206);
  assert.equal(part.headers['content-range'], `bytes 1000-1999/${blob.length}`);
  assert.ok(Buffer.from(await part.body.arrayBuffer()).equals(blob.subarray(1000, 2000)));
  const whole = await request(`${url}/${blobId}`);
  assert.ok(Buffer.from(await whole.body.arrayBuffer()).equals(blob));
  const beyond = await request(at, { headers: { range: `bytes=${blob.length}-` } });
  await beyond.body.dump();
  assert.equal(beyond.statusCode, 416);
  const missing = await request(`${url}/v2/${REPO}/blobs/sha256:${'0'.repeat(64)}`);
  await missing.body.dump();
  assert.equal(missing.statusCode, 404);
  const badDigest = await request(`${url}/v2/${REPO}/blobs/md5:abc`);
  await badDigest.body.dump();
  assert.equal(badDigest.statusCode, 400);
  const escape = await request(`${url}/v2/${REPO}/blobs/sha256:..%2f..%2fetc%2fpasswd`);
  await escape.body.dump();
  assert.equal(escape.statusCode, 404);
  // nydus's README setup: the registry backend pointed at the proxy as if it were a registry.
  const r = await reader(legacyEntry('via-cli', snapshotterConfig(new URL(url).host)));
  await r.read();
  assertWhole(r);
  await r.close();
  child.kill('SIGTERM');
  await new Promise((resolve) => child.once('exit', resolve));
  assert.equal(child.exitCode, 0);
  const refused = spawn(path.join(repoRoot, 'bin/nydus-backend-proxy'), ['--blobsdir', path.join(work, 'nope')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let refusedErr = '';
  refused.stderr.on('data', (d) => (refusedErr += d));
  const code = await new Promise((resolve) => refused.once('exit', resolve));
  assert.equal(code, 1);
  assert.match(refusedErr, /^nydus-backend-proxy: error: --blobsdir .*nope is not a directory/);
});

test('registry backend: size() by HEAD; a blob the registry lacks is ENOENT', async () => {
  const cfg = parseBlobCacheEntry(legacyEntry('size', snapshotterConfig(open.host))).backend as Extract<ReturnType<typeof parseBlobCacheEntry>['backend'], { type: 'registry' }>;
  const backend = new RegistryBackend(cfg);
  try {
    assert.equal(await backend.size(blobId), blobSize);
    await assert.rejects(backend.size('0'.repeat(64)), (e: NydusError) => e.errno === 2 && /not in the registry/.test(e.message));
    await assert.rejects(backend.read('0'.repeat(64), 0, 10), (e: NydusError) => e.errno === 5);
  } finally {
    await backend.close();
  }
});

test('registry backend: blob_redirected_host and blob_url_scheme rewrite a blob redirect (the Authorization header stays home)', async () => {
  const faults = await FaultProxy.start(locked.url);
  cleanups.push(() => faults.close());
  // The registry redirects blob GETs to a host that does not answer; the config sends them to one that does.
  const storage = await FaultProxy.start(locked.url, { upstreamAuthorization: `Basic ${AUTH}` });
  cleanups.push(() => storage.close());
  faults.inject({ match: (req) => req.method === 'GET' && req.url!.includes('/blobs/'), fault: { kind: 'redirect', to: `https://127.0.0.1:${await freePort()}` }, times: Infinity });
  const r = await reader(legacyEntry('redirect', snapshotterConfig(faults.host, { auth: AUTH, blob_redirected_host: storage.host, blob_url_scheme: 'http' })));
  await r.read();
  assertWhole(r);
  const atStorage = storage.seen.filter((s) => s.url.includes('/blobs/'));
  assert.ok(atStorage.length > 0, 'blob bytes came from the redirected host');
  assert.ok(atStorage.every((s) => s.headers.authorization === undefined), 'no Authorization header to the other host');
  await r.close();
});

test('registry backend over TLS: ca_cert_files trusts the registry\'s certificate, so does NODE_EXTRA_CA_CERTS as bin/nydusd hands it over; skip_verify works without them; with neither, an EIO', async () => {
  const tls = await startRegistry({ tls: true });
  cleanups.push(() => tls.stop());
  const client = new RegistryClient({ insecure: true, dockerConfig: false });
  await client.pushBlob(`${tls.host}/${REPO}`, fs.readFileSync(path.join(blobDir, blobId)));
  await client.close();
  const https = { host: tls.host, repo: REPO, scheme: 'https' };
  const trusted = await reader(legacyEntry('tls-ca', { ...https, ca_cert_files: [path.join(tls.dir, 'cert.pem')] }));
  await trusted.read();
  assertWhole(trusted);
  await trusted.close();
  // bin/nydusd starts node without NODE_EXTRA_CA_CERTS (bin/run.sh): the backends add it themselves.
  process.env.NYDUSD_EXTRA_CA_CERTS = path.join(tls.dir, 'cert.pem');
  try {
    const viaEnv = await reader(legacyEntry('tls-env-ca', https));
    await viaEnv.read();
    assertWhole(viaEnv);
    await viaEnv.close();
  } finally {
    delete process.env.NYDUSD_EXTRA_CA_CERTS;
  }
  // Node itself warns at start about an extra CA file it cannot read: nydusd's node never reads it.
  const missing = { ...process.env, NODE_EXTRA_CA_CERTS: path.join(tls.dir, 'missing.pem') };
  const plain = spawnSync(process.execPath, ['-e', ''], { encoding: 'utf8', env: missing });
  assert.match(plain.stderr, /Ignoring extra certs/, 'the oracle: node reads NODE_EXTRA_CA_CERTS at start');
  const started = spawnSync(path.join(repoRoot, 'bin/nydusd'), ['--version'], { encoding: 'utf8', env: missing });
  assert.equal(started.status, 0, started.stderr);
  assert.doesNotMatch(started.stderr, /extra certs/);
  const skipped = await reader(legacyEntry('tls-skip', { ...https, skip_verify: true }));
  await skipped.read();
  assertWhole(skipped);
  await skipped.close();
  const refused = await reader(legacyEntry('tls-refused', https));
  await refused.read(0, 4096);
  assert.equal(refused.session.stats.readErrors, 1, 'an unknown certificate is refused');
  await refused.close();
});

test('registry backend: a registry that is not there is an EIO after retry_limit retries, quickly', async () => {
  const r = await reader(legacyEntry('down', snapshotterConfig(`127.0.0.1:${await freePort()}`, { retry_limit: 2 })));
  const start = Date.now();
  await r.read(0, 4096);
  assert.equal(r.session.stats.readErrors, 1);
  assert.ok(Date.now() - start < 5_000, 'refused connections are retried with short backoff, then given up');
  assert.ok(r.registry.metrics().registry.read_errors >= 1);
  await r.close();
});

test('registry config as nydus takes it: ca_cert_files are read at registration (a missing or non-PEM file fails it, naming the file), a proxy url and ping_url without a scheme are http://, a timeout of 0 (nydus: no limit) is refused saying why', () => {
  const entry = (cfg: object) => parseBlobCacheEntry(legacyEntry('cfg', { host: '127.0.0.1:1', repo: REPO, ...cfg }));
  const notPem = path.join(work, 'not-a-cert.pem');
  fs.writeFileSync(notPem, 'hello\n');
  assert.throws(() => entry({ ca_cert_files: [path.join(work, 'missing.pem')] }), /config\.backend_config\.ca_cert_files: .*missing\.pem: ENOENT/);
  assert.throws(() => entry({ ca_cert_files: [notPem] }), /config\.backend_config\.ca_cert_files: .*not-a-cert\.pem: no PEM certificate in it/);
  // As nydus's sample configs give them (misc/configs/nydusd-config-v2.toml).
  const proxied = entry({ proxy: { url: 'localhost:6789', ping_url: 'localhost:6789/ping', fallback: false } }).backend as { proxy?: { url?: string } };
  assert.equal(JSON.stringify(proxied).includes('"http://localhost:6789"'), true, `the proxy as http:// (${JSON.stringify(proxied).slice(0, 300)})`);
  assert.equal(JSON.stringify(proxied).includes('"http://localhost:6789/ping"'), true, `the ping as http:// (${JSON.stringify(proxied).slice(0, 300)})`);
  assert.throws(() => entry({ timeout: 0 }), /config\.backend_config\.timeout must be at least 1 \(seconds\): nydus takes 0 for no limit, which nydus-ts refuses/);
});

test('nydus-backend-proxy against hostile clients: a FIFO named like a blob is a 404 at once and blocks nothing; broken percent-encoding a 400; a Range that is no byte range is ignored (200); a client that stops reading loses its connection', async () => {
  const dir = path.join(work, 'hostile-blobs');
  fs.mkdirSync(dir);
  const big = prand(16 << 20, 3);
  fs.writeFileSync(path.join(dir, 'b'.repeat(64)), big);
  execFileSync('mkfifo', [path.join(dir, 'f'.repeat(64))]);
  const server = await startBlobProxy(dir, '127.0.0.1', 0, 500);
  cleanups.push(() => server.close());
  const blobAt = (id: string) => `${server.url}/v2/r/blobs/sha256:${id}`;
  // More FIFO requests than the file pool has threads: each would hold one in open(2) for good.
  for (let i = 0; i < 6; i++) {
    const fifo = await request(blobAt('f'.repeat(64)), { headersTimeout: 5_000 });
    await fifo.body.dump();
    assert.equal(fifo.statusCode, 404);
  }
  const part = await request(blobAt('b'.repeat(64)), { headers: { range: 'bytes=10-19' }, headersTimeout: 5_000 });
  assert.equal(part.statusCode, 206);
  assert.ok(Buffer.from(await part.body.arrayBuffer()).equals(big.subarray(10, 20)), 'a blob is served after them');
  const broken = await request(`${server.url}/v2/r/blobs/sha256:%ZZ`);
  await broken.body.dump();
  assert.equal(broken.statusCode, 400);
  for (const range of ['items=0-5', 'bytes=5-3', 'bytes=1e3-2e3']) {
    const ignored = await request(blobAt('b'.repeat(64)), { method: 'HEAD', headers: { range } });
    await ignored.body.dump();
    assert.deepEqual([ignored.statusCode, Number(ignored.headers['content-length'])], [200, big.length], range);
  }
  // A raw client that asks for the 16 MiB blob and reads none of it for 2 s (the idle time is 0.5 s):
  // when it reads on, the connection ends before the blob does.
  const sock = net.connect(server.port, '127.0.0.1');
  sock.pause();
  sock.write(`GET /v2/r/blobs/sha256:${'b'.repeat(64)} HTTP/1.1\r\nHost: x\r\n\r\n`);
  await new Promise((r) => setTimeout(r, 2_000));
  const got = await new Promise<number>((resolve) => {
    let n = 0;
    sock.on('data', (d: Buffer) => (n += d.length));
    sock.on('error', () => {});
    sock.once('close', () => resolve(n));
    setTimeout(() => resolve(-1), 10_000);
    sock.resume();
  });
  sock.destroy();
  assert.ok(got >= 0 && got < big.length, `the stalled reader was disconnected (it got ${got} bytes)`);
});

test('registry and http-proxy backends through a proxy that accepts and never answers: the config\'s timeout holds there too, and the read falls back to the origin', async () => {
  const blob = fs.readFileSync(path.join(blobDir, blobId));
  let originReads = 0;
  const origin = http.createServer((req, res) => {
    originReads++;
    const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '')!;
    const [s, e] = [Number(m[1]), Number(m[2])];
    res.writeHead(206, { 'content-range': `bytes ${s}-${e}/${blob.length}`, 'content-length': e - s + 1 }).end(blob.subarray(s, e + 1));
  });
  const silent = net.createServer((s) => {
    s.on('error', () => {});
    s.resume();
  });
  await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise((r) => origin.close(r)), () => new Promise((r) => silent.close(r)));
  const at = (s: http.Server | net.Server) => `127.0.0.1:${(s.address() as net.AddressInfo).port}`;
  const conn = { timeout: 1, connect_timeout: 1, retry_limit: 0, proxy: { url: `http://${at(silent)}`, fallback: true } };
  for (const backend of [
    new RegistryBackend(registryConfigFrom({ host: at(origin), repo: 'r', scheme: 'http', ...conn }, 'registry')),
    new HttpProxyBackend(httpProxyConfigFrom({ addr: `http://${at(origin)}`, path: '/blobs', ...conn }, 'http-proxy')),
  ]) {
    originReads = 0;
    const t0 = Date.now();
    const got = await backend.read(blobId, 1000, 100);
    const took = Date.now() - t0;
    await backend.close();
    assert.ok(got.equals(blob.subarray(1000, 1100)), backend.type);
    assert.equal(originReads, 1, `${backend.type}: read from the origin`);
    // The deadline of a read is (connect + 2 * timeout) = 3 s: the proxy's 1 s timeout ends well before it.
    assert.ok(took < 2_500, `${backend.type}: fell back after the proxy's 1 s timeout, not the read's deadline (${took} ms)`);
  }
});

test('nydus-image unpack --backend-type registry|localfs --backend-config (as nydus-snapshotter\'s Unpack passes them): the blobs fetched whole, the tar the same as from the blob directory; bad flags refused naming them', () => {
  const run = (args: string[]) => spawnSync(path.join(repoRoot, 'bin/nydus-image'), ['unpack', '--log-level', 'warn', '--bootstrap', boot, ...args], { encoding: 'utf8' });
  const fromDir = path.join(work, 'unpack-dir.tar');
  assert.equal(run(['-D', blobDir, '-o', fromDir]).status, 0);
  const auth = Buffer.from(`alice:${USERS.alice}`).toString('base64');
  const registry = JSON.stringify({ host: locked.host, repo: REPO, scheme: 'http', auth });
  const cfgFile = path.join(work, 'unpack-backend.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ dir: blobDir }));
  for (const [name, args] of [
    ['registry', ['--backend-type', 'registry', '--backend-config', registry]],
    ['localfs', ['--backend-type', 'localfs', '--backend-config-file', cfgFile]],
  ] as const) {
    const out = path.join(work, `unpack-${name}.tar`);
    const r = run([...args, '-o', out]);
    assert.equal(r.status, 0, `${name}: ${r.stderr}`);
    assert.ok(fs.readFileSync(out).equals(fs.readFileSync(fromDir)), `${name}: the same tar as from the blob directory`);
  }
  const wrong = run(['--backend-type', 'registry', '--backend-config', JSON.stringify({ host: locked.host, repo: REPO, scheme: 'http' }), '-o', path.join(work, 'unpack-noauth.tar')]);
  assert.equal(wrong.status, 1);
  assert.match(wrong.stderr, /401|credentials/);
  assert.ok(!fs.existsSync(path.join(work, 'unpack-noauth.tar')), 'no tar is left by a failed fetch');
  for (const [args, re] of [
    [['--backend-type', 'registry', '-o', 'x.tar'], /--backend-type registry needs --backend-config or --backend-config-file/],
    [['--backend-config', '{}', '-o', 'x.tar'], /--backend-config and --backend-config-file go with --backend-type/],
    [['--backend-type', 'localfs', '--backend-config', '{}', '-D', blobDir, '-o', 'x.tar'], /give no --blob-dir or --blob with it/],
    [['--backend-type', 'oss', '--backend-config', '{}', '-o', 'x.tar'], /backend type "oss" is not supported/],
    [['--backend-type', 'localfs', '--backend-config', '{"dir":', '-o', 'x.tar'], /--backend-config/],
  ] as const) {
    const r = run([...args]);
    assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re);
  }
});
