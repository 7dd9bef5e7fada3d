/**
 * nydusify convert and check against a real registry (distribution), on an image made by umoci and
 * pushed by skopeo: the pushed manifest and config have nydus's shapes, check passes on the converted
 * image and lists differences against another image, and a conversion failing on its way leaves no tag.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import crypto from 'node:crypto';
import { execFileSync, spawn } from 'node:child_process';
import { RegistryClient, MediaType, type ImageManifest } from '../src/registry/index.ts';
import { repoRoot } from './helpers/cli.ts';
import { tmpDir } from './helpers/fixtures.ts';
import { startRegistry, type RegistryServer } from './helpers/registry.ts';
import { FaultProxy } from './helpers/registry-proxy.ts';
import { skopeoPush, umociTwoLayerImage } from './helpers/oci-image.ts';

const work = tmpDir('nydusify');
let reg: RegistryServer;
const client = new RegistryClient({ plainHttp: true });

/** Runs a CLI without blocking this process (the fault proxy lives in it); `env` is added to this process's. */
function run(name: string, args: string[], input = '', env: Record<string, string> = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(repoRoot, 'bin', name), args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(input);
  });
}

async function mustConvert(args: string[], input = ''): Promise<void> {
  const r = await run('nydusify', ['convert', '--plain-http', '--work-dir', path.join(work, 'tmp'), ...args], input);
  assert.equal(r.status, 0, `nydusify convert ${args.join(' ')}: ${r.stderr}`);
}

const sha256 = (b: Buffer) => `sha256:${crypto.createHash('sha256').update(b).digest('hex')}`;

before(async () => {
  reg = await startRegistry();
  const { layout } = umociTwoLayerImage(work);
  skopeoPush(layout, 'one', `${reg.host}/src:one`);
  skopeoPush(layout, 'two', `${reg.host}/src:two`);
  skopeoPush(layout, 'two', `${reg.host}/src:docker`, 'v2s2');
  await mustConvert(['--source', `${reg.host}/src:two`, '--target', `${reg.host}/dst:two-nydus`, '--output-json', path.join(work, 'out.json')]);
});

