/**
 * The registry client, nydusify convert/check and nydusd's registry backend against a hostile
 * registry served in this process on 127.0.0.1: endless error, token and manifest bodies; configs
 * that are huge, endless, not JSON, too deep or not objects; manifests and indexes of the wrong shape
 * and descriptor sizes of the wrong type; bodies that drip; a server that never answers; a gzip bomb
 * and an absurd size claim in a bootstrap layer; an index listing one manifest thousands of times.
 * Every case must end quickly in an error naming the source, having read and held far less than the
 * hostile server offered, and (for convert) before anything is pushed.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import zlib from 'node:zlib';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import { RegistryClient, RegistryError, MediaType, type RegistryClientOptions } from '../src/registry/index.ts';
import { convert } from '../src/convert/convert.ts';
import { checkConverted, pullBootstrap } from '../src/convert/check.ts';
import { RegistryBackend } from '../src/daemon/backend/registry.ts';
import { parseBlobCacheEntry } from '../src/daemon/config.ts';
import type { RegistryBackendConfig } from '../src/daemon/backend/remote-config.ts';
import { NydusError } from '../erofs/errors.ts';
import { parseReference } from '../src/registry/reference.ts';
import { tmpDir } from './helpers/fixtures.ts';

const work = tmpDir('registry-hostile');
const log = pino({ level: process.env.TEST_LOG ?? 'silent' });
const sha = (b: Buffer) => `sha256:${crypto.createHash('sha256').update(b).digest('hex')}`;
const MiB = 1 << 20;
/** What a cut-off endless body may still have cost: socket buffers of both ends, with room to spare. */
const CUT_OFF = 32 * MiB;
const clients: RegistryClient[] = [];
const servers: http.Server[] = [];

after(async () => {
  for (const c of clients) await c.destroy();
  for (const s of servers) s.closeAllConnections();
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  fs.rmSync(work, { recursive: true, force: true });
});

function client(opts: RegistryClientOptions = {}): RegistryClient {
  const c = new RegistryClient({ plainHttp: true, dockerConfig: false, proxyFromEnvironment: false, retryBaseDelayMs: 10, retryMaxDelayMs: 50, ...opts });
  clients.push(c);
  return c;
}

// ---- a small ustar writer (the layers and bootstrap layers served) ----

function tarHeader(name: string, size: number | bigint, type = '0'): Buffer {
  const b = Buffer.alloc(512);
  b.write(name, 0, 100, 'utf8');
  b.write('0000644\0', 100);
  b.write('0000000\0', 108);
  b.write('0000000\0', 116);
  if (typeof size === 'bigint') {
    // GNU base-256, for sizes octal cannot hold.
    b[124] = 0x80;
    let v = size;
    for (let i = 135; i > 124; i--) {
      b[i] = Number(v & 0xffn);
      v >>= 8n;
    }
  } else b.write(`${size.toString(8).padStart(11, '0')}\0`, 124);
  b.write('14000000000\0', 136);
  b.write('        ', 148);
  b.write(type, 156);
  b.write('ustar\0', 257);
  b.write('00', 263);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return b;
}

