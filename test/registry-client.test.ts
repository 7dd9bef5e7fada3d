/**
 * The registry client against a real registry (Debian's docker-registry on 127.0.0.1): round trips,
 * uploads, mounts, Range reads, an image pushed by skopeo from a umoci layout, platform selection,
 * Basic and Bearer auth, and faults injected by a proxy (5xx, resets, stalls, a corrupted body, a
 * redirect to another host).
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { execFileSync } from 'node:child_process';
import {
  RegistryClient, RegistryError, DigestMismatchError, InvalidReferenceError, MediaType,
  parseReference, repositoryAt, formatReference, parsePlatform, selectPlatforms, dockerConfigCredentials, credentialsFromAuth,
  type Descriptor, type ImageIndex, type ImageManifest, type RegistryClientOptions,
} from '../src/registry/index.ts';
import { prand, tmpDir } from './helpers/fixtures.ts';
import { ARTIFACT_TYPE_NYDUS_MANIFEST, OS_FEATURE_NYDUS, isNydusIndexEntry } from '../src/convert/nydus-format.ts';
import { bypassesProxy, cidrsOf } from '../src/registry/env-proxy.ts';
import { requireTool, startRegistry, type RegistryServer } from './helpers/registry.ts';
import { FaultProxy, TokenAuthProxy } from './helpers/registry-proxy.ts';

const sha = (b: Buffer) => `sha256:${crypto.createHash('sha256').update(b).digest('hex')}`;
const work = tmpDir('registry-client');
const quick: RegistryClientOptions = { plainHttp: true, dockerConfig: false, proxyFromEnvironment: false, retryBaseDelayMs: 10, retryMaxDelayMs: 50 };
const clients: RegistryClient[] = [];
function client(opts: RegistryClientOptions = {}): RegistryClient {
  const c = new RegistryClient({ ...quick, ...opts });
  clients.push(c);
  return c;
}

async function collect(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of stream) parts.push(p as Buffer);
  return Buffer.concat(parts);
}

/** Pushes a config and layers, then an OCI manifest at `ref`; returns the manifest and its digest. */
async function pushImage(c: RegistryClient, ref: string, layers: Buffer[], platform = { os: 'linux', architecture: 'amd64' }) {
  const config = Buffer.from(JSON.stringify({ ...platform, rootfs: { type: 'layers', diff_ids: layers.map(sha) } }));
  await c.pushBlob(ref, config);
  for (const l of layers) await c.pushBlob(ref, l);
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    config: { mediaType: MediaType.ociConfig, digest: sha(config), size: config.length },
    layers: layers.map((l) => ({ mediaType: MediaType.ociLayer, digest: sha(l), size: l.length })),
  };
  const { digest, size, mediaType } = await c.putManifest(ref, manifest);
  assert.equal(mediaType, MediaType.ociManifest);
  return { manifest, digest, size, config };
}

let reg: RegistryServer;

before(async () => {
  reg = await startRegistry();
});

