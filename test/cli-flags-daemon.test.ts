/**
 * Flags of nydusctl and nydusd that must work or be refused, never be dropped: nydusctl's --id and
 * --blob-id of each metrics type against the daemon's API (an id no image has is a 404 naming it, an
 * image is never given the daemon's figures), nydusd's thread counts (nydus's thread_validator),
 * fscache mode's flags with --fanotify, and a v1 FUSE-mode config's `amplify_io`.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type http from 'node:http';
import { execFile, spawn } from 'node:child_process';
import pino from 'pino';
import { createImage } from '../src/builder/create.ts';
import { ImageRegistry } from '../src/daemon/daemon.ts';
import { DaemonState } from '../src/daemon/state.ts';
import { OnDemandSession } from '../src/daemon/frontend/cachefiles.ts';
import { startApi } from '../src/daemon/api.ts';
import { AMPLIFY_IO_DEFAULT, entryBodyFromFsConfig, parseBlobCacheEntry } from '../src/daemon/config.ts';
import { FakePort, waitFor } from './helpers/cachefiles-port.ts';
import { apiRequest as api, blobCacheEntry } from './helpers/api-client.ts';
import { prand, tmpDir } from './helpers/fixtures.ts';
import { repoRoot } from './helpers/cli.ts';

const work = tmpDir('cli-flags');
const log = pino({ level: 'silent' });
let boot: string;
let blobDir: string;
let blobId: string;

before(() => {
  const src = path.join(work, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'a'), prand(300000, 7));
  blobDir = path.join(work, 'blobs');
  boot = path.join(work, 'img.boot');
  blobId = createImage({ source: src, bootstrap: boot, blobDir, chunkSize: 0x40000, compressor: 'zstd', digester: 'blake3' }).blob!.blobId;
});

const cleanup: Array<() => unknown> = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
  fs.rmSync(work, { recursive: true, force: true });
});

/** nydusctl as a child process (asynchronous: this process serves the API it asks). */
function nydusctl(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(path.join(repoRoot, 'bin/nydusctl'), args, { encoding: 'utf8' }, (e, out, err) => resolve({ code: e ? (e.code as number) : 0, out, err }));
  });
}

/** nydusd, run to its refusal (every case here stops before a daemon would start); several run at once. */
function nydusd(...args: string[]): Promise<{ status: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(path.join(repoRoot, 'bin/nydusd'), args, { encoding: 'utf8', timeout: 60_000 }, (e, _out, stderr) => resolve({ status: e ? (e.code as number) : 0, stderr }));
  });
}

/** A daemon with two images of the same blob, `img1` read (one chunk), `img2` never read. */
async function daemonWithTwoImages(): Promise<string> {
  const state = new DaemonState(path.join(work, 'state'));
  const registry = new ImageRegistry(state, log);
  const sock = path.join(work, 'api.sock');
  const server: http.Server = await startApi(sock, { id: 'd', registry, state, lifecycle: null, log });
  cleanup.push(() => state.close(), () => registry.close(), () => server.close());
  for (const id of ['img1', 'img2']) await registry.add(blobCacheEntry(id, { bootstrap: boot, blobDir, workDir: work }));
  const port = new FakePort();
  const session = new OnDemandSession(port, registry, state, log, 2);
  session.handle({ type: 'open', msgId: 1, objectId: 1, volumeKey: 'erofs,img1', cookieKey: blobId, fd: port.give(60), flags: 0 });
  session.handle({ type: 'read', msgId: 2, objectId: 1, offset: 0, len: 4096 });
  await waitFor(() => session.inflight().length === 0 && state.cacheFilesOf(blobId).length > 0, 'the read of img1');
  return sock;
}