after(async () => {
  await client.close();
  await reg?.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

test('the pushed manifest and config are what nydus expects: blob layers, the bootstrap layer, diff_ids, history', async () => {
  const src = (await client.getManifest(`${reg.host}/src:two`)).json as ImageManifest;
  const got = await client.getManifest(`${reg.host}/dst:two-nydus`);
  assert.equal(got.mediaType, MediaType.ociManifest);
  const m = got.json as ImageManifest;
  assert.equal(m.layers.length, src.layers.length + 1, 'one blob per layer, then the bootstrap');
  for (const l of m.layers.slice(0, -1)) {
    assert.equal(l.mediaType, 'application/vnd.oci.image.layer.nydus.blob.v1');
    assert.deepEqual(l.annotations, { 'containerd.io/snapshot/nydus-blob': 'true' });
    const blob = await client.getBlob(`${reg.host}/dst`, l.digest);
    assert.equal(blob.length, l.size);
  }
  const boot = m.layers[m.layers.length - 1];
  assert.equal(boot.mediaType, MediaType.ociLayerGzip);
  assert.deepEqual(boot.annotations, { 'containerd.io/snapshot/nydus-bootstrap': 'true', 'containerd.io/snapshot/nydus-fs-version': '6' });
  // GNU tar reads the bootstrap layer: image/ and image/image.boot.
  const gz = await client.getBlob(`${reg.host}/dst`, boot.digest);
  const gzFile = path.join(work, 'boot.tar.gz');
  fs.writeFileSync(gzFile, gz);
  assert.deepEqual(execFileSync('tar', ['-tzf', gzFile], { encoding: 'utf8' }).trim().split('\n'), ['image/', 'image/image.boot']);
  const bootstrap = execFileSync('tar', ['-xzOf', gzFile, 'image/image.boot']);
  assert.equal(bootstrap.readUInt32LE(1024), 0xe0f5e1e2, 'an EROFS superblock at 1024');
  // Without --prefetch-patterns the prefetch table holds the root, as nydusify's default pattern "/".
  const bootFile = path.join(work, 'two-nydus.boot');
  fs.writeFileSync(bootFile, bootstrap);
  const prefetch = JSON.parse(execFileSync(path.join(repoRoot, 'bin', 'nydus-image'), ['inspect', '-B', bootFile, '-R', 'prefetch'], { encoding: 'utf8' }));
  assert.deepEqual(prefetch.map((e: { path: string[] }) => e.path), [['/']]);

  const config = JSON.parse((await client.getBlob(`${reg.host}/dst`, m.config.digest)).toString());
  const srcConfig = JSON.parse((await client.getBlob(`${reg.host}/src`, src.config.digest)).toString());
  assert.equal(m.config.mediaType, src.config.mediaType);
  assert.deepEqual(config.rootfs, { type: 'layers', diff_ids: [...m.layers.slice(0, -1).map((l) => l.digest), sha256(zlib.gunzipSync(gz))] });
  assert.deepEqual(config.history, [...(srcConfig.history ?? []), { created_by: 'Nydus Converter', comment: 'Nydus Bootstrap Layer' }]);
  assert.equal(config.architecture, srcConfig.architecture);
  assert.deepEqual(config.config, srcConfig.config);

  const report = JSON.parse(fs.readFileSync(path.join(work, 'out.json'), 'utf8'));
  assert.equal(report.targetDigest, got.digest);
  assert.deepEqual(report.images[0].layers, m.layers);
  // nydusify's own keys (acceleration-service's converter.Metric): sizes of config and layers, times in ns.
  const size = (x: ImageManifest) => x.config.size + x.layers.reduce((n, l) => n + l.size, 0);
  assert.equal(report.SourceImageSize, size(src));
  assert.equal(report.TargetImageSize, size(m));
  for (const k of ['SourcePullElapsed', 'ConversionElapsed', 'TargetPushElapsed']) assert.ok(Number.isSafeInteger(report[k]) && report[k] > 0, `${k} ${report[k]}`);
  assert.ok(report.ConversionElapsed > 1e6, 'the conversion took more than a millisecond: nanoseconds');
  assert.ok(!fs.existsSync(path.join(work, 'tmp')), 'the --work-dir the conversion made is gone with it, as nydusify\'s');
});

test('nydusify check passes on the converted image and lists the differences against another image', async () => {
  const base = ['check', '--plain-http', '--work-dir', path.join(work, 'check')];
  fs.mkdirSync(path.join(work, 'check'), { recursive: true });
  const ok = await run('nydusify', [...base, '--source', `${reg.host}/src:two`, '--target', `${reg.host}/dst:two-nydus`]);
  assert.equal(ok.status, 0, ok.stderr);
  assert.deepEqual(fs.readdirSync(path.join(work, 'check')), [], 'a --work-dir that was there stays, emptied');
  assert.match(ok.stderr, /same file tree/);

  const bad = await run('nydusify', [...base, '--source', `${reg.host}/src:one`, '--target', `${reg.host}/dst:two-nydus`]);
  assert.equal(bad.status, 1);
  const lines = bad.stdout.trim().split('\n');
  for (const want of ['missing /gone', 'missing /gonedir', 'missing /gonedir/sub/f', 'extra /h1', 'extra /d/h3']) assert.ok(lines.includes(want), `${want} in ${bad.stdout}`);
  assert.ok(lines.some((l) => l.startsWith('differs /etc/hello:')), bad.stdout);
  assert.match(bad.stderr, /problem\(s\) found/);

  // An OCI image is not a Nydus image: its layers are named.
  const oci = await run('nydusify', [...base, '--target', `${reg.host}/src:two`]);
  assert.equal(oci.status, 1);
  assert.match(oci.stdout, /is not annotated containerd\.io\/snapshot\/nydus-bootstrap/);
  assert.match(oci.stdout, /layer 0 sha256:[0-9a-f]{64} is not a Nydus blob/);
});

test('nydusify check of an image whose bootstrap names a blob its manifest lacks stops with one problem naming the blob', async () => {
  // The converted image with its first blob layer (and that layer's diff_id) taken out: otherwise well formed.
  const m = (await client.getManifest(`${reg.host}/dst:two-nydus`)).json as ImageManifest;
  const config = JSON.parse((await client.getBlob(`${reg.host}/dst`, m.config.digest)).toString('utf8'));
  config.rootfs.diff_ids = config.rootfs.diff_ids.slice(1);
  const configBytes = Buffer.from(JSON.stringify(config));
  const pushed = await client.pushBlob(`${reg.host}/dst`, configBytes);
  const lost = m.layers[0].digest;
  await client.putManifest(`${reg.host}/dst:lost-blob`, { ...m, config: { ...m.config, digest: pushed.digest, size: configBytes.length }, layers: m.layers.slice(1) });
  const base = ['check', '--plain-http', '--work-dir', path.join(work, 'check'), '--target', `${reg.host}/dst:lost-blob`];
  for (const args of [base, [...base, '--source', `${reg.host}/src:two`]]) {
    const r = await run('nydusify', args);
    assert.equal(r.status, 1, r.stderr);
    assert.equal(r.stdout, `the bootstrap image/image.boot names 1 blob missing from the manifest's layers: ${lost}\n`);
    assert.match(r.stderr, /1 problem\(s\) found/);
  }
});

test('--compressor none, --fs-chunk-size and --prefetch-patterns (stdin) reach the image, which checks equal', async () => {
  await mustConvert(['--source', `${reg.host}/src:two`, '--target', `${reg.host}/dst:none`, '--compressor', 'none', '--fs-chunk-size', '0x10000', '--prefetch-patterns'], '/big\n/etc/hello\n');
  const r = await run('nydusify', ['check', '--plain-http', '--work-dir', path.join(work, 'check'), '--source', `${reg.host}/src:two`, '--target', `${reg.host}/dst:none`]);
  assert.equal(r.status, 0, r.stderr);
  const m = (await client.getManifest(`${reg.host}/dst:none`)).json as ImageManifest;
  const gz = await client.getBlob(`${reg.host}/dst`, m.layers[m.layers.length - 1].digest);
  const boot = path.join(work, 'none.boot');
  fs.writeFileSync(boot, execFileSync('tar', ['-xO', 'image/image.boot'], { input: zlib.gunzipSync(gz) }));
  const prefetch = JSON.parse(execFileSync(path.join(repoRoot, 'bin', 'nydus-image'), ['inspect', '-B', boot, '-R', 'prefetch'], { encoding: 'utf8' }));
  assert.deepEqual(prefetch.map((e: { path: string[] }) => e.path), [['/big'], ['/etc/hello']]);
});

test("upstream's environment variables alone convert (SOURCE, TARGET, PLAIN_HTTP, COMPRESSOR, FS_CHUNK_SIZE, WORK_DIR, OUTPUT_JSON) as the flags do", async () => {
  const flags = ['--source', `${reg.host}/src:two`, '--target', `${reg.host}/dst:flags`, '--compressor', 'none', '--fs-chunk-size', '0x10000'];
  await mustConvert(flags);
  const envWork = path.join(work, 'env-work');
  const report = path.join(work, 'env.json');
  const r = await run('nydusify', ['convert'], '', {
    SOURCE: `${reg.host}/src:two`, TARGET: `${reg.host}/dst:env`, PLAIN_HTTP: 'true', COMPRESSOR: 'none', FS_CHUNK_SIZE: '0x10000',
    WORK_DIR: envWork, OUTPUT_JSON: report,
  });
  assert.equal(r.status, 0, r.stderr);
  const byEnv = await client.getManifest(`${reg.host}/dst:env`);
  assert.equal(JSON.parse(fs.readFileSync(report, 'utf8')).targetDigest, byEnv.digest);
  assert.ok(!fs.existsSync(envWork), 'WORK_DIR made and removed with the conversion, as nydusify removes a work dir it made');
  // The bootstrap says which chunk size and compressor the image was built with.
  const built = async (tag: string) => {
    const m = (await client.getManifest(`${reg.host}/dst:${tag}`)).json as ImageManifest;
    const gz = await client.getBlob(`${reg.host}/dst`, m.layers[m.layers.length - 1].digest);
    const boot = path.join(work, `${tag}.boot`);
    fs.writeFileSync(boot, execFileSync('tar', ['-xO', 'image/image.boot'], { input: zlib.gunzipSync(gz) }));
    const inspect = (request: string) => JSON.parse(execFileSync(path.join(repoRoot, 'bin', 'nydus-image'), ['inspect', '-B', boot, '-R', request], { encoding: 'utf8' }));
    const stats = inspect('stats');
    return { chunkSize: stats.superblock.chunk_size, compressors: stats.blobs.map((b: { compressor: unknown }) => b.compressor), layers: m.layers.length };
  };
  const envBuilt = await built('env');
  assert.equal(envBuilt.chunkSize, 0x10000);
  assert.deepEqual(envBuilt, await built('flags'), 'as built by the flags');
  assert.notDeepEqual(envBuilt.compressors, (await built('two-nydus')).compressors, 'not the default compressor');
});

test('a conversion failing on the manifest PUT, a blob upload or a layer download leaves no tag and no files', async () => {
  const proxy = await FaultProxy.start(reg.url);
  try {
    for (const [what, match] of [
      ['manifest PUT', (req: { method?: string; url?: string }) => req.method === 'PUT' && /\/manifests\//.test(req.url!)],
      ['blob upload', (req: { method?: string; url?: string }) => (req.method === 'PUT' || req.method === 'PATCH') && /\/blobs\/uploads\//.test(req.url!)],
    ] as const) {
      proxy.clearFaults();
      proxy.inject({ match: match as never, fault: { kind: 'status', status: 500 }, times: Infinity });
      // A repository of its own each: the output is reproducible, and blobs the first left behind
      // would be found there by the second, which would upload nothing.
      const target = what === 'manifest PUT' ? 'failed-manifest:fail' : 'failed-blob:fail';
      const r = await run('nydusify', ['convert', '--plain-http', '--work-dir', path.join(work, 'tmp'), '--source', `${reg.host}/src:two`, '--target', `${proxy.host}/${target}`]);
      assert.equal(r.status, 1, `${what}: ${r.stderr}`);
      assert.match(r.stderr, /nydusify: error: .*HTTP 500/, what);
      assert.equal(await client.headManifest(`${reg.host}/${target}`), undefined, `${what}: no tag`);
    }
    // A source layer that cannot be read: the error names the layer, nothing is tagged.
    proxy.clearFaults();
    proxy.inject({ match: (req) => req.method === 'GET' && /\/blobs\/sha256:/.test(req.url!), fault: { kind: 'reset-mid-body', after: 1000 }, times: Infinity });
    const r = await run('nydusify', ['convert', '--plain-http', '--work-dir', path.join(work, 'tmp'), '--source', `${proxy.host}/src:two`, '--target', `${reg.host}/failed:fail-source`]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /nydusify: error: .*sha256:[0-9a-f]{64}/);
    assert.equal(await client.headManifest(`${reg.host}/failed:fail-source`), undefined);
  } finally {
    await proxy.close();
  }
  // Nothing is left of the work dir (made by the conversions, removed with them).
  assert.ok(!fs.existsSync(path.join(work, 'tmp')));
});

test('flags nydus-ts does not implement are refused by name; bad values are errors', async () => {
  const base = ['convert', '--plain-http', '--source', `${reg.host}/src:two`, '--target', `${reg.host}/x:y`];
  for (const [args, pattern] of [
    [['--backend-type', 'oss'], /--backend-type is not supported by nydus-ts nydusify convert/],
    [['--merge-platform'], /--merge-platform is not supported/],
    [['--fs-version', '5'], /unsupported fs version "5"/],
    [['--compressor', 'gzip'], /unsupported compressor "gzip"/],
    [['--fs-chunk-size', '0x3000'], /invalid chunk size/],
    [['--platform', 'linux'], /platform must be os\/arch/],
  ] as const) {
    const r = await run('nydusify', [...base, ...args]);
    assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, pattern);
  }
  assert.equal(await client.headManifest(`${reg.host}/x:y`), undefined);
});

test('an index: --all-platforms converts each platform into a Nydus index, --platform picks one image', async () => {
  // The umoci images as two platforms of one index.
  const one = await client.getManifest(`${reg.host}/src:one`);
  const two = await client.getManifest(`${reg.host}/src:two`);
  await client.putManifest(`${reg.host}/src:multi`, {
    schemaVersion: 2, mediaType: MediaType.ociIndex,
    manifests: [
      { mediaType: one.mediaType, digest: one.digest, size: one.size, platform: { os: 'linux', architecture: 'arm64' } },
      { mediaType: two.mediaType, digest: two.digest, size: two.size, platform: { os: 'linux', architecture: 'amd64' } },
    ],
  }, MediaType.ociIndex);

  await mustConvert(['--source', `${reg.host}/src:multi`, '--target', `${reg.host}/dst:multi`, '--all-platforms']);
  const idx = await client.getManifest(`${reg.host}/dst:multi`);
  assert.equal(idx.mediaType, MediaType.ociIndex);
  const entries = (idx.json as { manifests: Array<{ digest: string; platform?: { architecture: string } }> }).manifests;
  assert.deepEqual(entries.map((e) => e.platform?.architecture), ['arm64', 'amd64']);
  for (const [i, e] of entries.entries()) {
    const m = (await client.getManifest(`${reg.host}/dst@${e.digest}`)).json as ImageManifest;
    const src = ((i === 0 ? one : two).json as ImageManifest);
    assert.equal(m.layers.length, src.layers.length + 1);
    assert.equal(m.layers[m.layers.length - 1].annotations?.['containerd.io/snapshot/nydus-bootstrap'], 'true');
  }
  for (const arch of ['arm64', 'amd64']) {
    const r = await run('nydusify', ['check', '--plain-http', '--work-dir', path.join(work, 'check'), '--platform', `linux/${arch}`, '--source', `${reg.host}/src:multi`, '--target', `${reg.host}/dst:multi`]);
    assert.equal(r.status, 0, `${arch}: ${r.stdout}${r.stderr}`);
  }

  // nydusify's comma-separated list: those platforms' images, in the source index's order.
  await mustConvert(['--source', `${reg.host}/src:multi`, '--target', `${reg.host}/dst:list`, '--platform', 'linux/amd64,linux/arm64']);
  const list = await client.getManifest(`${reg.host}/dst:list`);
  assert.equal(list.mediaType, MediaType.ociIndex);
  const listed = (list.json as { manifests: Array<{ platform?: { architecture: string } }> }).manifests;
  assert.deepEqual(listed.map((e) => e.platform?.architecture), ['arm64', 'amd64']);
  for (const [arch, source] of [['arm64', 'one'], ['amd64', 'two']]) {
    const r = await run('nydusify', ['check', '--plain-http', '--work-dir', path.join(work, 'check'), '--platform', `linux/${arch}`, '--source', `${reg.host}/src:${source}`, '--target', `${reg.host}/dst:list`]);
    assert.equal(r.status, 0, `${arch}: ${r.stdout}${r.stderr}`);
  }
  // A platform the index lacks is left out with a warning; none of them offered is an error, and no tag.
  const partial = await run('nydusify', ['convert', '--plain-http', '--work-dir', path.join(work, 'tmp'), '--source', `${reg.host}/src:multi`, '--target', `${reg.host}/dst:partial`, '--platform', 'linux/s390x,linux/amd64']);
  assert.equal(partial.status, 0, partial.stderr);
  assert.match(partial.stderr, /"missing":\["linux\/s390x"\].*left out/);
  assert.equal((await client.getManifest(`${reg.host}/dst:partial`)).mediaType, MediaType.ociManifest, 'one platform converted: its manifest');
  const partialCheck = await run('nydusify', ['check', '--plain-http', '--work-dir', path.join(work, 'check'), '--source', `${reg.host}/src:two`, '--target', `${reg.host}/dst:partial`]);
  assert.equal(partialCheck.status, 0, `the amd64 image: ${partialCheck.stdout}${partialCheck.stderr}`);
  const none = await run('nydusify', ['convert', '--plain-http', '--work-dir', path.join(work, 'tmp'), '--source', `${reg.host}/src:multi`, '--target', `${reg.host}/dst:none-of-them`, '--platform', 'linux/s390x,linux/ppc64le']);
  assert.equal(none.status, 1, none.stderr);
  assert.match(none.stderr, /nydusify: error: source .*src:multi has no image for platform linux\/s390x,linux\/ppc64le \(offers: linux\/arm64, linux\/amd64\)\n$/);
  assert.equal(await client.headManifest(`${reg.host}/dst:none-of-them`), undefined);

  await mustConvert(['--source', `${reg.host}/src:multi`, '--target', `${reg.host}/dst:arm64`, '--platform', 'linux/arm64']);
  const single = await client.getManifest(`${reg.host}/dst:arm64`);
  assert.equal(single.mediaType, MediaType.ociManifest, 'one platform of an index: its manifest, as nydusify does');
  const r = await run('nydusify', ['check', '--plain-http', '--work-dir', path.join(work, 'check'), '--source', `${reg.host}/src:one`, '--target', `${reg.host}/dst:arm64`]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

test('a Docker schema 2 source gives a Docker manifest: Docker config and gzip layer types, Nydus blobs', async () => {
  await mustConvert(['--source', `${reg.host}/src:docker`, '--target', `${reg.host}/dst:docker`]);
  const got = await client.getManifest(`${reg.host}/dst:docker`);
  assert.equal(got.mediaType, MediaType.dockerManifest);
  const m = got.json as ImageManifest;
  assert.equal(m.config.mediaType, MediaType.dockerConfig);
  assert.deepEqual(m.layers.map((l) => l.mediaType), [MediaType.nydusBlob, MediaType.nydusBlob, MediaType.dockerLayerGzip]);
  const r = await run('nydusify', ['check', '--plain-http', '--work-dir', path.join(work, 'check'), '--source', `${reg.host}/src:docker`, '--target', `${reg.host}/dst:docker`]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

test('on a terminal each layer shows a progress line (bytes, rate, state) instead of the info logs', async () => {
  // util-linux's script gives the command a pseudo-terminal.
  const cmd = [path.join(repoRoot, 'bin', 'nydusify'), 'convert', '--plain-http', '--work-dir', path.join(work, 'tmp'), '--source', `${reg.host}/src:two`, '--target', `${reg.host}/dst:tty`].join(' ');
  const out = await new Promise<string>((resolve, reject) => {
    const child = spawn('script', ['-qec', cmd, '/dev/null'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let text = '';
    child.stdout.on('data', (d) => (text += d));
    child.on('error', reject);
    child.on('close', (status) => (status === 0 ? resolve(text) : reject(new Error(`script exited ${status}: ${text}`))));
  });
  for (const n of [1, 2]) assert.match(out, new RegExp(`layer ${n} [0-9a-f]{12}: [0-9.]+ MiB / [0-9.]+ MiB, [0-9.]+ MiB/s, done, blob (uploaded|exists)`));
  assert.doesNotMatch(out, /"level":30/, 'no info logs on a terminal');
  assert.ok(await client.headManifest(`${reg.host}/dst:tty`));
});