function tarFile(name: string, data: Buffer): Buffer {
  return Buffer.concat([tarHeader(name, data.length), data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

const TAR_END = Buffer.alloc(1024);
const layerTgz = zlib.gzipSync(Buffer.concat([tarFile('hello.txt', Buffer.from('hello\n')), TAR_END]));

// ---- the hostile registry ----

interface Image {
  /** The manifest served at tag `t` (an object is serialized), or a whole index. */
  manifest: object | Buffer;
  manifestType?: string;
  /** More manifests by digest (an index's children). */
  children?: Buffer[];
  blobs: Buffer[];
}

interface Fake {
  host: string;
  /** Requests seen, `METHOD path`. */
  seen: string[];
  /** Bytes the server managed to write of its endless or dripping bodies. */
  sent: number;
  /** Resolves when the connection of the last endless or dripping body closed. */
  closed: Promise<number>;
  /** Overrides what the server does; return true when it answered. */
  hook?: (req: http.IncomingMessage, res: http.ServerResponse, p: string) => boolean;
  image: Image;
}

/** Writes `chunk` again and again (`total` bytes at most) until the client closes; counts what was written. */
function endless(fake: Fake, res: http.ServerResponse, total = 256 * MiB, fill = 0x7b): void {
  const chunk = Buffer.alloc(64 << 10, fill);
  let done = false;
  let resolveClosed!: (at: number) => void;
  fake.closed = new Promise((r) => (resolveClosed = r));
  res.on('close', () => {
    done = true;
    resolveClosed(Date.now());
  });
  const pump = () => {
    while (!done && fake.sent < total) {
      fake.sent += chunk.length;
      if (!res.write(chunk)) {
        res.once('drain', pump);
        return;
      }
    }
    if (!done) res.end();
  };
  pump();
}

/** Writes `body` one byte every `ms` until done or the client closes. */
function drip(fake: Fake, res: http.ServerResponse, body: Buffer, ms: number): void {
  if (res.destroyed) return;
  let i = 0;
  let resolveClosed!: (at: number) => void;
  fake.closed = new Promise((r) => (resolveClosed = r));
  const t = setInterval(() => {
    if (i < body.length) {
      res.write(body.subarray(i, ++i));
      fake.sent++;
    } else {
      clearInterval(t);
      res.end();
    }
  }, ms);
  res.on('close', () => {
    clearInterval(t);
    resolveClosed(Date.now());
  });
}

async function fakeRegistry(image: Image): Promise<Fake> {
  const fake: Fake = { host: '', seen: [], sent: 0, closed: Promise.resolve(0), image };
  let uploads = 0;
  const server = http.createServer((req, res) => {
    const p = new URL(req.url!, 'http://x').pathname;
    fake.seen.push(`${req.method} ${p}`);
    if (fake.hook?.(req, res, p)) return;
    // A push sink for repository dst.
    if (p.startsWith('/v2/dst/')) {
      req.resume();
      if (req.method === 'HEAD') return void res.writeHead(404).end();
      if (req.method === 'POST') return void res.writeHead(202, { location: `/v2/dst/blobs/uploads/${++uploads}` }).end();
      if (req.method === 'PUT') {
        const parts: Buffer[] = [];
        req.on('data', (d) => parts.push(d));
        req.on('end', () => res.writeHead(201, p.includes('/manifests/') ? { 'docker-content-digest': sha(Buffer.concat(parts)) } : {}).end());
        return;
      }
      return void res.writeHead(404).end();
    }
    const img = fake.image;
    const manifest = Buffer.isBuffer(img.manifest) ? img.manifest : Buffer.from(JSON.stringify(img.manifest));
    const mm = /^\/v2\/src\/manifests\/(.+)$/.exec(p);
    if (mm) {
      const ref = decodeURIComponent(mm[1]);
      const body = ref === 't' || ref === sha(manifest) ? manifest : img.children?.find((c) => sha(c) === ref);
      if (!body) return void res.writeHead(404).end();
      const type = body === manifest ? img.manifestType ?? MediaType.ociManifest : MediaType.ociManifest;
      res.writeHead(200, { 'content-type': type, 'content-length': body.length });
      return void res.end(req.method === 'HEAD' ? undefined : body);
    }
    const bm = /^\/v2\/src\/blobs\/(.+)$/.exec(p);
    if (bm) {
      const b = img.blobs.find((x) => sha(x) === decodeURIComponent(bm[1]));
      if (!b) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-length': b.length });
      return void res.end(req.method === 'HEAD' ? undefined : b);
    }
    res.writeHead(404).end();
  });
  server.keepAliveTimeout = 1000;
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  fake.host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return fake;
}

function desc(b: Buffer, mediaType: string = MediaType.ociLayerGzip): { mediaType: string; digest: string; size: number } {
  return { mediaType, digest: sha(b), size: b.length };
}

const goodConfig = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, config: {} }));

/** An image of one layer and `config`, its manifest changed by `edit`. */
function image(config: Buffer = goodConfig, edit: (m: Record<string, unknown>) => void = () => undefined): Image {
  const m: Record<string, unknown> = { schemaVersion: 2, mediaType: MediaType.ociManifest, config: desc(config, MediaType.ociConfig), layers: [desc(layerTgz)] };
  edit(m);
  return { manifest: m, blobs: [config, layerTgz] };
}

function convertFrom(fake: Fake, extra: Partial<Parameters<typeof convert>[0]> = {}) {
  return convert({
    source: `${fake.host}/src:t`, target: `${fake.host}/dst:t`, plainHttp: true, platform: { os: 'linux', architecture: 'amd64' },
    fsVersion: '6', compressor: 'zstd', chunkSize: 0x100000, log, workDir: path.join(work, 'convert'), ...extra,
  });
}

const pushes = (fake: Fake) => fake.seen.filter((r) => r.includes('/v2/dst/') && !r.startsWith('HEAD'));

// ---- 1. unbounded error and token bodies; the daemon's deadline aborts its request ----

test('an endless error body is cut off after an excerpt: the error names the reference and status', { timeout: 30_000 }, async () => {
  const fake = await fakeRegistry(image());
  fake.hook = (_req, res, p) => {
    if (!p.includes('/manifests/')) return false;
    res.writeHead(404, { 'content-type': 'application/json' });
    endless(fake, res);
    return true;
  };
  const e = await client().getManifest(`${fake.host}/src:t`).catch((x) => x);
  assert.ok(e instanceof RegistryError, String(e));
  assert.equal(e.status, 404);
  assert.match(e.message, new RegExp(`${fake.host}/src:t: GET /v2/src/manifests/t: HTTP 404`));
  await fake.closed;
  assert.ok(fake.sent < CUT_OFF, `the server wrote ${fake.sent} bytes of the error body`);
});

test('an endless token answer is refused at 1 MiB, naming the token realm', { timeout: 30_000 }, async () => {
  const fake = await fakeRegistry(image());
  const realm = `http://${'127.0.0.1'}:PORT/token`;
  fake.hook = (req, res, p) => {
    const port = fake.host.split(':')[1];
    if (p === '/token') {
      res.writeHead(200, { 'content-type': 'application/json' });
      endless(fake, res);
      return true;
    }
    if (!req.headers.authorization) {
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${realm.replace('PORT', port)}",service="fake"` }).end();
      return true;
    }
    return false;
  };
  const e = await client().getManifest(`${fake.host}/src:t`).catch((x) => x);
  assert.ok(e instanceof RegistryError, String(e));
  assert.match(e.message, new RegExp(`GET http://${fake.host}/token: HTTP 200: token answer larger than 1048576 bytes`));
  await fake.closed;
  assert.ok(fake.sent < CUT_OFF, `the server wrote ${fake.sent} bytes of the token answer`);
});