after(async () => {
  for (const c of clients) await c.close();
  await reg?.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

describe('references, platforms, credentials', () => {
  test('references parse with docker.io defaults and keep ports, tags and digests', () => {
    const d = `sha256:${'a'.repeat(64)}`;
    assert.deepEqual(parseReference('busybox'), { registry: 'docker.io', endpoint: 'registry-1.docker.io', repository: 'library/busybox', tag: 'latest', digest: undefined });
    assert.equal(parseReference('user/app:1.0').repository, 'user/app');
    const r = parseReference(`127.0.0.1:5000/a/b/c:v1@${d}`);
    assert.deepEqual([r.registry, r.endpoint, r.repository, r.tag, r.digest], ['127.0.0.1:5000', '127.0.0.1:5000', 'a/b/c', 'v1', d]);
    assert.equal(parseReference(`localhost/x@${d}`).tag, undefined);
    assert.equal(formatReference(parseReference('quay.io/x/y')), 'quay.io/x/y:latest');
    // Docker Hub's legacy name is Docker Hub, its one-component names library/ ones (as docker pull has them).
    assert.deepEqual(parseReference('index.docker.io/busybox:1'), { registry: 'docker.io', endpoint: 'registry-1.docker.io', repository: 'library/busybox', tag: '1', digest: undefined });
    assert.equal(parseReference('index.docker.io/user/app').repository, 'user/app');
    // nydusd's registry backend names host and repo apart: the host is the registry, a name without a
    // dot too (parsed as one reference, `harbor/team/app` would be Docker Hub's).
    assert.deepEqual(repositoryAt('harbor', 'team/app'), { registry: 'harbor', endpoint: 'harbor', repository: 'team/app', tag: 'latest' });
    assert.deepEqual(repositoryAt('index.docker.io', 'busybox'), { registry: 'docker.io', endpoint: 'registry-1.docker.io', repository: 'library/busybox', tag: 'latest' });
    assert.equal(repositoryAt('127.0.0.1:5000', 'a/b').endpoint, '127.0.0.1:5000');
    for (const [host, repo] of [['', 'a'], ['bad host', 'a'], ['h', ''], ['h', 'Upper'], ['h', 'a:tag']]) {
      assert.throws(() => repositoryAt(host, repo), InvalidReferenceError, `${host} ${repo}`);
    }
    for (const bad of ['', 'UPPER/case', 'a/b:bad tag', `a@sha256:${'z'.repeat(64)}`, 'a/b@md5:00', 'host:99999999/x']) {
      assert.throws(() => parseReference(bad), InvalidReferenceError, bad);
    }
  });

  test('platforms: os/arch[/variant], aliases, best match and all', () => {
    assert.deepEqual(parsePlatform('linux/aarch64'), { os: 'linux', architecture: 'arm64' });
    assert.throws(() => parsePlatform('linux'), InvalidReferenceError);
    const d = (architecture: string, variant?: string, os = 'linux'): Descriptor => ({ mediaType: MediaType.ociManifest, digest: `${architecture}${variant ?? ''}`, size: 1, platform: { os, architecture, variant } });
    const list = [d('amd64'), d('arm', 'v6'), d('arm', 'v7'), d('arm64', 'v8'), d('unknown', undefined, 'unknown')];
    assert.deepEqual(selectPlatforms(list, parsePlatform('linux/arm64')).map((x) => x.digest), ['arm64v8']);
    assert.deepEqual(selectPlatforms(list, parsePlatform('linux/arm')).map((x) => x.digest), ['armv7']);
    assert.deepEqual(selectPlatforms(list, parsePlatform('linux/arm/v6')).map((x) => x.digest), ['armv6']);
    assert.deepEqual(selectPlatforms(list, parsePlatform('linux/s390x')), []);
    assert.equal(selectPlatforms(list, 'all').length, 4, 'the unknown/unknown attestation entry is not a platform');
  });

  test('platforms: an index of nydusify --merge-platform (the OCI image and the Nydus one of each platform): the Nydus one for check\'s target, the OCI one for a source', () => {
    const amd = { os: 'linux', architecture: 'amd64' };
    const arm = { os: 'linux', architecture: 'arm64' };
    // Nydus entries first and last: the order must not decide. Marked as v2.3.5 on (artifactType) and before (os.features).
    const index: Descriptor[] = [
      { mediaType: MediaType.ociManifest, digest: 'nydus-amd64', size: 1, platform: amd, artifactType: ARTIFACT_TYPE_NYDUS_MANIFEST },
      { mediaType: MediaType.ociManifest, digest: 'oci-amd64', size: 1, platform: amd },
      { mediaType: MediaType.ociManifest, digest: 'oci-arm64', size: 1, platform: arm },
      { mediaType: MediaType.ociManifest, digest: 'nydus-arm64', size: 1, platform: { ...arm, 'os.features': [OS_FEATURE_NYDUS] } },
    ];
    const oci = (d: Descriptor) => !isNydusIndexEntry(d);
    for (const p of ['linux/amd64', 'linux/arm64']) {
      const arch = p.split('/')[1];
      assert.deepEqual(selectPlatforms(index, parsePlatform(p), isNydusIndexEntry).map((x) => x.digest), [`nydus-${arch}`]);
      assert.deepEqual(selectPlatforms(index, parsePlatform(p), oci).map((x) => x.digest), [`oci-${arch}`]);
    }
    assert.deepEqual(selectPlatforms(index, 'all', oci).map((x) => x.digest), ['oci-amd64', 'oci-arm64'], 'converting every platform: the OCI images only');
    assert.deepEqual(selectPlatforms(index.filter(isNydusIndexEntry), 'all', oci).map((x) => x.digest), ['nydus-amd64', 'nydus-arm64'], 'an entry with no other of its platform stays');
  });

  test('credentials come from $DOCKER_CONFIG/config.json', () => {
    const dir = path.join(work, 'docker-config');
    fs.mkdirSync(dir, { recursive: true });
    const auth = Buffer.from('alice:s3:cret').toString('base64');
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ auths: { '127.0.0.1:5000': { auth }, 'https://index.docker.io/v1/': { auth } } }));
    const env = { DOCKER_CONFIG: dir };
    assert.deepEqual(dockerConfigCredentials('127.0.0.1:5000', env), { username: 'alice', password: 's3:cret' });
    assert.deepEqual(dockerConfigCredentials('docker.io', env), { username: 'alice', password: 's3:cret' });
    assert.equal(dockerConfigCredentials('127.0.0.1:5001', env), undefined);
    assert.equal(dockerConfigCredentials('x', { DOCKER_CONFIG: path.join(work, 'none') }), undefined);
    const home = path.join(work, 'home');
    fs.mkdirSync(path.join(home, '.docker'), { recursive: true });
    fs.copyFileSync(path.join(dir, 'config.json'), path.join(home, '.docker', 'config.json'));
    assert.deepEqual(dockerConfigCredentials('127.0.0.1:5000', { HOME: home }), { username: 'alice', password: 's3:cret' }, '~/.docker/config.json without DOCKER_CONFIG');
    assert.deepEqual(credentialsFromAuth(auth), { username: 'alice', password: 's3:cret' });
    assert.throws(() => credentialsFromAuth(Buffer.from('nocolon').toString('base64'), 'backend.registry.auth'), /backend\.registry\.auth is not base64 of user:password/);
    fs.writeFileSync(path.join(dir, 'config.json'), '{');
    assert.throws(() => dockerConfigCredentials('x', env), /config\.json: not valid JSON/);
  });

  test('a missing prerequisite names the Debian package to install', () => {
    assert.throws(() => requireTool('no-such-registry-binary', 'docker-registry'), /apt-get install -y docker-registry/);
  });
});