test('nydusctl metrics: --id and --blob-id reach the daemon or are refused; an unknown id is a 404 naming it, never daemon-wide figures', async () => {
  const sock = await daemonWithTwoImages();
  const ctl = (...args: string[]) => nydusctl('--sock', sock, 'metrics', ...args);
  const backendAll = JSON.parse((await ctl('backend', '--raw')).out);
  assert.ok(backendAll.read_count > 0, 'the daemon-wide backend counters count img1\'s read');

  const [backendNope, backendImg1, backendImg2, backendBlob, blobNope, imageNope, slashImg1, img1, img2, img1Blob, img1OtherBlob, blobOnly, noFlags] = await Promise.all([
    ctl('backend', '--id', 'nope'),
    ctl('backend', '--id', 'img1', '--raw'),
    ctl('backend', '--id', 'img2', '--raw'),
    ctl('backend', '--blob-id', blobId),
    ctl('blobcache', '--blob-id', 'nope'),
    ctl('blobcache', '--id', 'nope'),
    ctl('blobcache', '--id', '/img1', '--raw'),
    ctl('blobcache', '--id', 'img1', '--raw'),
    ctl('blobcache', '--id', 'img2', '--raw'),
    ctl('blobcache', '--id', 'img1', '--blob-id', blobId, '--raw'),
    ctl('blobcache', '--id', 'img1', '--blob-id', 'f'.repeat(64)),
    ctl('blobcache', '--blob-id', blobId, '--raw'),
    ctl('blobcache'),
  ]);
  // backend: nydus's ?id=, the image's own counters: img1 made every read, img2 none (the daemon's are never given as its).
  assert.deepEqual([backendNope.code, backendNope.out], [1, '']);
  assert.match(backendNope.err, /^nydusctl: error: \/api\/v1\/metrics\/backend\?id=nope: 404 no image "nope"/);
  assert.equal(backendImg1.code, 0, backendImg1.err);
  assert.equal(backendImg2.code, 0, backendImg2.err);
  const [own1, own2] = [JSON.parse(backendImg1.out), JSON.parse(backendImg2.out)];
  assert.deepEqual([own1.id, own1.backend_type, own2.id, own2.backend_type], ['img1', 'localfs', 'img2', 'localfs']);
  assert.deepEqual([own1.read_count, own1.read_amount_total, own1.read_errors], [backendAll.read_count, backendAll.read_amount_total, 0], 'img1\'s counters are every read the daemon made');
  assert.deepEqual([own2.read_count, own2.read_amount_total, own2.read_latency_dist.reduce((a: number, b: number) => a + b, 0)], [0, 0, 0], 'img2 read nothing');
  // nydus's BackendMetrics keys, which upstream nydusctl indexes (read_cumulative_latency_millis_dist,
  // read_count_block_size_dist: one entry per request size class, 8 of them), for the daemon and an image.
  const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
  for (const m of [backendAll, own1, own2]) {
    assert.deepEqual([m.read_cumulative_latency_millis_dist.length, m.read_count_block_size_dist.length, m.read_latency_sizes_dist.length], [8, 8, 8]);
    assert.equal(sum(m.read_count_block_size_dist), m.read_count, 'every read is in one size class');
    assert.equal(sum(m.read_latency_sizes_dist.map((row: number[]) => { assert.equal(row.length, 8); return sum(row); })), m.read_count, 'and in one latency class of it');
    assert.equal(sum(m.read_cumulative_latency_millis_dist), m.read_cumulative_latency_millis_total);
  }
  assert.equal(backendAll.backend_type, 'localfs');
  // nydus's size classes start at 0, 1, 4, 16, 64, 128, 512 and 1024 KiB: the reads in them add up to
  // the bytes read, each at least its class's start and below the next one's.
  const starts = [0, 1, 4, 16, 64, 128, 512, 1024, 2 ** 40].map((k) => k * 1024);
  const counts: number[] = backendAll.read_count_block_size_dist;
  assert.ok(sum(counts.map((c, i) => c * starts[i])) <= backendAll.read_amount_total && backendAll.read_amount_total < sum(counts.map((c, i) => c * starts[i + 1])) + 1,
    `${backendAll.read_amount_total} bytes in reads of the classes ${JSON.stringify(counts)}`);
  assert.equal(backendBlob.code, 1);
  assert.match(backendBlob.err, /^nydusctl: error: --blob-id goes with metrics blobcache: \/api\/v1\/metrics\/backend takes no blob id/);
  // blobcache: nydus's ?id= names the image; ours ?blob_id= one blob.
  assert.equal(blobNope.code, 1);
  assert.match(blobNope.err, /400 invalid blob_id "nope": a blob id is 64 lowercase hex digits/);
  assert.equal(imageNope.code, 1);
  assert.match(imageNope.err, /\/api\/v1\/metrics\/blobcache\?id=nope: 404 no image "nope"/);
  for (const r of [slashImg1, img1, img2, img1Blob, blobOnly]) assert.equal(r.code, 0, r.err);
  const [a, s, b] = [JSON.parse(img1.out), JSON.parse(slashImg1.out), JSON.parse(img2.out)];
  assert.deepEqual([a.image_id, a.blobs.map((x: { blob_id: string }) => x.blob_id)], ['img1', [blobId]]);
  assert.ok(a.entries_count > 0 && a.blobs[0].cached_chunks === a.entries_count, 'img1\'s cache file holds what was read');
  assert.deepEqual(s.blobs, a.blobs, 'nydus-snapshotter\'s /<id> names the same image');
  // The snapshotter's blob cache GC reads the blob ids an image uses from these names (its
  // ExtractBlobIDFromFilename strips ".blob.data"), and skips its round while any image gives none.
  for (const m of [a, s, b]) assert.deepEqual([m.underlying_files, m.store_path], [[`${blobId}.blob.data`], work], 'every image names its blobs\' cache files, read or not');
  assert.deepEqual([b.image_id, b.entries_count, b.blobs[0].cached, b.blobs[0].cache_files], ['img2', 0, [], []], 'img2 is not given img1\'s cache file');
  const one = JSON.parse(img1Blob.out);
  assert.deepEqual([one.image_id, one.blob_id, one.cached], ['img1', blobId, a.blobs[0].cached]);
  assert.equal(img1OtherBlob.code, 1);
  assert.match(img1OtherBlob.err, /404 image "img1" has no blob "f{64}"/);
  assert.deepEqual(JSON.parse(blobOnly.out).cached, a.blobs[0].cached);
  assert.equal(noFlags.code, 1, 'two images and no id: which one is not guessed');
  assert.match(noFlags.err, /404 2 images are registered: say which with \?id=/);
});