test('token realms: a file:// realm and an unreachable one are errors naming the realm', { timeout: 30_000 }, async () => {
  const fake = await fakeRegistry(image());
  const closed = http.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const deadPort = (closed.address() as AddressInfo).port;
  await new Promise((r) => closed.close(r));
  let realm = 'file:///etc/passwd';
  fake.hook = (_req, res) => {
    res.writeHead(401, { 'www-authenticate': `Bearer realm="${realm}",service="fake"` }).end();
    return true;
  };
  const e1 = await client({ retries: 0 }).getManifest(`${fake.host}/src:t`).catch((x) => x);
  assert.ok(e1 instanceof NydusError, String(e1));
  assert.match(e1.message, /Bearer realm "file:\/\/\/etc\/passwd" is not an http\(s\) URL/);
  realm = `http://127.0.0.1:${deadPort}/token`;
  const e2 = await client({ retries: 0 }).getManifest(`${fake.host}/src:t`).catch((x) => x);
  assert.ok(e2 instanceof RegistryError, String(e2));
  assert.match(e2.message, new RegExp(`GET http://127.0.0.1:${deadPort}/token: token request: .*ECONNREFUSED`));
});

test('nydusd registry backend: at the read deadline the request is aborted, not left downloading', { timeout: 30_000 }, async () => {
  const fake = await fakeRegistry(image());
  fake.hook = (_req, res, p) => {
    if (!p.includes('/blobs/')) return false;
    res.writeHead(206, { 'content-range': 'bytes 0-99/1000', 'content-length': '100' });
    drip(fake, res, Buffer.alloc(100, 1), 150);
    return true;
  };
  const entry = {
    type: 'bootstrap', id: 'hostile', domain_id: '',
    config: {
      id: 'hostile', backend_type: 'registry', cache_type: 'fscache', cache_config: { work_dir: path.join(work, 'cache') }, metadata_path: '/nonexistent',
      backend_config: { host: fake.host, repo: 'src', scheme: 'http', skip_verify: true, timeout: 1, connect_timeout: 1, retry_limit: 0, proxy: { fallback: false } },
    },
  };
  const backend = new RegistryBackend(parseBlobCacheEntry(entry).backend as RegistryBackendConfig);
  try {
    const t0 = Date.now();
    const e = await backend.read('a'.repeat(64), 0, 100).catch((x) => x);
    const eio = Date.now();
    assert.ok(e instanceof NydusError && e.errno === 5, String(e));
    assert.match(e.message, /no answer within 3 s/);
    assert.ok(eio - t0 < 5000, `EIO after ${eio - t0} ms`);
    const closedAt = await Promise.race([fake.closed, new Promise<number>((r) => setTimeout(() => r(Infinity), 2000))]);
    assert.ok(closedAt - eio < 1000, `the download went on ${closedAt === Infinity ? 'past 2 s' : `${closedAt - eio} ms`} after the deadline`);
    assert.ok(fake.sent < 40, `${fake.sent} bytes dripped`);
  } finally {
    await backend.close();
  }
});

// ---- 2. a manifest without Content-Length ----

test('a manifest without Content-Length is read as a stream and refused at the cap', { timeout: 30_000 }, async () => {
  const fake = await fakeRegistry(image());
  fake.hook = (_req, res, p) => {
    if (!p.includes('/manifests/')) return false;
    res.writeHead(200, { 'content-type': MediaType.ociManifest });
    endless(fake, res);
    return true;
  };
  const e = await client({ maxManifestSize: 64 << 10 }).getManifest(`${fake.host}/src:t`).catch((x) => x);
  assert.ok(e instanceof RegistryError, String(e));
  assert.match(e.message, /GET \/v2\/src\/manifests\/t: manifest larger than 65536 bytes/);
  await fake.closed;
  assert.ok(fake.sent < CUT_OFF, `the server wrote ${fake.sent} bytes of the manifest`);
});

// ---- 3. configs bounded like manifests ----

test('a config of absurd, missing or endless size is refused before any download and before anything is pushed', { timeout: 60_000 }, async () => {
  // Size 1e12: refused up front, the config is never asked for.
  const huge = await fakeRegistry(image(goodConfig, (m) => ((m.config as { size: number }).size = 1e12)));
  huge.hook = (_req, res, p) => {
    if (p !== `/v2/src/blobs/${sha(goodConfig)}`) return false;
    res.writeHead(200);
    endless(huge, res, 64 * MiB);
    return true;
  };
  const e1 = await convertFrom(huge).catch((x) => x);
  assert.ok(e1 instanceof RegistryError, String(e1));
  assert.match(e1.message, new RegExp(`${huge.host}/src@sha256:[0-9a-f]{64}: GET /v2/src/blobs/${sha(goodConfig)}: image config of 1000000000000 bytes is larger than 4194304`));
  assert.deepEqual(pushes(huge), [], 'nothing pushed');
  assert.equal(huge.seen.filter((r) => r.includes(sha(goodConfig))).length, 0, 'the config was never asked for');
  // Size missing: the manifest is refused.
  const missing = await fakeRegistry(image(goodConfig, (m) => delete (m.config as { size?: number }).size));
  const e2 = await convertFrom(missing).catch((x) => x);
  assert.match(String(e2), /manifest sha256:[0-9a-f]{64}: config\.size is missing/);
  assert.deepEqual(pushes(missing), []);
  // Without a size, getBlob stops at its bound.
  const c = client();
  huge.sent = 0;
  const e3 = await c.getBlob(`${huge.host}/src`, sha(goodConfig), { maxSize: MiB }).catch((x) => x);
  assert.match(String(e3), /blob longer than the 1048576 bytes read into memory/);
  await huge.closed;
  assert.ok(huge.sent < CUT_OFF, `the server wrote ${huge.sent} bytes of the config`);
});