describe('round trips on an anonymous registry', () => {
  test('a blob and a manifest pushed, pulled back by tag and by digest', async () => {
    const c = client();
    const ref = `${reg.host}/round/trip:v1`;
    const layer = prand(700_000, 11);
    const { manifest, digest, config } = await pushImage(c, ref, [layer]);
    const got = await c.getManifest(ref);
    assert.equal(got.digest, digest);
    assert.equal(got.mediaType, MediaType.ociManifest);
    assert.deepEqual(got.json, manifest);
    const head = await c.headManifest(ref);
    assert.deepEqual(head, { digest, size: got.size, mediaType: MediaType.ociManifest });
    assert.equal(await c.headManifest(`${reg.host}/round/trip:absent`), undefined);
    const byDigest = await c.getManifest(`${reg.host}/round/trip@${digest}`);
    assert.ok(byDigest.bytes.equals(got.bytes));
    assert.deepEqual(await c.headBlob(ref, sha(layer)), { size: layer.length });
    assert.equal(await c.headBlob(ref, sha(Buffer.from('absent'))), undefined);
    assert.ok((await collect(c.blobStream(ref, sha(layer), { size: layer.length }))).equals(layer));
    assert.ok((await c.getBlob(ref, sha(config))).equals(config));
    // Pushing again finds everything in place.
    assert.equal((await c.pushBlob(ref, layer)).how, 'exists');
    const missing = await c.getManifest(`${reg.host}/round/trip:absent`).catch((e) => e);
    assert.ok(missing instanceof RegistryError);
    assert.equal(missing.status, 404);
    assert.match(missing.message, /127\.0\.0\.1:\d+\/round\/trip:absent: GET \/v2\/round\/trip\/manifests\/absent: HTTP 404 MANIFEST_UNKNOWN/);
  });

  test('Docker schema 2 manifests keep their media type and bytes', async () => {
    const c = client();
    const ref = `${reg.host}/docker/v2:1`;
    const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
    await c.pushBlob(ref, config);
    const layer = prand(1000, 12);
    await c.pushBlob(ref, layer);
    const bytes = Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: MediaType.dockerManifest,
      config: { mediaType: MediaType.dockerConfig, size: config.length, digest: sha(config) },
      layers: [{ mediaType: MediaType.dockerLayerGzip, size: layer.length, digest: sha(layer) }],
    }, null, 3));
    const put = await c.putManifest(ref, bytes);
    assert.deepEqual(put, { mediaType: MediaType.dockerManifest, digest: sha(bytes), size: bytes.length });
    const got = await c.getManifest(ref);
    assert.equal(got.mediaType, MediaType.dockerManifest);
    assert.equal(got.digest, put.digest);
    assert.ok(got.bytes.equals(bytes), 'the exact bytes come back');
  });

  test('monolithic upload from a file stream, chunked upload of a stream of unknown length', async () => {
    const c = client({ uploadChunkSize: 64 * 1024 });
    const ref = `${reg.host}/upload/kinds:v1`;
    const data = prand(300_001, 13);
    const file = path.join(work, 'blob.bin');
    fs.writeFileSync(file, data);
    const mono = await c.pushBlob(ref, { open: () => fs.createReadStream(file), size: data.length, digest: sha(data) });
    assert.deepEqual(mono, { digest: sha(data), size: data.length, how: 'uploaded' });
    const other = prand(1_000_000, 14);
    const chunked = await c.pushBlobStream(`${reg.host}/upload/chunked`, Readable.from([other.subarray(0, 5), other.subarray(5, 200_000), other.subarray(200_000)]));
    assert.deepEqual(chunked, { digest: sha(other), size: other.length, how: 'uploaded' });
    assert.ok((await c.getBlob(`${reg.host}/upload/chunked`, sha(other))).equals(other));
    const empty = await c.pushBlobStream(`${reg.host}/upload/chunked`, Readable.from([]));
    assert.equal(empty.digest, sha(Buffer.alloc(0)));
    assert.deepEqual(await c.headBlob(`${reg.host}/upload/chunked`, empty.digest), { size: 0 });
    const wrong = await c.pushBlobStream(`${reg.host}/upload/chunked`, Readable.from([Buffer.from('x')]), { expectedDigest: sha(Buffer.from('y')) }).catch((e) => e);
    assert.ok(wrong instanceof DigestMismatchError, String(wrong));
    assert.equal(await c.headBlob(`${reg.host}/upload/chunked`, sha(Buffer.from('x'))), undefined, 'a wrong blob is never committed');
  });

  test('chunked upload through relative Locations', async () => {
    const proxy = await FaultProxy.start(reg.url, { relativeLocations: true });
    try {
      const c = client({ uploadChunkSize: 100_000 });
      const data = prand(450_000, 15);
      const pushed = await c.pushBlobStream(`${proxy.host}/upload/relative`, Readable.from([data]));
      assert.equal(pushed.digest, sha(data));
      const patches = proxy.seen.filter((r) => r.method === 'PATCH');
      assert.equal(patches.length, 5);
      assert.deepEqual(patches.map((p) => p.headers['content-range']), ['0-99999', '100000-199999', '200000-299999', '300000-399999', '400000-449999']);
      assert.ok((await c.getBlob(`${reg.host}/upload/relative`, pushed.digest)).equals(data));
    } finally {
      await proxy.close();
    }
  });

  test('cross-repository mount, and upload when the source repository lacks the blob', async () => {
    const c = client();
    const data = prand(200_000, 16);
    await c.pushBlob(`${reg.host}/mount/source`, data);
    const mounted = await c.pushBlob(`${reg.host}/mount/target`, data, { mountFrom: 'mount/source' });
    assert.equal(mounted.how, 'mounted');
    assert.deepEqual(await c.headBlob(`${reg.host}/mount/target`, sha(data)), { size: data.length });
    const fresh = prand(1000, 17);
    const uploaded = await c.pushBlob(`${reg.host}/mount/target2`, fresh, { mountFrom: 'mount/elsewhere' });
    assert.equal(uploaded.how, 'uploaded', 'a 202 answer to the mount falls back to the upload it opened');
    assert.ok((await c.getBlob(`${reg.host}/mount/target2`, sha(fresh))).equals(fresh));
  });

  test('Range reads return exactly the bytes asked for', async () => {
    const c = client();
    const ref = `${reg.host}/range/blob`;
    const data = prand(3 * 1024 * 1024 + 17, 18);
    const d = (await c.pushBlob(ref, data)).digest;
    for (const [off, len] of [[0, 1], [0, 4096], [12345, 100_000], [data.length - 10, 10], [1 << 20, 2 << 20], [5, 0]]) {
      assert.ok((await c.readBlobRange(ref, d, off, len)).equals(data.subarray(off, off + len)), `${off}+${len}`);
    }
    const past = await c.readBlobRange(ref, d, data.length + 5, 10).catch((e) => e);
    assert.ok(past instanceof RegistryError && past.status === 416, String(past));
    const short = await c.readBlobRange(ref, d, data.length - 5, 10).catch((e) => e);
    assert.ok(short instanceof RegistryError, String(short));
    // A server that ignores Range (200 with the whole blob): sliced while streaming, or refused.
    const proxy = await FaultProxy.start(reg.url);
    try {
      proxy.inject({ match: (r) => !!r.headers.range, fault: { kind: 'ignore-range' }, times: Infinity });
      const via = `${proxy.host}/range/blob`;
      assert.ok((await c.readBlobRange(via, d, 2_000_000, 5000)).equals(data.subarray(2_000_000, 2_005_000)));
      const refused = await c.readBlobRange(via, d, 10, 10, { whenRangeIgnored: 'refuse' }).catch((e) => e);
      assert.match(String(refused), /sent the whole blob \(200\)/);
    } finally {
      await proxy.close();
    }
    // nydus's nydus-backend-proxy (Rust) answers a range with 200 and only the range's bytes, named by
    // Content-Range: taken as the range (nydusd takes it so), also read on from a byte.
    const rustLike = await FaultProxy.start(reg.url);
    try {
      rustLike.inject({ match: (r) => !!r.headers.range, fault: { kind: 'range-as-200' }, times: Infinity });
      const via = `${rustLike.host}/range/blob`;
      for (const [off, len] of [[0, 4096], [2_000_000, 5000], [data.length - 10, 10]]) {
        assert.ok((await c.readBlobRange(via, d, off, len)).equals(data.subarray(off, off + len)), `${off}+${len}`);
      }
      const tail = Buffer.concat(await c.blobStream(via, d, { from: 3_000_000 }).toArray());
      assert.ok(tail.equals(data.subarray(3_000_000)), `read on from a byte: ${tail.length} bytes`);
      assert.ok(rustLike.seen.filter((r) => r.fault === 'range-as-200').length >= 4, 'the answers were 200s');
    } finally {
      await rustLike.close();
    }
  });
});