test('nydusctl metrics: fsstats, files and pattern refuse --blob-id; fsstats --id never gives the daemon\'s figures as an image\'s', async () => {
  const sock = path.join(work, 'api.sock');
  if (!fs.existsSync(sock)) await daemonWithTwoImages();
  const ctl = (...args: string[]) => nydusctl('--sock', sock, 'metrics', ...args);
  const refused = await Promise.all(['fsstats', 'files', 'pattern'].map((t) => ctl(t, '--id', 'img1', '--blob-id', blobId)));
  for (const [i, t] of ['/api/v1/metrics', '/api/v1/metrics/files', '/api/v1/metrics/pattern'].entries()) {
    assert.equal(refused[i].code, 1);
    assert.equal(refused[i].err, `nydusctl: error: --blob-id goes with metrics blobcache: ${t} takes no blob id (--id picks the image)\n`);
  }
  const [nope, img1, all, files, empty, twice] = await Promise.all([
    ctl('fsstats', '--id', 'nope'), ctl('fsstats', '--id', 'img1'), ctl('fsstats', '--raw'), ctl('files', '--id', 'img1', '--raw'),
    ctl('backend', '--id', ''), ctl('blobcache', '--id', 'img1', '--id', 'img2'),
  ]);
  assert.equal(nope.code, 1);
  assert.match(nope.err, /\/api\/v1\/metrics\?id=nope: 404 no image "nope"/);
  assert.deepEqual([img1.code, img1.out], [1, '']);
  assert.match(img1.err, /404 no file system counters of image "img1": .*\/api\/v1\/metrics\/files\?id=img1/);
  assert.equal(all.code, 0, all.err);
  assert.equal(JSON.parse(all.out).id, '', 'the daemon\'s figures name no image');
  assert.equal(files.code, 0, files.err);
  assert.equal(empty.code, 1);
  assert.equal(empty.err, 'nydusctl: error: --id needs a value\n');
  assert.equal(twice.code, 1);
  assert.equal(twice.err, 'nydusctl: error: --id is given more than once\n');
  // The API itself, as a client other than nydusctl asks it.
  assert.equal((await api(sock, 'GET', '/api/v1/metrics/backend?id=%2Fnope')).status, 404);
  assert.equal((await api(sock, 'GET', '/api/v1/metrics/blobcache?blob_id=')).status, 400);
});