// ---- 4 and 5. check: the bootstrap layer streamed and bounded ----

test('check: a gzip bomb bootstrap layer stops at the bound; an absurd size claim is refused before allocating', { timeout: 60_000 }, async () => {
  const bomb = zlib.gzipSync(Buffer.alloc(64 * MiB));
  const claim = zlib.gzipSync(Buffer.concat([tarHeader('image/image.boot', 2n ** 45n), Buffer.alloc(4096)]));
  const fake = await fakeRegistry({ manifest: {}, blobs: [bomb, claim] });
  const c = client();
  const ref = parseReference(`${fake.host}/src`);
  const file = path.join(work, 'image.boot');
  const e1 = await pullBootstrap(c, ref, desc(bomb), file, { maxSize: MiB }).catch((x) => x);
  assert.ok(e1 instanceof NydusError, String(e1));
  assert.match(e1.message, new RegExp(`layer ${sha(bomb)} \\(the bootstrap layer\\) of ${fake.host}/src:latest: inflates to more than ${2 * MiB} bytes`));
  const e2 = await pullBootstrap(c, ref, desc(claim), file).catch((x) => x);
  assert.ok(e2 instanceof NydusError && !(e2 instanceof RangeError), String(e2));
  assert.match(e2.message, /image\/image\.boot claims 35184372088832 bytes, more than \d+/);
  assert.doesNotMatch(e2.message, /layer layer|bootstrap layer sha256.*bootstrap layer/);
  // A good one still unpacks, its diff_id the plain tar's digest.
  const boot = Buffer.alloc(10_000, 7);
  const plain = Buffer.concat([tarHeader('image/', 0, '5'), tarFile('image/image.boot', boot), TAR_END]);
  const good = zlib.gzipSync(plain);
  fake.image.blobs.push(good);
  assert.deepEqual(await pullBootstrap(c, ref, desc(good), file), { diffId: sha(plain), found: true });
  assert.ok(fs.readFileSync(file).equals(boot));
});

// ---- 6 and 10. manifest and index shapes, descriptor sizes ----

test('manifests of the wrong shape are refused where they are parsed, naming the reference and the field', { timeout: 30_000 }, async () => {
  const layer = desc(layerTgz);
  const cases: Array<[string, (m: Record<string, unknown>) => void, RegExp]> = [
    ['layers missing', (m) => delete m.layers, /layers is missing/],
    ['layers an object', (m) => (m.layers = { a: 1 }), /layers is an object, not an array/],
    ['layers [null]', (m) => (m.layers = [null]), /layers\[0\] is null, not a descriptor object/],
    ['config missing', (m) => delete m.config, /config is missing/],
    ['bad digest', (m) => (m.layers = [{ ...layer, digest: 'sha256:../../x' }]), /layers\[0\]\.digest "sha256:\.\.\/\.\.\/x" is not a sha256 digest/],
    ['size "152"', (m) => (m.layers = [{ ...layer, size: String(layer.size) }]), new RegExp(`layers\\[0\\]\\.size is "${layer.size}", not an integer >= 0`)],
    ['size -5', (m) => (m.layers = [{ ...layer, size: -5 }]), /layers\[0\]\.size is -5, not an integer >= 0/],
    ['size 1e18', (m) => (m.layers = [{ ...layer, size: 1e18 }]), /layers\[0\]\.size is 1000000000000000000, not an integer >= 0/],
    ['size 152.5', (m) => (m.layers = [{ ...layer, size: 152.5 }]), /layers\[0\]\.size is 152\.5, not an integer >= 0/],
    ['size "abc"', (m) => (m.layers = [{ ...layer, size: 'abc' }]), /layers\[0\]\.size is "abc", not an integer >= 0/],
    ['size missing', (m) => (m.layers = [{ mediaType: layer.mediaType, digest: layer.digest }]), /layers\[0\]\.size is missing/],
    ['mediaType a number', (m) => (m.layers = [{ ...layer, mediaType: 7 }]), /layers\[0\]\.mediaType is 7, not a string/],
    ['annotations not strings', (m) => (m.annotations = { a: { b: 1 } }), /annotations\["a"\] is an object, not a string/],
    ['manifests in a manifest', (m) => (m.manifests = []), /manifests is there/],
  ];
  const fake = await fakeRegistry(image());
  const c = client();
  for (const [what, edit, want] of cases) {
    fake.image = image(goodConfig, edit);
    const e = await c.getManifest(`${fake.host}/src:t`).catch((x) => x);
    assert.ok(e instanceof RegistryError, `${what}: ${e}`);
    assert.match(e.message, new RegExp(`^registry ${fake.host}/src:t: GET /v2/src/manifests/t: manifest sha256:[0-9a-f]{64}: `), what);
    assert.match(e.message, want, what);
  }
  // An index: entries checked as descriptors, their platforms too.
  const index = (manifests: unknown) => ({ manifest: { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests }, manifestType: MediaType.ociIndex, blobs: [] });
  for (const [manifests, want] of [
    [undefined, /manifests is missing/],
    [[null], /manifests\[0\] is null/],
    [[{ ...layer, mediaType: MediaType.ociManifest, platform: 'linux' }], /manifests\[0\]\.platform is "linux", not an object/],
    [[{ ...layer, mediaType: MediaType.ociManifest, platform: { os: 'linux' } }], /manifests\[0\]\.platform\.architecture is missing/],
  ] as const) {
    fake.image = index(manifests);
    const e = await c.getManifest(`${fake.host}/src:t`).catch((x) => x);
    assert.ok(e instanceof RegistryError, String(e));
    assert.match(e.message, want);
  }
  // Descriptor sizes given to blob reads directly are checked before any request.
  const before = fake.seen.length;
  const e = await c.getBlob(`${fake.host}/src`, layer.digest, { size: '152' as unknown as number }).catch((x) => x);
  assert.match(String(e), /blob size "152" is not an integer >= 0/);
  assert.equal(fake.seen.length, before, 'no request');
});