describe('images made by other tools', () => {
  /** A two-layer OCI layout made by umoci (the second layer deletes a file: a whiteout). */
  function umociLayout(): { layout: string; tag: string } {
    requireTool('umoci', 'umoci');
    const layout = path.join(work, 'oci');
    const bundle = path.join(work, 'bundle');
    const run = (...args: string[]) => execFileSync('umoci', args, { stdio: ['ignore', 'ignore', 'inherit'] });
    run('init', '--layout', layout);
    run('new', '--image', `${layout}:base`);
    run('unpack', '--image', `${layout}:base`, bundle);
    const rootfs = path.join(bundle, 'rootfs');
    fs.mkdirSync(path.join(rootfs, 'etc'));
    fs.writeFileSync(path.join(rootfs, 'etc', 'hello'), 'hello\n');
    fs.writeFileSync(path.join(rootfs, 'big'), prand(2_500_000, 21));
    fs.writeFileSync(path.join(rootfs, 'gone'), 'to be deleted');
    run('repack', '--image', `${layout}:one`, bundle);
    fs.rmSync(bundle, { recursive: true });
    run('unpack', '--image', `${layout}:one`, bundle);
    fs.rmSync(path.join(rootfs, 'gone'));
    fs.writeFileSync(path.join(rootfs, 'etc', 'second'), prand(300_000, 22));
    run('repack', '--image', `${layout}:two`, bundle);
    return { layout, tag: 'two' };
  }

  test('an image pushed by skopeo from a umoci layout (OCI and Docker v2s2) is pulled with every digest verified', async () => {
    requireTool('skopeo', 'skopeo');
    const { layout, tag } = umociLayout();
    const c = client();
    const blobFile = (digest: string) => fs.readFileSync(path.join(layout, 'blobs', 'sha256', digest.slice(7)));
    const index = JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8')) as ImageIndex;
    const entry = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag)!;
    const layoutManifest = JSON.parse(blobFile(entry.digest).toString()) as ImageManifest;
    assert.equal(layoutManifest.layers.length, 2);
    for (const [format, repo, mediaType] of [['oci', 'skopeo/oci', MediaType.ociManifest], ['v2s2', 'skopeo/docker', MediaType.dockerManifest]]) {
      execFileSync('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', '--format', format, `oci:${layout}:${tag}`, `docker://${reg.host}/${repo}:${tag}`], { stdio: ['ignore', 'ignore', 'inherit'] });
      const ref = `${reg.host}/${repo}:${tag}`;
      const { root, images } = await c.resolveImage(ref);
      assert.equal(root.mediaType, mediaType);
      if (format === 'oci') assert.equal(root.digest, entry.digest, 'skopeo keeps the OCI manifest bytes');
      const m = images[0].manifest.json;
      assert.deepEqual(m.layers.map((l) => [l.digest, l.size]), layoutManifest.layers.map((l) => [l.digest, l.size]));
      for (const l of [m.config, ...m.layers]) {
        const pulled = await collect(c.blobStream(ref, l.digest, { size: l.size }));
        assert.ok(pulled.equals(blobFile(l.digest)), `${format} ${l.digest} equals umoci's blob`);
      }
    }
  });

  test('an index with two platforms: one chosen by os/arch, or all', async () => {
    const c = client();
    const repo = `${reg.host}/multi/arch`;
    const amd = await pushImage(c, `${repo}:amd64`, [prand(1000, 31)], { os: 'linux', architecture: 'amd64' });
    const arm = await pushImage(c, `${repo}:arm64`, [prand(1000, 32)], { os: 'linux', architecture: 'arm64' });
    for (const [kind, mediaType, childType] of [['oci', MediaType.ociIndex, MediaType.ociManifest], ['docker', MediaType.dockerManifestList, MediaType.ociManifest]]) {
      const index: ImageIndex = {
        schemaVersion: 2,
        mediaType,
        manifests: [
          { mediaType: childType, digest: amd.digest, size: amd.size, platform: { os: 'linux', architecture: 'amd64' } },
          { mediaType: childType, digest: arm.digest, size: arm.size, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
        ],
      };
      await c.putManifest(`${repo}:${kind}`, index);
      const one = await c.resolveImage(`${repo}:${kind}`, parsePlatform('linux/arm64'));
      assert.equal(one.root.mediaType, mediaType);
      assert.deepEqual(one.images.map((i) => i.manifest.digest), [arm.digest]);
      assert.deepEqual(one.images[0].manifest.json, arm.manifest);
      const all = await c.resolveImage(`${repo}:${kind}`, 'all');
      assert.deepEqual(all.images.map((i) => i.manifest.digest), [amd.digest, arm.digest]);
      const none = await c.resolveImage(`${repo}:${kind}`, parsePlatform('linux/s390x')).catch((e) => e);
      assert.match(String(none), /no image for linux\/s390x \(offers: linux\/amd64, linux\/arm64\/v8\)/);
    }
  });
});