test('nydusctl without --raw prints upstream nydusctl\'s text of info and metrics backend, cache and fsstats, made of the values the API gives', async () => {
  const sock = path.join(work, 'api.sock');
  if (!fs.existsSync(sock)) await daemonWithTwoImages();
  const both = async (...args: string[]) => {
    const [text, raw] = await Promise.all([nydusctl('--sock', sock, ...args), nydusctl('--sock', sock, ...args, '--raw')]);
    assert.equal(text.code, 0, text.err);
    assert.equal(raw.code, 0, raw.err);
    return { text: text.out, raw: JSON.parse(raw.out) };
  };
  const info = await both('info');
  assert.equal(info.text, `\nVersion:                ${JSON.stringify(info.raw.version.package_ver)}\nStatus:                 "RUNNING"\nProfile:                ${JSON.stringify(info.raw.version.profile)}\nCommit:                 ${JSON.stringify(info.raw.version.git_commit)}\n`);
  const backend = await both('metrics', 'backend', '--id', 'img1');
  const b = backend.raw;
  assert.ok(b.read_count > 0);
  const row = (label: string, cells: Array<string | number>) => label.padEnd(25) + cells.map((c) => String(c).padEnd(8)).join('');
  const sizes = ['<1K', '1K~', '4K~', '16K~', '64K~', '128K~', '512K~', '1M~'];
  const average = b.read_count_block_size_dist.map((n: number, i: number) => (n ? Math.floor(b.read_cumulative_latency_millis_dist[i] / n) : 0));
  assert.equal(backend.text, ['', 'Backend Type:       "localfs"', `Read Amount:        ${b.read_amount_total} Bytes (${b.read_amount_total / 1024 / 1024} MB)`,
    `Read Count:         ${b.read_count}`, 'Read Errors:        0', '', row('Block Sizes:', sizes), row('Average Latency(millis):', average), '',
    row('Block Sizes:', sizes), row('Request Count:', b.read_count_block_size_dist), ''].join('\n'));
  const cache = await both('metrics', 'cache', '--id', 'img1');
  const lines = cache.text.split('\n');
  assert.deepEqual(lines.slice(0, 7), ['', `Partial Hits:               ${cache.raw.partial_hits}`, `Whole Hits:                 ${cache.raw.whole_hits}`,
    `Total Read:                 ${cache.raw.total}`, `Directory:                  ${JSON.stringify(work)}`, `Files:                      ${JSON.stringify([`${blobId}.blob.data`])}`,
    `Persister Buffer:           ${cache.raw.buffered_backend_size}`]);
  // No prefetch ran: its duration is 0 and its rates 0/0, which upstream prints as Rust does (NaN).
  assert.deepEqual(lines.slice(8, 17), ['Prefetch Workers:           0', 'Prefetch Amount:            0 = 0 KB', 'Prefetch Requests:          0',
    'Prefetch Average Size:      0 Bytes', 'Prefetch Duration:          0 Seconds', 'Prefetch Bandwidth:         NaN MB/S', 'Prefetch Request Latency:   NaN Seconds',
    'Prefetch Unmerged:          0', '']);
  const fsstats = await both('metrics', 'fsstats');
  assert.match(fsstats.text, /^\nRead Latency:   <1ms    ~20ms   ~50ms   ~100ms  ~500ms  ~1s     ~2s     2s~     \nReads Count:    (\d+ +){8}\n\nRead Errors: \d+\nRead Data: \d+Bytes \(\d+MB\)\n\nFOP Counters:\nGetattr\(\d+\) Readlink/);
  assert.ok(fsstats.text.includes(`Read Data: ${fsstats.raw.data_read}Bytes (${Math.floor(fsstats.raw.data_read / 1048576)}MB)\n`));
  // Ours, which upstream has not: indented JSON.
  const files = await nydusctl('--sock', sock, 'metrics', 'files', '--id', 'img1');
  assert.deepEqual(JSON.parse(files.out), (await both('metrics', 'files', '--id', 'img1')).raw);
});