test('convert refuses a malformed manifest before pushing anything', { timeout: 30_000 }, async () => {
  for (const edit of [(m: Record<string, unknown>) => (m.layers = [null]), (m: Record<string, unknown>) => delete m.config]) {
    const fake = await fakeRegistry(image(goodConfig, edit));
    const e = await convertFrom(fake).catch((x) => x);
    assert.ok(e instanceof RegistryError, String(e));
    assert.match(e.message, new RegExp(`^registry ${fake.host}/src:t: GET /v2/src/manifests/t: manifest sha256:`));
    assert.deepEqual(pushes(fake), []);
  }
});

// ---- 7 and 8. configs that are not JSON objects ----

test('convert and check: a config that is not JSON, nests too deep or is not an object is refused naming it, before anything is pushed', { timeout: 60_000 }, async () => {
  const deep = Buffer.from(`{"a":${'['.repeat(200_000)}${']'.repeat(200_000)}}`);
  for (const [config, want] of [
    [Buffer.from('<html>not json</html>'), /the config is not JSON/],
    [deep, /the config nests deeper than 256 levels/],
    [Buffer.from('[1,2]'), /the config is an array, not a JSON object/],
    [Buffer.from('null'), /the config is null, not a JSON object/],
    [Buffer.from('{"rootfs":[]}'), /rootfs is an array, not an object/],
  ] as const) {
    const fake = await fakeRegistry(image(config));
    const e = await convertFrom(fake).catch((x) => x);
    assert.ok(e instanceof RegistryError, String(e));
    assert.match(e.message, new RegExp(`^registry ${fake.host}/src@sha256:[0-9a-f]{64}: GET /v2/src/blobs/${sha(config)}: image config ${sha(config)}: `));
    assert.match(e.message, want);
    assert.deepEqual(pushes(fake), [], 'nothing pushed');
    const e2 = await checkConverted({ target: `${fake.host}/src:t`, plainHttp: true, platform: { os: 'linux', architecture: 'amd64' }, log, workDir: path.join(work, 'check') }).catch((x) => x);
    assert.ok(e2 instanceof RegistryError, String(e2));
    assert.match(e2.message, want);
  }
});

test('convert: a good image converts; a layer listed three times is pulled and converted once', { timeout: 60_000 }, async () => {
  const fake = await fakeRegistry(image(goodConfig, (m) => (m.layers = [desc(layerTgz), desc(layerTgz), desc(layerTgz)])));
  const r = await convertFrom(fake);
  assert.equal(r.images.length, 1);
  assert.equal(r.images[0].layers.length, 2, 'one Nydus blob and the bootstrap layer');
  assert.equal(fake.seen.filter((x) => x === `GET /v2/src/blobs/${sha(layerTgz)}`).length, 1);
});

test('convert: a layer error names the layer once ("layer sha256:..." not "layer layer")', { timeout: 30_000 }, async () => {
  const notTar = Buffer.from('not a tar\n'.repeat(100));
  const bad = await fakeRegistry({ ...image(), blobs: [goodConfig, notTar] });
  (bad.image.manifest as { layers: unknown }).layers = [desc(notTar)];
  const e = await convertFrom(bad).catch((x) => x);
  assert.match(String(e), new RegExp(`layer ${sha(notTar)} of ${bad.host}/src@sha256:`));
  assert.doesNotMatch(String(e), /layer layer/);
});

// ---- 9. drips and silence ----