describe('authorization', () => {
  const users = { alice: 'wonder land', bob: 'builder' };
  let basicReg: RegistryServer;
  before(async () => {
    basicReg = await startRegistry({ users });
  });
  after(async () => {
    await basicReg?.stop();
  });

  test('Basic: refused without credentials, works with explicit ones or docker config.json, explicit ones win', async () => {
    const ref = `${basicReg.host}/basic/repo:v1`;
    const data = prand(50_000, 41);
    const anonymous = await client().pushBlob(ref, data).catch((e) => e);
    assert.equal(anonymous.errno, 13);
    assert.match(String(anonymous), /basic\/repo:v1: HEAD \/v2\/basic\/repo\/blobs\/sha256:[0-9a-f]{64}: HTTP 401: needs credentials \(Basic auth\)/);
    const alice = client({ credentials: { username: 'alice', password: 'wonder land' } });
    await pushImage(alice, ref, [data]);
    assert.ok((await alice.getBlob(ref, sha(data))).equals(data));

    const dir = path.join(work, 'docker-config-basic');
    fs.mkdirSync(dir, { recursive: true });
    const writeConfig = (user: string, pass: string) => fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ auths: { [basicReg.host]: { auth: Buffer.from(`${user}:${pass}`).toString('base64') } } }));
    writeConfig('bob', 'builder');
    const env = { DOCKER_CONFIG: dir };
    assert.equal((await client({ dockerConfig: true, env }).getManifest(ref)).mediaType, MediaType.ociManifest);
    writeConfig('bob', 'wrong');
    const refused = await client({ dockerConfig: true, env }).getManifest(ref).catch((e) => e);
    assert.ok(refused instanceof RegistryError && refused.status === 401, String(refused));
    assert.equal(refused.errno, 13);
    assert.equal((await client({ dockerConfig: true, env, credentials: { username: 'bob', password: 'builder' } }).getManifest(ref)).mediaType, MediaType.ociManifest);
  });

  test('Bearer: tokens from the realm, cached per scope, fetched again once when refused', async () => {
    const auth = await TokenAuthProxy.start(reg.url, { users });
    try {
      const ref = `${auth.host}/bearer/repo:v1`;
      const alice = client({ credentials: { username: 'alice', password: 'wonder land' } });
      const layer = prand(120_000, 42);
      const { digest } = await pushImage(alice, ref, [layer]);
      assert.equal(auth.tokenRequests, 1, 'one token serves every push request of one repository');
      assert.deepEqual(auth.tokenRequestScopes[0], ['repository:bearer/repo:pull,push']);
      assert.equal((await alice.getManifest(ref)).digest, digest);
      assert.equal(auth.tokenRequests, 2, 'pull scope is another token');
      await alice.getBlob(ref, sha(layer));
      assert.equal(auth.tokenRequests, 2);

      auth.revokeAll();
      assert.ok((await alice.getBlob(ref, sha(layer))).equals(layer));
      assert.equal(auth.tokenRequests, 3, 'a refused token is replaced once');

      // Cross-repository mount asks for pull on the source too.
      const mounted = await alice.pushBlob(`${auth.host}/bearer/other`, layer, { mountFrom: 'bearer/repo' });
      assert.equal(mounted.how, 'mounted');
      assert.ok(auth.tokenRequestScopes.some((s) => s.includes('repository:bearer/repo:pull') && s.includes('repository:bearer/other:pull,push')));

      // Anonymous pulls work, anonymous pushes are refused with the status.
      const anon = client();
      assert.equal((await anon.getManifest(ref)).digest, digest);
      const tokensBefore = auth.tokenRequests;
      const push = await anon.pushBlob(`${auth.host}/bearer/anon`, Buffer.from('x')).catch((e) => e);
      assert.ok(push instanceof RegistryError && push.status === 401, String(push));
      // HEAD (pull is enough) fetched the push-scope token; POST was refused with it, fetched once more, and gave up.
      assert.equal(auth.tokenRequests - tokensBefore, 2, 'a token that is refused again is not fetched in a loop');
      const bad = await client({ credentials: { username: 'alice', password: 'nope' } }).getManifest(ref).catch((e) => e);
      assert.match(String(bad), /token from http:\/\/127\.0\.0\.1:\d+\/token: HTTP 401, credentials refused/);
    } finally {
      await auth.close();
    }
  });

  test('Bearer: token servers answering access_token', async () => {
    const auth = await TokenAuthProxy.start(reg.url, { users, tokenField: 'access_token', expiresIn: 1 });
    try {
      const c = client({ credentials: { username: 'bob', password: 'builder' } });
      const data = prand(1000, 43);
      await c.pushBlob(`${auth.host}/bearer/access`, data);
      assert.ok((await c.getBlob(`${auth.host}/bearer/access`, sha(data))).equals(data));
      assert.equal(auth.tokenRequests, 2);
    } finally {
      await auth.close();
    }
  });
});