test('nydusctl set, metrics cache and metrics backend --interval (upstream nydusctl\'s): each reaches the daemon or is refused naming the flag', async () => {
  const sock = path.join(work, 'api.sock');
  if (!fs.existsSync(sock)) await daemonWithTwoImages();
  // set log-level: PUT /api/v1/daemon {"log_level"}, as upstream nydusctl maps the item.
  const set = await nydusctl('--sock', sock, 'set', 'log-level', 'debug');
  assert.equal(set.code, 0, set.err);
  assert.equal(log.level, 'debug', 'the daemon\'s log level was set');
  log.level = 'silent';
  const loud = await nydusctl('--sock', sock, 'set', 'log-level', 'loud');
  assert.equal(loud.code, 1);
  assert.match(loud.err, /^nydusctl: error: \/api\/v1\/daemon: 400 .*log_level must be one of trace, debug, info, warn, error/);
  assert.equal(log.level, 'silent', 'a refused level changes nothing');
  const other = await nydusctl('--sock', sock, 'set', 'threads', '4');
  assert.notEqual(other.code, 0);
  assert.match(other.err, /Invalid values:[\s\S]*Argument: kind, Given: "threads", Choices: "log-level"/);
  await nydusctl('--sock', sock, 'set', 'log-level', 'silent').then((r) => assert.equal(r.code, 1, 'silent is no nydusd level'));
  // nydusd's levels are Rust's LevelFilter: `off` (any case) is one, pino's silent.
  log.level = 'info';
  const off = await nydusctl('--sock', sock, 'set', 'log-level', 'OFF');
  assert.equal(off.code, 0, off.err);
  assert.equal(log.level, 'silent', 'off silences the daemon');
  // nydusd's metrics shapes: 15 file operations (its StatsFop), and its fscache backend's id `/`.
  const fsMetrics = await api(sock, 'GET', '/api/v1/metrics');
  assert.equal(fsMetrics.body.fop_hits.length, 15);
  assert.equal(fsMetrics.body.fop_cumulative_latency_total.length, 15);
  assert.equal(fsMetrics.body.record_latest_read_files_enabled, true);
  const slash = await api(sock, 'GET', '/api/v1/metrics/backend?id=/');
  assert.equal(slash.status, 200, JSON.stringify(slash.body));
  assert.deepEqual(slash.body, (await api(sock, 'GET', '/api/v1/metrics/backend')).body, 'id=/ is the daemon\'s backend, as nydusd keeps it');

  // metrics cache: the blob cache's metrics, upstream's newer name of them.
  const [cache, blobcache] = await Promise.all([nydusctl('--sock', sock, 'metrics', 'cache', '--id', 'img1', '--raw'), nydusctl('--sock', sock, 'metrics', 'blobcache', '--id', 'img1', '--raw')]);
  assert.equal(cache.code, 0, cache.err);
  assert.deepEqual(JSON.parse(cache.out), JSON.parse(blobcache.out));

  // metrics backend --interval --raw: a line a period of what was read in it, until stopped.
  const watch = execFile(path.join(repoRoot, 'bin/nydusctl'), ['--sock', sock, 'metrics', 'backend', '-I', '1', '--raw'], { encoding: 'utf8' });
  let lines = '';
  watch.stdout!.on('data', (d) => (lines += d));
  await waitFor(() => lines.split('\n').filter(Boolean).length >= 2, 'two periods of backend metrics', 20_000);
  watch.kill();
  const periods = lines.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  for (const p of periods) {
    assert.deepEqual(Object.keys(p), ['interval_secs', 'read_bandwidth_kb_s', 'read_count', 'average_io_size', 'average_latency_millis']);
    assert.deepEqual([p.interval_secs, p.read_count, p.read_bandwidth_kb_s], [1, 0, 0], 'nothing was read meanwhile');
  }
  // Without --raw, upstream nydusctl's text: a block a period between its >>> and <<< lines.
  const textWatch = execFile(path.join(repoRoot, 'bin/nydusctl'), ['--sock', sock, 'metrics', 'backend', '-I', '1'], { encoding: 'utf8' });
  let text = '';
  textWatch.stdout!.on('data', (d) => (text += d));
  await waitFor(() => text.split('<<< <<< <<< <<< <<<\n').length >= 3, 'two periods of backend metrics as text', 20_000);
  textWatch.kill();
  const idle = ['', '>>> >>> >>> >>> >>>', 'Backend Read Bandwidth:     0 KB/S', 'Backend Average IO Size:    0 Bytes', 'Backend Average Latency:    0 millis', '',
    'Block Sizes/millis:', '<1K     1K~     4K~     16K~    64K~    128K~   512K~   1M~     ', '0       '.repeat(8), '<<< <<< <<< <<< <<<', ''].join('\n');
  assert.equal(text.slice(0, 2 * idle.length), idle + idle, 'two periods in which nothing was read');
  // Its reader going away (`| head -1`) ends it quietly: no EPIPE trace, status 0.
  const headed = spawn(path.join(repoRoot, 'bin/nydusctl'), ['--sock', sock, 'metrics', 'backend', '-I', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let headErr = '';
  headed.stderr.on('data', (d) => (headErr += d));
  await new Promise<void>((resolve) => headed.stdout.once('data', () => resolve()));
  headed.stdout.destroy();
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => headed.once('exit', (c, s) => resolve([c, s])));
  assert.deepEqual([code, signal, headErr], [0, null, ''], 'ends quietly once its output is closed');
  const [fsstatsEvery, zero, word] = await Promise.all([
    nydusctl('--sock', sock, 'metrics', 'fsstats', '-I', '1'),
    nydusctl('--sock', sock, 'metrics', 'backend', '--interval', '0'),
    nydusctl('--sock', sock, 'metrics', 'backend', '--interval', 'often'),
  ]);
  assert.deepEqual([fsstatsEvery.code, fsstatsEvery.err], [1, 'nydusctl: error: --interval goes with metrics backend\n']);
  assert.deepEqual([zero.code, zero.err], [1, 'nydusctl: error: --interval "0" is not a whole number of seconds from 1 to 999999\n']);
  assert.equal(word.code, 1);
});

test('nydusctl mount and umount (upstream\'s -s -c -m -t, -m): POST and DELETE /api/v1/mount with the config file\'s text; a config that cannot be read, passthrough_fs and a daemon that mounts nothing are refused', async () => {
  const state = new DaemonState(path.join(work, 'state-mount'));
  const registry = new ImageRegistry(state, log);
  const sock = path.join(work, 'api-mount.sock');
  const asked: Array<['mount', unknown] | ['umount', string]> = [];
  const mounts = {
    mount: async (req: unknown) => void asked.push(['mount', req]),
    umount: (mp: string) => void asked.push(['umount', mp]),
    list: () => [], stats: {}, imageIdOf: () => undefined, served: () => [],
  } as unknown as NonNullable<Parameters<typeof startApi>[1]['mounts']>;
  const server: http.Server = await startApi(sock, { id: 'd', registry, state, lifecycle: null, log, mounts });
  cleanup.push(() => state.close(), () => registry.close(), () => server.close());
  const cfgFile = path.join(work, 'mount.toml');
  fs.writeFileSync(cfgFile, 'version = 2\n[backend]\ntype = "localfs"\n[backend.localfs]\ndir = "/blobs"\n[cache]\ntype = "filecache"\n[cache.filecache]\nwork_dir = "/cache"\n');
  const mounted = await nydusctl('--sock', sock, 'mount', '-s', boot, '-c', cfgFile, '-m', '/mnt/x', '-t', 'rafs');
  assert.equal(mounted.code, 0, mounted.err);
  const unmounted = await nydusctl('--sock', sock, 'umount', '-m', '/mnt/x');
  assert.equal(unmounted.code, 0, unmounted.err);
  assert.equal(asked.length, 2);
  const [[what, req], umount] = asked as [['mount', { mountpoint: string; bootstrap: string; config: { backend: { localfs: { dir: string } } } }], ['umount', string]];
  assert.deepEqual([what, req.mountpoint, req.bootstrap, req.config.backend.localfs.dir], ['mount', '/mnt/x', boot, '/blobs'], 'the TOML file reached the daemon as the mount\'s config');
  assert.deepEqual(umount, ['umount', '/mnt/x']);

  const [noFile, passthrough, noType] = await Promise.all([
    nydusctl('--sock', sock, 'mount', '-s', boot, '-c', path.join(work, 'none.json'), '-m', '/mnt/x', '-t', 'rafs'),
    nydusctl('--sock', sock, 'mount', '-s', boot, '-c', cfgFile, '-m', '/mnt/x', '-t', 'passthrough_fs'),
    nydusctl('--sock', sock, 'mount', '-s', boot, '-c', cfgFile, '-m', '/mnt/x'),
  ]);
  assert.equal(noFile.code, 1);
  assert.match(noFile.err, /^nydusctl: error: cannot read the mount config .*none\.json: ENOENT/);
  assert.equal(passthrough.code, 1);
  assert.match(passthrough.err, /^nydusctl: error: \/api\/v1\/mount\?mountpoint=%2Fmnt%2Fx: 501 .*body\.fs_type "passthrough_fs" is not supported \(rafs\)/);
  assert.notEqual(noType.code, 0);
  assert.match(noType.err, /Missing required argument: type/);
  assert.equal(asked.length, 2, 'nothing refused reached the front end');
  // A daemon without a fanotify front end (fscache mode) says so.
  if (!fs.existsSync(path.join(work, 'api.sock'))) await daemonWithTwoImages();
  const fscache = await nydusctl('--sock', path.join(work, 'api.sock'), 'umount', '-m', '/mnt/x');
  assert.equal(fscache.code, 1);
  assert.match(fscache.err, /: 501 .*this daemon mounts nothing itself \(fscache mode/, 'unsupported here: 501, as nydusd answers');
});

test('nydusd --fscache-threads and --thread-num: a whole number from 1 to 1024, as nydus\'s thread_validator; anything else is one clear line', async () => {
  const cache = ['singleton', '--fscache', path.join(work, 'cache'), '--apisock', path.join(work, 'x.sock')];
  // With --fanotify, a config that cannot be read: a value that slips through stops there, never starts a daemon.
  const fan = ['--fanotify', path.join(work, 'fan'), '--config', path.join(work, 'none.json'), '--bootstrap', boot, '--mountpoint', path.join(work, 'mnt')];
  const bad = [
    ...['0', 'abc', '1025', '1.5', '0x10', ''].map((v) => [cache, 'fscache-threads', v] as const),
    ...['0', 'abc', '1025'].map((v) => [fan, 'thread-num', v] as const),
  ];
  const [refused, twice, accepted] = await Promise.all([
    Promise.all(bad.map(([base, flag, v]) => nydusd(...base, `--${flag}`, v))),
    nydusd(...cache, '--fscache-threads', '2', '--fscache-threads', '3'),
    // Accepted values go on to the next check.
    Promise.all([nydusd(...cache, '--fscache-threads', '1024', '--id', 'd1'), nydusd(...fan, '--thread-num', '1024')]),
  ]);
  bad.forEach(([, flag, v], i) => {
    assert.equal(refused[i].status, 1, `--${flag} ${v}`);
    assert.equal(refused[i].stderr, `nydusd: error: --${flag} ${JSON.stringify(v)} is not a valid thread number: a whole number from 1 to 1024 is needed\n`);
  });
  assert.equal(twice.stderr, 'nydusd: error: --fscache-threads is given more than once\n');
  assert.match(accepted[0].stderr, /^nydusd: error: --id and --supervisor go together\n$/);
  assert.match(accepted[1].stderr, /^nydusd: error: --config .*none\.json: ENOENT/);
});

test('nydusd --fanotify refuses --fscache-threads and --fscache-tag when given, saying what to use instead', async () => {
  const fan = ['--fanotify', path.join(work, 'fan'), '--config', path.join(work, 'none.json'), '--bootstrap', boot, '--mountpoint', path.join(work, 'mnt')];
  const cases: Array<[string[], string]> = [
    [['--fscache-threads', '4'], '--fscache-threads does not go with --fanotify: use --thread-num for the events served at once'],
    [['--fscache-threads=8'], '--fscache-threads does not go with --fanotify: use --thread-num for the events served at once'],
    [['--fscache-tag', 'nydus'], '--fscache-tag does not go with --fanotify: no cachefiles tag is bound; the daemon is told apart by its --fanotify directory (and --apisock)'],
  ];
  const [results, plain] = await Promise.all([Promise.all(cases.map(([flags]) => nydusd(...fan, ...flags))), nydusd(...fan)]);
  cases.forEach(([flags, message], i) => {
    assert.equal(results[i].status, 1, flags.join(' '));
    assert.equal(results[i].stderr, `nydusd: error: ${message}\n`);
  });
  // Not given: the defaults of fscache mode do not count as given.
  assert.match(plain.stderr, /^nydusd: error: --config .*none\.json: ENOENT/);
});

test('v1 FUSE-mode config: amplify_io (top level, nydus\'s RafsConfig) is the amplification window, bounds checked', async () => {
  const v1 = (extra: object) => ({
    device: { backend: { type: 'localfs', config: { dir: '/blobs' } }, cache: { type: 'blobcache', config: { work_dir: '/cache' } } }, mode: 'direct', ...extra,
  });
  const window = (extra: object) => parseBlobCacheEntry(entryBodyFromFsConfig(v1(extra), '/img.boot', 'x')).amplifyIo;
  assert.equal(window({ amplify_io: 0x400000 }), 0x400000);
  assert.equal(window({ amplify_io: 0x10000000 }), 0x10000000);
  assert.equal(window({}), AMPLIFY_IO_DEFAULT);
  assert.equal(window({ amplify_io: 0 }), 0x20000, 'raised to 128 KiB, as config_v2\'s rafs.batch_size');
  for (const bad of [-1, 1.5, 'big', true]) {
    assert.throws(() => entryBodyFromFsConfig(v1({ amplify_io: bad }), '/img.boot', 'x'), /^ConfigError: config\.amplify_io must be a whole number >= 0$/, String(bad));
  }
  assert.throws(() => entryBodyFromFsConfig(v1({ amplify_io: 0x10000001 }), '/img.boot', 'x'), /config\.amplify_io must be at most 268435456 bytes/);
  // nydusd --fanotify --config: refused in one line before anything starts.
  const config = path.join(work, 'v1.json');
  fs.writeFileSync(config, JSON.stringify(v1({ amplify_io: -4096 })));
  const r = await nydusd('--fanotify', path.join(work, 'fan'), '--config', config, '--bootstrap', boot, '--mountpoint', path.join(work, 'mnt'));
  assert.equal(r.status, 1);
  assert.equal(r.stderr, `nydusd: error: --config ${config}: config.amplify_io must be a whole number >= 0\n`);
  // The same in TOML (v2, as nydusd reads it after JSON): the same line; text of neither is refused naming both.
  const toml = path.join(work, 'v2.toml');
  fs.writeFileSync(toml, 'version = 2\n[backend]\ntype = "localfs"\n[backend.localfs]\ndir = "/blobs"\n[cache]\ntype = "filecache"\n[cache.filecache]\nwork_dir = "/cache"\n[rafs]\nbatch_size = -4096\n');
  const t = await nydusd('--fanotify', path.join(work, 'fan'), '--config', toml, '--bootstrap', boot, '--mountpoint', path.join(work, 'mnt'));
  assert.equal(t.status, 1);
  assert.equal(t.stderr, `nydusd: error: --config ${toml}: config.rafs.batch_size must be a whole number >= 0\n`);
  const neither = path.join(work, 'neither.conf');
  fs.writeFileSync(neither, '{"version": 2, backend = }\n');
  const n = await nydusd('--fanotify', path.join(work, 'fan'), '--config', neither, '--bootstrap', boot, '--mountpoint', path.join(work, 'mnt'));
  assert.equal(n.status, 1);
  assert.match(n.stderr, new RegExp(`^nydusd: error: --config ${neither.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is neither JSON \\(.+\\) nor TOML \\(.+\\)\n$`));
});

test('nydusd fuse / virtiofs (nydus-snapshotter\'s default fs_driver runs `nydusd fuse`): refused naming the mode and what to run instead', async () => {
  const [fuse, virtiofs] = await Promise.all([
    nydusd('fuse', '--mountpoint', path.join(work, 'm'), '--apisock', path.join(work, 'f.sock'), '--failover-policy', 'resend'),
    nydusd('virtiofs', '--sock', path.join(work, 'v.sock')),
  ]);
  assert.equal(fuse.status, 1);
  assert.match(fuse.stderr, /^nydusd: error: nydusd fuse: FUSE mode is not part of nydus-ts, which serves the in-kernel EROFS path: run `nydusd singleton --fscache <dir>` \(nydus-snapshotter: fs_driver = "fscache"\)/);
  assert.equal(virtiofs.status, 1);
  assert.match(virtiofs.stderr, /^nydusd: error: nydusd virtiofs: virtio-fs mode is not part of nydus-ts/);
});