test('small documents have an overall deadline: a manifest, a config, an error body and a token that drip or wait end in an error', { timeout: 30_000 }, async () => {
  const fake = await fakeRegistry(image());
  const manifest = Buffer.from(JSON.stringify(fake.image.manifest));
  let what = 'manifest';
  fake.hook = (_req, res, p) => {
    if (what === 'manifest' && p.includes('/manifests/')) {
      res.writeHead(200, { 'content-type': MediaType.ociManifest });
      drip(fake, res, manifest, 100);
      return true;
    }
    if (what === 'config' && p === `/v2/src/blobs/${sha(goodConfig)}`) {
      res.writeHead(200);
      drip(fake, res, goodConfig, 100);
      return true;
    }
    if (what === 'error') {
      res.writeHead(404);
      drip(fake, res, Buffer.alloc(1000, 0x61), 100);
      return true;
    }
    if (what === 'late headers') {
      // Headers after 5 s, then a byte every second: within the headers and body timeouts (60 s).
      const later = setTimeout(() => {
        res.writeHead(200, { 'content-type': MediaType.ociManifest });
        drip(fake, res, manifest, 1000);
      }, 5000);
      res.on('close', () => clearTimeout(later));
      return true;
    }
    if (what === 'token') {
      if (p === '/token') return true; // never answers
      res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${fake.host}/token",service="fake"` }).end();
      return true;
    }
    return false;
  };
  const c = client({ documentTimeoutMs: 500 });
  let t0 = Date.now();
  const e1 = await c.getManifest(`${fake.host}/src:t`).catch((x) => x);
  assert.ok(e1 instanceof RegistryError, String(e1));
  assert.match(e1.message, /GET \/v2\/src\/manifests\/t: manifest not received whole within 0\.5 s/);
  assert.ok(Date.now() - t0 < 3000, `${Date.now() - t0} ms`);
  what = 'config';
  t0 = Date.now();
  const e2 = await c.getConfig(`${fake.host}/src`, desc(goodConfig, MediaType.ociConfig)).catch((x) => x);
  assert.ok(e2 instanceof RegistryError, String(e2));
  assert.match(e2.message, new RegExp(`GET /v2/src/blobs/${sha(goodConfig)}: not received whole within 0\\.5 s`));
  assert.ok(Date.now() - t0 < 3000, `${Date.now() - t0} ms`);
  const closedAt = await Promise.race([fake.closed, new Promise<number>((r) => setTimeout(() => r(Infinity), 1000))]);
  assert.ok(closedAt !== Infinity, 'the dripping download was dropped');
  what = 'error';
  t0 = Date.now();
  const e3 = await c.getManifest(`${fake.host}/src:t`).catch((x) => x);
  assert.ok(e3 instanceof RegistryError && e3.status === 404, String(e3));
  assert.match(e3.message, /HTTP 404: a+$/, 'the excerpt that came');
  assert.ok(Date.now() - t0 < 3000, `${Date.now() - t0} ms`);
  // The deadline covers the wait for the answer too, and a token request.
  what = 'late headers';
  t0 = Date.now();
  const e4 = await c.getManifest(`${fake.host}/src:t`).catch((x) => x);
  assert.ok(e4 instanceof RegistryError, String(e4));
  assert.match(e4.message, /GET \/v2\/src\/manifests\/t: manifest not received whole within 0\.5 s \(0 bytes came\)/);
  assert.ok(Date.now() - t0 < 3000, `${Date.now() - t0} ms`);
  what = 'token';
  t0 = Date.now();
  const e5 = await c.getManifest(`${fake.host}/src:t`).catch((x) => x);
  assert.ok(e5 instanceof RegistryError, String(e5));
  assert.match(e5.message, new RegExp(`GET http://${fake.host}/token: token request: no answer within 0\\.5 s`));
  assert.ok(Date.now() - t0 < 3000, `${Date.now() - t0} ms`);
});

test('a blob that arrives slowly but steadily is not cut by the document deadline', { timeout: 30_000 }, async () => {
  const blob = crypto.randomBytes(20 * 1024);
  const fake = await fakeRegistry({ ...image(), blobs: [blob] });
  fake.hook = (_req, res, p) => {
    if (p !== `/v2/src/blobs/${sha(blob)}`) return false;
    res.writeHead(200, { 'content-length': blob.length });
    let i = 0;
    const t = setInterval(() => {
      res.write(blob.subarray(i, (i += 1024)));
      if (i >= blob.length) {
        clearInterval(t);
        res.end();
      }
    }, 60);
    return true;
  };
  const c = client({ documentTimeoutMs: 300 });
  const parts: Buffer[] = [];
  for await (const b of c.blobStream(`${fake.host}/src`, sha(blob), { size: blob.length })) parts.push(b as Buffer);
  assert.ok(Buffer.concat(parts).equals(blob));
});

test('a registry that accepts and never answers is given one more try, not four', { timeout: 30_000 }, async () => {
  const fake = await fakeRegistry(image());
  fake.hook = () => true; // never answers
  const t0 = Date.now();
  const e = await client({ headersTimeoutMs: 300, retries: 3 }).getManifest(`${fake.host}/src:t`).catch((x) => x);
  assert.ok(e instanceof RegistryError, String(e));
  assert.match(e.message, /Headers Timeout.*\(after 2 attempts\)/);
  assert.equal(fake.seen.length, 2);
  assert.ok(Date.now() - t0 < 3000);
});

// ---- 11. --all-platforms dedupes an index's repeated manifests ----

test('all platforms: an index listing one manifest many times fetches and converts it once; a huge index is refused', { timeout: 60_000 }, async () => {
  const img = image();
  const manifest = Buffer.from(JSON.stringify(img.manifest));
  const entries = (n: number) => Array.from({ length: n }, (_, i) => ({ ...desc(manifest, MediaType.ociManifest), platform: { os: 'linux', architecture: 'amd64', variant: `v${i}` } }));
  const fake = await fakeRegistry({ manifest: { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: entries(500) }, manifestType: MediaType.ociIndex, children: [manifest], blobs: img.blobs });
  const resolved = await client().resolveImage(`${fake.host}/src:t`, 'all');
  assert.equal(resolved.images.length, 1);
  assert.equal(fake.seen.filter((r) => r.startsWith('GET /v2/src/manifests/')).length, 2, 'the index and its one manifest');
  const r = await convertFrom(fake, { platform: 'all' });
  assert.equal(r.images.length, 1);
  assert.equal(fake.seen.filter((x) => x === `GET /v2/src/manifests/${sha(manifest)}`).length, 2, 'once for resolveImage, once for convert');
  (fake.image.manifest as { manifests: unknown }).manifests = entries(18_000);
  const e = await client().resolveImage(`${fake.host}/src:t`, 'all').catch((x) => x);
  assert.ok(e instanceof RegistryError, String(e));
  assert.match(e.message, /manifests has 18000 entries, more than 1024/);
});