describe('faults between client and registry', () => {
  let proxy: FaultProxy;
  before(async () => {
    proxy = await FaultProxy.start(reg.url);
  });
  after(async () => {
    await proxy?.close();
  });
  const isGet = (what: string) => (r: { method?: string; url?: string }) => r.method === 'GET' && r.url!.includes(what);
  const count = (what: string) => proxy.seen.filter((r) => r.url.includes(what)).length;

  test('5xx and 429 are retried with backoff, up to the limit; 4xx are not', async () => {
    const c = client({ retries: 2 });
    const ref = `${proxy.host}/faults/retry:v1`;
    const { digest } = await pushImage(c, ref, [prand(1000, 51)]);
    proxy.inject({ match: isGet('/faults/retry/manifests/v1'), fault: { kind: 'status', status: 500 }, times: 1 });
    proxy.inject({ match: isGet('/faults/retry/manifests/v1'), fault: { kind: 'status', status: 429, headers: { 'retry-after': '0' } }, times: 1 });
    const before = c.retryCount;
    assert.equal((await c.getManifest(ref)).digest, digest);
    assert.equal(c.retryCount - before, 2);
    proxy.inject({ match: isGet('/faults/retry/manifests/v1'), fault: { kind: 'status', status: 503 }, times: Infinity });
    const seen = count('/faults/retry/manifests/v1');
    const failed = await c.getManifest(ref).catch((e) => e);
    proxy.clearFaults();
    assert.ok(failed instanceof RegistryError, String(failed));
    assert.equal(failed.status, 503);
    assert.match(failed.message, /faults\/retry:v1: GET \/v2\/faults\/retry\/manifests\/v1: HTTP 503/);
    assert.equal(count('/faults/retry/manifests/v1') - seen, 3, 'first attempt and 2 retries');
    const before404 = count('/faults/retry/manifests/nope');
    assert.equal((await c.getManifest(`${proxy.host}/faults/retry:nope`).catch((e) => e)).status, 404);
    assert.equal(count('/faults/retry/manifests/nope') - before404, 1, '404 is not retried');
  });

  test('connection resets: retried before a response, resumed with Range mid-body', async () => {
    const c = client();
    const ref = `${proxy.host}/faults/reset`;
    const data = prand(4 * 1024 * 1024, 52);
    const d = (await c.pushBlob(ref, data)).digest;
    proxy.inject({ match: isGet(`/blobs/${d}`), fault: { kind: 'reset' } });
    assert.ok((await c.getBlob(ref, d)).equals(data));
    proxy.inject({ match: isGet(`/blobs/${d}`), fault: { kind: 'reset-mid-body', after: 1_000_000 } });
    const start = proxy.seen.length;
    assert.ok((await c.getBlob(ref, d, { size: data.length })).equals(data));
    const resumed = proxy.seen.slice(start).filter((r) => r.url.includes(d));
    assert.equal(resumed.length, 2);
    assert.match(String(resumed[1].headers.range), /^bytes=\d+-$/);
    proxy.inject({ match: isGet(`/blobs/${d}`), fault: { kind: 'reset-mid-body', after: 300_000 } });
    assert.ok((await c.readBlobRange(ref, d, 100_000, 1_000_000)).equals(data.subarray(100_000, 1_100_000)));
  });

  test('stalls time out and are retried; a registry that never answers is an error naming the timeout', async () => {
    const c = client({ headersTimeoutMs: 300, bodyTimeoutMs: 300, retries: 1 });
    const ref = `${proxy.host}/faults/stall:v1`;
    const { digest } = await pushImage(c, ref, [prand(1000, 53)]);
    proxy.inject({ match: isGet('/faults/stall/manifests/v1'), fault: { kind: 'stall' } });
    assert.equal((await c.getManifest(ref)).digest, digest);
    proxy.inject({ match: isGet('/faults/stall/manifests/v1'), fault: { kind: 'stall' }, times: Infinity });
    const t0 = Date.now();
    const failed = await c.getManifest(ref).catch((e) => e);
    proxy.clearFaults();
    assert.ok(failed instanceof RegistryError && failed.status === undefined, String(failed));
    assert.match(failed.message, /GET \/v2\/faults\/stall\/manifests\/v1: .*timeout.*\(after 2 attempts\)/i);
    assert.ok(Date.now() - t0 < 5000);
    // A body that goes silent halfway is resumed from where it stopped.
    const layer = prand(2_000_000, 57);
    await c.pushBlob(ref, layer);
    proxy.inject({ match: isGet(`/blobs/${sha(layer)}`), fault: { kind: 'stall-mid-body', after: 700_000 } });
    assert.ok((await c.getBlob(ref, sha(layer), { size: layer.length })).equals(layer));
  });

  test('a corrupted blob body fails the stream at its end, never ends it; a corrupted manifest is refused', async () => {
    const c = client();
    const ref = `${proxy.host}/faults/corrupt:v1`;
    const layer = prand(500_000, 54);
    const { digest } = await pushImage(c, ref, [layer]);
    proxy.inject({ match: isGet(`/blobs/${sha(layer)}`), fault: { kind: 'corrupt-body' } });
    const stream = c.blobStream(ref, sha(layer), { size: layer.length });
    let ended = false;
    let bytes = 0;
    stream.on('end', () => (ended = true));
    const failed = await (async () => {
      for await (const b of stream) bytes += (b as Buffer).length;
    })().catch((e) => e);
    assert.ok(failed instanceof DigestMismatchError, String(failed));
    assert.match(failed.message, new RegExp(`expected ${sha(layer)}, got sha256:`));
    assert.equal(bytes, layer.length, 'the mismatch is known only after the last byte');
    assert.equal(ended, false, "the consumer never sees 'end'");
    proxy.inject({ match: isGet(`/manifests/${digest}`), fault: { kind: 'corrupt-body' } });
    const m = await c.getManifest(`${proxy.host}/faults/corrupt@${digest}`).catch((e) => e);
    assert.ok(m instanceof DigestMismatchError, String(m));
  });

  test('a failed PATCH resumes from what the upload session holds', async () => {
    const c = client({ uploadChunkSize: 100_000 });
    const data = prand(350_000, 55);
    let patches = 0;
    proxy.inject({ match: (r) => r.method === 'PATCH' && ++patches === 2, fault: { kind: 'status', status: 502 } });
    proxy.inject({ match: (r) => r.method === 'PATCH' && patches === 3, fault: { kind: 'reset' } });
    const pushed = await c.pushBlobStream(`${proxy.host}/faults/patch`, Readable.from([data]));
    assert.equal(pushed.digest, sha(data));
    assert.ok((await c.getBlob(`${reg.host}/faults/patch`, sha(data))).equals(data));
    assert.ok(proxy.seen.some((r) => r.method === 'GET' && r.url.includes('/blobs/uploads/')), 'upload status was asked');
  });

  test('a first PATCH that failed before any byte was stored resumes too (the session\'s Range is 0-0, as after one byte)', async () => {
    const c = client({ uploadChunkSize: 100_000 });
    const data = prand(250_000, 57);
    let patches = 0;
    proxy.inject({ match: (r) => r.method === 'PATCH' && ++patches === 1, fault: { kind: 'status', status: 502 } });
    const pushed = await c.pushBlobStream(`${proxy.host}/faults/first-patch`, Readable.from([data]));
    assert.equal(pushed.digest, sha(data));
    assert.ok((await c.getBlob(`${reg.host}/faults/first-patch`, sha(data))).equals(data));
  });

  test('HTTP_PROXY from the environment is used; localhost and loopback addresses bypass it (as Go\'s transport)', async () => {
    const data = prand(2000, 58);
    await client().pushBlob(`${reg.host}/faults/proxied`, data);
    const port = reg.host.split(':').pop();
    // A name only the proxy reaches (it forwards to the registry): the client never resolves it.
    const remote = `registry.proxied.test:${port}`;
    const via = client({ proxyFromEnvironment: true, env: { HTTP_PROXY: proxy.url } });
    const start = proxy.seen.length;
    assert.ok((await via.getBlob(`${remote}/faults/proxied`, sha(data))).equals(data));
    assert.ok(proxy.seen.slice(start).some((r) => r.url === `http://${remote}/v2/faults/proxied/blobs/${sha(data)}`), 'absolute-form request through the proxy');
    // A registry on this machine is never asked through a proxy, NO_PROXY or not (a proxy cannot reach it).
    for (const host of [reg.host, `localhost:${port}`]) {
      const before = proxy.seen.length;
      assert.ok((await via.getBlob(`${host}/faults/proxied`, sha(data))).equals(data), host);
      assert.equal(proxy.seen.length, before, `${host} went straight to the registry`);
    }
    // (A NO_PROXY name is matched by undici's EnvHttpProxyAgent; going straight out to one would need
    // a name this machine resolves other than localhost.)
  });

  test('NO_PROXY: CIDR entries take IP-literal hosts, as Go\'s httpproxy does; loopback and localhost always go straight out', () => {
    const cidrs = cidrsOf('example.com, 10.0.0.0/8 fd00::/8,bad/99,192.168.1.7/32');
    for (const host of ['10.1.2.3', '192.168.1.7', 'fd00::1', '127.0.0.1', '127.9.9.9', '::1', 'localhost', 'LOCALHOST']) assert.ok(bypassesProxy(host, cidrs), host);
    for (const host of ['11.0.0.1', '192.168.1.8', 'fe80::1', 'example.com', 'registry.example.com', '10.0.0.1.example.com']) assert.ok(!bypassesProxy(host, cidrs), host);
  });

  test('destroy aborts a request in flight', async () => {
    const c = client();
    const ref = `${proxy.host}/faults/abort:v1`;
    await pushImage(c, ref, [prand(100, 59)]);
    proxy.inject({ match: isGet('/faults/abort/manifests/v1'), fault: { kind: 'stall' } });
    const pending = c.getManifest(ref).catch((e) => e);
    await new Promise((r) => setTimeout(r, 100));
    const t0 = Date.now();
    await c.destroy();
    const failed = await pending;
    assert.ok(failed instanceof RegistryError, String(failed));
    assert.match(failed.message, /aborted: the client was destroyed/);
    assert.ok(Date.now() - t0 < 2000, 'at once, not after a timeout');
  });

  test('insecure falls back to http for a registry without TLS; without it the TLS failure is an error', async () => {
    const data = prand(1000, 56);
    await client().pushBlob(`${reg.host}/faults/insecure`, data);
    const insecure = client({ plainHttp: false, insecure: true });
    assert.ok((await insecure.getBlob(`${reg.host}/faults/insecure`, sha(data))).equals(data));
    const strict = await client({ plainHttp: false, retries: 0 }).getBlob(`${reg.host}/faults/insecure`, sha(data)).catch((e) => e);
    assert.ok(strict instanceof RegistryError && strict.status === undefined, String(strict));
  });
});

describe('redirects to blob storage', () => {
  test('a 307 to another host is followed without the registry Authorization header', async () => {
    const users = { carol: 'pw' };
    const basic = await startRegistry({ users });
    const credentials = { username: 'carol', password: 'pw' };
    const registryAuth = `Basic ${Buffer.from('carol:pw').toString('base64')}`;
    const front = await FaultProxy.start(basic.url);
    // The "storage host" on another address serves blobs with its own access to the registry.
    const storage = await FaultProxy.start(basic.url, { listenHost: '127.0.0.2', upstreamAuthorization: registryAuth });
    try {
      const c = client({ credentials });
      const ref = `${front.host}/redirect/blob`;
      const data = prand(800_000, 61);
      await c.pushBlob(ref, data);
      const toStorage = (r: { method?: string; url?: string }) => r.method === 'GET' && r.url!.includes('/blobs/sha256:');
      front.inject({ match: toStorage, fault: { kind: 'redirect', to: storage.url }, times: Infinity });
      assert.ok((await c.getBlob(ref, sha(data))).equals(data));
      assert.ok((await c.readBlobRange(ref, sha(data), 1000, 5000)).equals(data.subarray(1000, 6000)));
      assert.equal(storage.seen.length, 2);
      for (const r of storage.seen) assert.equal(r.headers.authorization, undefined, `no credentials leak to ${storage.host}`);
      assert.equal(storage.seen[1].headers.range, 'bytes=1000-5999', 'the Range survives the redirect');
      assert.ok(front.seen.filter(toStorage).every((r) => r.headers.authorization === registryAuth), 'the registry itself got them');
    } finally {
      await storage.close();
      await front.close();
      await basic.stop();
    }
  });
});