test('an index entry whose manifest is larger than the entry says, or entries larger together than the bound, are refused; no more is read', { timeout: 60_000 }, async () => {
  const img = image();
  const manifest = Buffer.from(JSON.stringify(img.manifest));
  const entry = (size: number, variant = 'v1') => ({ ...desc(manifest, MediaType.ociManifest), size, platform: { os: 'linux', architecture: 'amd64', variant } });
  const fake = await fakeRegistry({ manifest: { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [entry(100)] }, manifestType: MediaType.ociIndex, children: [manifest], blobs: img.blobs });
  const small = await client().resolveImage(`${fake.host}/src:t`, 'all').catch((x) => x);
  assert.ok(small instanceof RegistryError, String(small));
  assert.match(small.message, new RegExp(`manifests/${sha(manifest)}.*manifest of ${manifest.length} bytes, where its descriptor says 100`));
  // convert takes its platforms' images the same way: refused before anything is pushed.
  const c = await convertFrom(fake, { platform: 'all' }).catch((x) => x);
  assert.match(String(c), /where its descriptor says 100/);
  assert.deepEqual(pushes(fake), []);
  // Entries that claim more than MAX_RESOLVED_MANIFEST_BYTES together: not one of them is fetched.
  (fake.image.manifest as { manifests: unknown }).manifests = Array.from({ length: 5 }, (_, i) => ({ ...entry(4 << 20, `v${i}`), digest: `sha256:${String(i).repeat(64)}` }));
  fake.seen.length = 0;
  const big = await client().resolveImage(`${fake.host}/src:t`, 'all').catch((x) => x);
  assert.ok(big instanceof RegistryError, String(big));
  assert.match(big.message, /the index's 5 image manifests chosen are 20971520 bytes together, more than 16777216/);
  assert.deepEqual(fake.seen, ['GET /v2/src/manifests/t'], 'only the index was read');
  // The right size is accepted.
  (fake.image.manifest as { manifests: unknown }).manifests = [entry(manifest.length)];
  assert.equal((await client().resolveImage(`${fake.host}/src:t`, 'all')).images.length, 1);
});

test('a manifest or index nesting deeper than the bound is refused where it is read, before convert pushes anything', { timeout: 30_000 }, async () => {
  const img = image();
  const manifest = Buffer.from(JSON.stringify(img.manifest));
  // An index entry's platform with a field of its own nested 100,000 levels (JSON.parse takes it;
  // writing the converted index again would run out of stack). Served as text: this process could
  // not write it either.
  const indexNesting = (n: number) => Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [{ ...desc(manifest, MediaType.ociManifest), platform: { os: 'linux', architecture: 'amd64', x: 'X' } }],
  }).replace('"X"', `${'['.repeat(n)}${']'.repeat(n)}`));
  const fake = await fakeRegistry({ manifest: indexNesting(100_000), manifestType: MediaType.ociIndex, children: [manifest], blobs: img.blobs });
  const e = await client().getManifest(`${fake.host}/src:t`).catch((x) => x);
  assert.ok(e instanceof RegistryError, String(e));
  assert.match(e.message, /src:t.*manifest sha256:[0-9a-f]{64} nests deeper than 256 levels/);
  const c = await convertFrom(fake, { platform: 'all' }).catch((x) => x);
  assert.match(String(c), /nests deeper than 256 levels/);
  assert.deepEqual(pushes(fake), []);
  // 256 levels are still taken (the index itself is 4 deep around the field).
  fake.image.manifest = indexNesting(252);
  assert.equal((await client().getManifest(`${fake.host}/src:t`)).mediaType, MediaType.ociIndex);
});

test('token answers: a token that is not a string, or an answer that is not an object, is refused naming the realm; nothing is sent with it', { timeout: 30_000 }, async () => {
  const img = image();
  const fake = await fakeRegistry(img);
  let answer = '';
  const sentWith: string[] = [];
  fake.hook = (req, res, p) => {
    if (p === '/token') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(answer);
      return true;
    }
    if (req.headers.authorization) sentWith.push(req.headers.authorization);
    res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${fake.host}/token",service="fake"` }).end();
    return true;
  };
  for (const [body, says] of [
    ['{"token":{"a":1}}', /token from http:\/\/127\.0\.0\.1:\d+\/token: answer's "token" is an object, not a string/],
    ['{"access_token":12345}', /answer's "access_token" is 12345, not a string/],
    ['{"token":["x","y"]}', /answer's "token" is an array, not a string/],
    ['null', /token from http:\/\/127\.0\.0\.1:\d+\/token: answer is null, not a JSON object/],
  ] as const) {
    answer = body;
    const e = await client().getManifest(`${fake.host}/src:t`).catch((x) => x);
    assert.ok(e instanceof RegistryError, `${body}: ${e}`);
    assert.match(e.message, says, body);
  }
  assert.deepEqual(sentWith, [], 'no request went out with what such an answer held');
});

test('a blob redirected to a host that asks for authorization: the registry\'s credentials go neither to its realm nor its token to the registry', { timeout: 30_000 }, async () => {
  const storageSeen: Array<{ path: string; auth?: string }> = [];
  const storage = http.createServer((req, res) => {
    const p = new URL(req.url!, 'http://x').pathname;
    storageSeen.push({ path: p, auth: req.headers.authorization });
    if (p === '/steal') return void res.writeHead(200).end('{"token":"t"}');
    res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${req.headers.host}/steal",service="evil"` }).end();
  });
  servers.push(storage);
  await new Promise<void>((r) => storage.listen(0, '127.0.0.2', r));
  const storageHost = `127.0.0.2:${(storage.address() as AddressInfo).port}`;
  const fake = await fakeRegistry(image());
  const registryAuth: string[] = [];
  fake.hook = (req, res) => {
    if (req.headers.authorization) registryAuth.push(req.headers.authorization);
    res.writeHead(307, { location: `http://${storageHost}/blob` }).end();
    return true;
  };
  const c = client({ credentials: { username: 'alice', password: 'secret' } });
  const e = await c.readBlobRange(`${fake.host}/src`, `sha256:${'a'.repeat(64)}`, 0, 10).catch((x) => x);
  assert.ok(e instanceof RegistryError, String(e));
  assert.equal(e.status, 401);
  assert.match(e.message, new RegExp(`${storageHost.replace(/\./g, '\\.')}, where the registry redirected the request, asks for authorization`));
  assert.deepEqual(storageSeen.map((r) => r.path), ['/blob'], 'the realm was never asked for a token');
  assert.ok(storageSeen.every((r) => r.auth === undefined), 'the storage host got no credentials');
  assert.deepEqual(registryAuth, [], 'no token of the storage host reached the registry');
});

test('an upload Location that is not a URL is an error naming it', { timeout: 30_000 }, async () => {
  const fake = await fakeRegistry(image());
  fake.hook = (req, res, p) => {
    if (!p.startsWith('/v2/dst/')) return false;
    req.resume();
    if (req.method === 'HEAD') return void res.writeHead(404).end(), true;
    res.writeHead(202, { location: 'http://[::1' }).end();
    return true;
  };
  const e = await client().pushBlob(`${fake.host}/dst`, Buffer.from('hello')).catch((x) => x);
  assert.ok(e instanceof RegistryError, String(e));
  assert.match(e.message, /dst.*POST.*upload answer's Location "http:\/\/\[::1" is not a URL/);
});

test('ranges: a 206 without Content-Range is refused; a stream read on from a byte ends where the blob ends, a short answer asked again, a lying one refused', { timeout: 30_000 }, async () => {
  const blob = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz');
  const fake = await fakeRegistry({ manifest: {}, blobs: [blob] });
  const blobPath = `/v2/src/blobs/${sha(blob)}`;
  // What a 206 answers to "bytes=a-" or "bytes=a-b": `end` (exclusive) cuts it short, `total` is what it claims.
  let answer: (a: number, b: number) => { body: Buffer; range?: string } = () => ({ body: Buffer.alloc(0) });
  fake.hook = (req, res, p) => {
    if (p !== blobPath || req.method !== 'GET' || !req.headers.range) return false;
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range)!;
    const { body, range } = answer(Number(m[1]), m[2] ? Number(m[2]) + 1 : blob.length);
    res.writeHead(206, { 'content-length': body.length, ...(range ? { 'content-range': range } : {}) });
    res.end(body);
    return true;
  };
  const c = client();
  const ref = `${fake.host}/src`;
  const collect = async (from: number) => Buffer.concat(await c.blobStream(ref, sha(blob), { from }).toArray());

  answer = (a, b) => ({ body: blob.subarray(a, b) });
  const noRange = await c.readBlobRange(ref, sha(blob), 4, 6).catch((e) => e);
  assert.ok(noRange instanceof RegistryError, String(noRange));
  assert.match(noRange.message, /asked for bytes 4-9, got no Content-Range/);

  // Each answer holds at most 5 bytes and says so: the rest is asked for again, up to the end.
  const asked: string[] = [];
  answer = (a, b) => {
    asked.push(`${a}-`);
    const e = Math.min(b, a + 5);
    return { body: blob.subarray(a, e), range: `bytes ${a}-${e - 1}/${blob.length}` };
  };
  assert.deepEqual(await collect(20), blob.subarray(20));
  assert.deepEqual(asked, ['20-', '25-', '30-', '35-']);

  // An answer that stops early and claims a longer blob than it ever delivers: the stream fails, it does not end.
  answer = (a) => ({ body: a === 20 ? blob.subarray(20, 30) : Buffer.alloc(0), range: `bytes ${a}-${blob.length - 1}/${blob.length}` });
  const short = await collect(20).catch((e) => e);
  assert.ok(short instanceof RegistryError, String(short));
  assert.match(short.message, /expected 36 bytes, got 30 bytes/);

  // One without Content-Range, or for other bytes, is no part of the blob.
  answer = (a) => ({ body: blob.subarray(a) });
  assert.match(String(await collect(20).catch((e) => e)), /reading on from byte 20, got Content-Range ""/);
  answer = (a) => ({ body: blob.subarray(a - 1), range: `bytes ${a - 1}-${blob.length - 1}/${blob.length}` });
  assert.match(String(await collect(20).catch((e) => e)), /reading on from byte 20, got Content-Range "bytes 19-35\/36"/);
});