describe('upload Locations on another host', () => {
  test('an upload session on another host gets no credentials of the registry\'s', async () => {
    const users = { erin: 'pw' };
    const basic = await startRegistry({ users });
    const registryAuth = `Basic ${Buffer.from('erin:pw').toString('base64')}`;
    // The other host completes the upload with its own access to the registry (as a registry behind
    // a load balancer that names a node of its own would).
    const node = await FaultProxy.start(basic.url, { listenHost: '127.0.0.2', upstreamAuthorization: registryAuth });
    const front = await FaultProxy.start(basic.url, { locationsTo: node.url });
    try {
      const c = client({ credentials: { username: 'erin', password: 'pw' }, uploadChunkSize: 100_000 });
      const data = prand(250_000, 63);
      assert.equal((await c.pushBlobStream(`${front.host}/upload/elsewhere`, Readable.from([data]))).how, 'uploaded');
      assert.ok((await c.getBlob(`${front.host}/upload/elsewhere`, sha(data))).equals(data));
      assert.ok(node.seen.length >= 2, `the upload went on at ${node.host}`);
      for (const r of node.seen) assert.equal(r.headers.authorization, undefined, `no credentials leak to ${node.host} (${r.method} ${r.url})`);
      assert.ok(front.seen.some((r) => r.method === 'POST' && r.headers.authorization === registryAuth), 'the registry itself got them');
    } finally {
      await front.close();
      await node.close();
      await basic.stop();
    }
  });
});

describe('redirects of manifest requests', () => {
  test('a 307 for a manifest GET and HEAD (as registry.k8s.io answers every one) is followed, without the registry Authorization header', async () => {
    const users = { dave: 'pw' };
    const basic = await startRegistry({ users });
    const credentials = { username: 'dave', password: 'pw' };
    const registryAuth = `Basic ${Buffer.from('dave:pw').toString('base64')}`;
    const front = await FaultProxy.start(basic.url);
    const mirror = await FaultProxy.start(basic.url, { listenHost: '127.0.0.2', upstreamAuthorization: registryAuth });
    try {
      const c = client({ credentials });
      const ref = `${front.host}/redirect/manifest:v1`;
      const { digest, manifest } = await pushImage(c, ref, [prand(5000, 62)]);
      const toMirror = (r: { method?: string; url?: string }) => (r.method === 'GET' || r.method === 'HEAD') && r.url!.includes('/manifests/');
      front.inject({ match: toMirror, fault: { kind: 'redirect', to: mirror.url }, times: Infinity });
      const got = await c.getManifest(ref);
      assert.equal(got.digest, digest);
      assert.deepEqual(got.json, manifest);
      assert.deepEqual(await c.headManifest(ref), { digest, size: got.size, mediaType: MediaType.ociManifest });
      assert.deepEqual(mirror.seen.map((r) => r.method), ['GET', 'HEAD'], 'both were answered by the mirror');
      for (const r of mirror.seen) assert.equal(r.headers.authorization, undefined, `no credentials leak to ${mirror.host}`);
    } finally {
      await mirror.close();
      await front.close();
      await basic.stop();
    }
  });
});

describe('TLS', () => {
  test('insecure skips verification of a self-signed registry; otherwise the certificate is refused', async () => {
    const tlsReg = await startRegistry({ tls: true });
    try {
      const ref = `${tlsReg.host}/tls/repo`;
      const insecure = client({ plainHttp: false, insecure: true });
      const data = prand(10_000, 71);
      assert.equal((await insecure.pushBlob(ref, data)).how, 'uploaded');
      assert.ok((await insecure.getBlob(ref, sha(data))).equals(data));
      const strict = await client({ plainHttp: false }).getBlob(ref, sha(data)).catch((e) => e);
      assert.ok(strict instanceof RegistryError && strict.status === undefined, String(strict));
      assert.match(strict.message, /self[- ]signed certificate/);
      const plain = await client({ plainHttp: true }).getBlob(ref, sha(data)).catch((e) => e);
      assert.ok(plain instanceof RegistryError && plain.status === 400, String(plain));
    } finally {
      await tlsReg.stop();
    }
  });
});
