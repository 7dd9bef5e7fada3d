/**
 * nydusd --fanotify on the host kernel (pre-content events, Linux >= 6.14; needs root): a Nydus image
 * mounted lazily (file-backed EROFS over sparse cache files), judged by the kernel's own reads against
 * the source tree; a corrupt chunk, a second read, kill -9 of the worker mid-read, a full disk, and unmount.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import crypto from 'node:crypto';
import type net from 'node:net';
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { fillDisk, makeRichTree, prand, tmpDir } from './helpers/fixtures.ts';
import { manifest, diffManifests } from './helpers/manifest.ts';
import { mountManifest, readMounted } from './helpers/bounded-read.ts';
import { mustRun, repoRoot } from './helpers/cli.ts';
import { apiRequest, heldConnection } from './helpers/api-client.ts';
import { startRegistry } from './helpers/registry.ts';
import { parseCgroupMounts, parseProcCgroup, procsFile } from '../src/daemon/cgroup-follow.ts';
import { type FanotifyImage, fanotifyConfig, daemonFilesTail, isMounted, killProcessesUnder, localfsBackend, processesUnder, spawnDaemon, startFanotifyDaemon, waitFor } from './helpers/fanotify-daemon.ts';
import { RegistryClient } from '../src/registry/index.ts';
import { PendingEventJournal } from '../src/daemon/frontend/fanotify-journal.ts';
import { FanotifyGroup, type FanotifyEvent, READY_BLOCK, closeFd } from '../native/fscache/fanotify.ts';

const work = tmpDir('fanotify');
const daemons: ChildProcess[] = [];
/** Subreapers (orphanedWorker): they outlive a failed test unless killed (they note SIGTERM, not die of it). */
const reapers: ChildProcess[] = [];
const mounts: string[] = [];

type Image = FanotifyImage;

function build(name: string, src: string): Image {
  const blobDir = path.join(work, `${name}-blobs`);
  const boot = path.join(work, `${name}.boot`);
  mustRun('nydus-image', ['create', '-t', 'dir-rafs', '-B', boot, '-D', blobDir, '--compressor', 'zstd', src]);
  return { boot, blobDir, blobId: fs.readdirSync(blobDir)[0] };
}

function inspect(boot: string, what: string): any {
  return JSON.parse(mustRun('nydus-image', ['inspect', '-B', boot, '-R', what]).stdout);
}

const localfs = localfsBackend;

/**
 * An image of `victim` (200 KB, one chunk) and `ok0`..`ok3` (150 KB each; data from `seed` on) whose
 * blob has one byte of the victim's stored chunk flipped; the victim's chunk index.
 */
function buildCorrupt(name: string, seed: number): { img: Image; victimChunk: string } {
  const csrc = path.join(work, `${name}-src`);
  fs.mkdirSync(csrc);
  fs.writeFileSync(path.join(csrc, 'victim'), prand(200_000, seed));
  for (let i = 0; i < 4; i++) fs.writeFileSync(path.join(csrc, `ok${i}`), prand(150_000, seed + 1 + i));
  const img = build(name, csrc);
  const victim = inspect(img.boot, 'stat /victim') as { chunks: Array<{ chunk_index: number; compressed_offset: number; compressed_size: number }> };
  assert.equal(victim.chunks.length, 1);
  const blob = path.join(img.blobDir, img.blobId);
  const data = fs.readFileSync(blob);
  data[victim.chunks[0].compressed_offset + Math.floor(victim.chunks[0].compressed_size / 2)] ^= 0xff;
  fs.writeFileSync(blob, data);
  return { img, victimChunk: String(victim.chunks[0].chunk_index) };
}

/** Starts `nydusd --fanotify` mounting `img` at a new directory; resolves once it is mounted and its API answers. */
function startDaemon(name: string, img: Image, backend: object) {
  return startFanotifyDaemon(path.join(work, name), img, backend, { daemons, mounts });
}

async function fetches(sock: string, blobId: string): Promise<Record<string, number>> {
  return (await apiRequest(sock, 'GET', `/api/v1/metrics/blobcache?blob_id=${blobId}`)).body.fetches;
}

const total = (f: Record<string, number>) => Object.values(f).reduce((a, b) => a + b, 0);

/** The marks of every fanotify group the process holds (fdinfo lines `fanotify ino:...`). */
function fanotifyMarks(pid: number): number {
  let n = 0;
  for (const fd of fs.readdirSync(`/proc/${pid}/fdinfo`)) {
    try {
      n += fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8').split('\n').filter((l) => l.startsWith('fanotify ino:')).length;
    } catch { /* closed meanwhile */ }
  }
  return n;
}

/** sha256 of a file read by another process (the test's event loop must stay free for its HTTP backend). */
function sha256Async(file: string): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn('sha256sum', [file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('exit', (code) => resolve({ code, out: out.split(' ')[0], err }));
  });
}

const src = path.join(work, 'src');
let srcManifest: Map<string, string>;
let rich: Image;

before(() => {
  const kernel = execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();
  const [maj, min] = kernel.split('.').map(Number);
  assert.ok(maj > 6 || (maj === 6 && min >= 14), `fanotify pre-content events need Linux >= 6.14; this kernel is ${kernel}`);
  makeRichTree(src);
  srcManifest = manifest(src);
  rich = build('rich', src);
});

after(async () => {
  for (const d of daemons) if (d.exitCode === null && d.signalCode === null) d.kill('SIGTERM');
  for (const r of reapers) if (r.exitCode === null && r.signalCode === null) r.kill('SIGKILL');
  // What a failed test left (an adoptive supervisor and its workers are no test's children).
  await waitFor('the daemons stopped', () => daemons.every((d) => d.exitCode !== null || d.signalCode !== null), 10_000).catch(() => {});
  killProcessesUnder(work);
  for (const m of mounts) if (isMounted(m)) spawnSync('umount', ['-l', m]);
  fs.rmSync(work, { recursive: true, force: true });
});

test('root-kernel fanotify: a lazily mounted image reads identical to the source; umount/mount (the API, nydusctl) and drop_caches fetch nothing; unmount cleans up', async () => {
  const d = await startDaemon('rich', rich, localfs(rich));
  const cacheFile = path.join(d.cacheDir, `${rich.blobId}.blob.data`);
  const blobSize = (inspect(rich.boot, 'blobs') as Array<{ uncompressed_size: number }>)[0].uncompressed_size;
  assert.equal(fs.statSync(cacheFile).size, blobSize, 'the cache file has the blob\'s uncompressed size');
  assert.equal(fs.statSync(cacheFile).blocks, 0, 'nothing is fetched before a read: the cache file is all holes');
  assert.equal(total(await fetches(d.sock, rich.blobId)), 0);
  const readiness = async () => [(await apiRequest(d.sock, 'GET', '/api/v1/metrics')).body.data_read, (await apiRequest(d.sock, 'GET', `/api/v1/metrics/blobcache?id=${encodeURIComponent(d.mnt)}`)).body.data_all_ready];
  assert.deepEqual(await readiness(), [0, false], 'nothing read, nothing cached (data_read, data_all_ready)');
  const workerPid = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body.pid as number;
  assert.equal(fanotifyMarks(workerPid), 1, 'the cache file is marked');
  assert.ok(fs.readFileSync(`/proc/${workerPid}/environ`, 'utf8').split('\0').includes('GLIBC_TUNABLES=glibc.malloc.hugetlb=1'), 'the worker\'s malloc heap asks for huge pages');
  assert.ok(fs.readFileSync(`/proc/${workerPid}/cmdline`, 'utf8').split('\0').some((a) => a.startsWith('--interrupt-budget=')), 'the worker optimizes later than V8\'s default');

  assert.deepEqual(diffManifests(srcManifest, mountManifest(d.mnt)).slice(0, 20), [], 'the mount reads as the source');
  const first = await fetches(d.sock, rich.blobId);
  const chunks = (inspect(rich.boot, 'blobs') as Array<{ chunk_count: number }>)[0].chunk_count;
  assert.equal(Object.keys(first).length, chunks, 'every chunk was fetched');
  assert.deepEqual(Object.values(first).filter((n) => n !== 1), [], 'each chunk once');
  const [dataRead, allReady] = await readiness();
  assert.ok(dataRead > 0 && allReady === true, `the image read (data_read ${dataRead}) and all cached (data_all_ready ${allReady})`);

  const info = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body;
  assert.deepEqual(info.fanotify.mounts, [d.mnt]);
  // nydus's DaemonInfo: per mount a FsBackendDescriptor, as upstream nydusctl's `info` deserializes it
  // (time's human-readable OffsetDateTime, a ConfigV2 with the cache's prefetch and the file system's mode).
  const desc = info.backend_collection[d.mnt];
  assert.deepEqual(Object.keys(info.backend_collection), [d.mnt]);
  assert.deepEqual([desc.backend_type, desc.mountpoint, desc.config.version, desc.config.backend.type, desc.config.rafs.mode, typeof desc.config.cache.prefetch.enable],
    ['Rafs', d.mnt, 2, 'localfs', 'direct', 'boolean']);
  assert.match(desc.mounted_time, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9} \+00:00:00$/);
  assert.ok(Math.abs(Date.parse(desc.mounted_time.slice(0, 23).replace(' ', 'T') + 'Z') - Date.now()) < 600_000, desc.mounted_time);
  // nydusd's FsBackendInfo: the RAFS superblock of the mount, its EROFS fields as dump.erofs reads them.
  const backend = await apiRequest(d.sock, 'GET', `/api/v1/daemon/backend?mountpoint=${encodeURIComponent(d.mnt)}`);
  assert.equal(backend.status, 200, JSON.stringify(backend.body));
  const dump = execFileSync('dump.erofs', ['-s', `--device=${path.join(rich.blobDir, rich.blobId)}`, rich.boot], { encoding: 'utf8' });
  const dumped = (label: string) => Number(new RegExp(`^Filesystem ${label}:\\s+(\\S+)`, 'm').exec(dump)?.[1]);
  const sm = backend.body;
  assert.deepEqual([sm.magic, sm.meta_blkaddr, sm.root_nid, sm.inodes_count], [dumped('magic number'), dumped('inode metadata start block'), dumped('root nid'), dumped('inode count')], dump);
  assert.deepEqual([sm.version, sm.blob_device_table_count, sm.chunk_size, sm.attr_timeout, sm.is_chunk_dict], [0x600, 1, 1 << 20, { secs: 2 ** 32, nanos: 0 }, false]);
  // RafsSuperFlags: zstd (--compressor zstd), blake3 (the default digester).
  assert.deepEqual([sm.flags.bits & 0x80, sm.flags.bits & 0x4], [0x80, 0x4], JSON.stringify(sm.flags));
  assert.equal((await apiRequest(d.sock, 'GET', '/api/v1/daemon/backend')).status, 400, 'no mountpoint');
  const none = await apiRequest(d.sock, 'GET', `/api/v1/daemon/backend?mountpoint=${encodeURIComponent(path.join(work, 'nowhere'))}`);
  assert.equal(none.status, 404);
  assert.match(none.body.message, /no file system is mounted at/);
  // nydusd's v2 info: the same without the file systems; PUT sets the log level as v1's does.
  const v2 = (await apiRequest(d.sock, 'GET', '/api/v2/daemon')).body;
  assert.deepEqual([v2.state, v2.pid, v2.backend_collection, v2.version.package_ver], [info.state, info.pid, null, info.version.package_ver]);
  assert.equal((await apiRequest(d.sock, 'PUT', '/api/v2/daemon', { log_level: 'warn' })).status, 204);
  assert.equal((await apiRequest(d.sock, 'DELETE', '/api/v2/daemon')).status, 400, 'a known path with another method');
  assert.ok(info.fanotify.events > 0 && info.fanotify.eventErrors === 0, `events served, none failed (${JSON.stringify(info.fanotify)})`);
  assert.ok(info.fanotify.answeredInAddon > 0, `reads of bytes fetched ahead were answered by the addon (${JSON.stringify(info.fanotify)})`);
  assert.ok(info.fanotify.chunksWrittenByVerifier > 0, `chunks were written into the cache file by their verification jobs (${JSON.stringify(info.fanotify)})`);
  assert.equal(fanotifyMarks(workerPid), 0, 'a complete cache file is no longer marked: its reads raise no events');
  const remount = await apiRequest(d.sock, 'PUT', `/api/v1/mount?mountpoint=${encodeURIComponent(d.mnt)}`,
    { source: rich.boot, fs_type: 'rafs', config: JSON.stringify(d.cfg) });
  assert.equal(remount.status, 501, 'a remount is refused as unsupported, as nydusd answers');
  assert.match(remount.body.message, /PUT \/api\/v1\/mount \(remount with a new bootstrap\) is not supported/);
  assert.ok(isMounted(d.mnt), 'the refused remount left the mount');
  const del = await apiRequest(d.sock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(d.mnt)}`);
  assert.equal(del.status, 204, JSON.stringify(del.body));
  assert.equal(isMounted(d.mnt), false, 'DELETE /api/v1/mount unmounts');
  const again = await apiRequest(d.sock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(d.mnt)}`);
  assert.equal(again.status, 500, 'a second DELETE is refused, as nydusd answers an umount that fails');
  assert.match(again.body.message, /is not mounted by this daemon/);

  const post = await apiRequest(d.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(d.mnt)}`,
    { source: rich.boot, fs_type: 'rafs', config: JSON.stringify(d.cfg) });
  assert.equal(post.status, 204, JSON.stringify(post.body));
  assert.ok(isMounted(d.mnt), 'POST /api/v1/mount mounts');
  assert.equal(fanotifyMarks(workerPid), 0, 'the complete cache file is mounted unmarked');
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  assert.deepEqual(diffManifests(srcManifest, mountManifest(d.mnt)).slice(0, 20), [], 'the mount reads as the source again');
  assert.deepEqual(await fetches(d.sock, rich.blobId), first, 'the second read fetched nothing');

  // nydusctl's umount and mount (upstream's flags) go through the same API.
  const ctl = (...args: string[]) => spawnSync(path.join(repoRoot, 'bin/nydusctl'), ['--sock', d.sock, ...args], { encoding: 'utf8' });
  const un = ctl('umount', '-m', d.mnt);
  assert.equal(un.status, 0, un.stderr);
  assert.equal(isMounted(d.mnt), false, 'nydusctl umount unmounts');
  const cfgFile = path.join(work, 'mount-config.json');
  fs.writeFileSync(cfgFile, JSON.stringify(d.cfg));
  const re = ctl('mount', '-s', rich.boot, '-c', cfgFile, '-m', d.mnt, '-t', 'rafs');
  assert.equal(re.status, 0, re.stderr);
  assert.ok(isMounted(d.mnt), 'nydusctl mount mounts');
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  assert.deepEqual(diffManifests(srcManifest, mountManifest(d.mnt)).slice(0, 20), [], 'the mount nydusctl made reads as the source');
  const passthrough = ctl('mount', '-s', rich.boot, '-c', cfgFile, '-m', path.join(work, 'elsewhere'), '-t', 'passthrough_fs');
  assert.notEqual(passthrough.status, 0);
  assert.match(passthrough.stderr, /fs_type "passthrough_fs" is not supported/);

  const exited = new Promise((r) => d.proc.once('exit', r));
  d.proc.kill('SIGTERM');
  await exited;
  assert.equal(isMounted(d.mnt), false, 'the daemon unmounts when it stops');
});

test('root-kernel fanotify: mounts of images that share a blob share its cache file: each chunk fetched once, served on after the mount that made it is gone (the other mounted with a TOML config); a file made for an image with fewer of the blob\'s chunks takes another image\'s in, after a worker restart too', async () => {
  // A second image: the source less one file plus a new one, built against the first one's chunks
  // (--chunk-dict): its blob table holds the first image's blob (fewer of its chunks) and a blob of its own.
  const bsrc = path.join(work, 'shared-src');
  execFileSync('cp', ['-a', src, bsrc]);
  fs.rmSync(path.join(bsrc, 'multi-chunk'));
  fs.writeFileSync(path.join(bsrc, 'new-file'), prand(300_000, 77));
  const bManifest = manifest(bsrc);
  const bImg: Image = { boot: path.join(work, 'shared.boot'), blobDir: path.join(work, 'shared-blobs'), blobId: '' };
  fs.mkdirSync(bImg.blobDir);
  fs.copyFileSync(path.join(rich.blobDir, rich.blobId), path.join(bImg.blobDir, rich.blobId));
  mustRun('nydus-image', ['create', '-t', 'dir-rafs', '-B', bImg.boot, '-D', bImg.blobDir, '--compressor', 'zstd', '--chunk-dict', `bootstrap=${rich.boot}`, bsrc]);
  const bBlobs = inspect(bImg.boot, 'blobs') as Array<{ blob_id: string; chunk_count: number }>;
  const richChunks = (inspect(rich.boot, 'blobs') as Array<{ chunk_count: number }>)[0].chunk_count;
  assert.deepEqual(bBlobs.map((b) => b.blob_id).sort(), [rich.blobId, bBlobs.find((b) => b.blob_id !== rich.blobId)!.blob_id].sort(), 'the second image has the first one\'s blob and its own');
  const own = bBlobs.find((b) => b.blob_id !== rich.blobId)!.blob_id;

  const d = await startDaemon('shared', rich, localfs(rich));
  const workerPid = (await apiRequest(d.sock, 'GET', '/api/v1/daemon').then((r) => r.body.pid)) as number;
  const mount = (mnt: string, img: Image) => apiRequest(d.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt)}`,
    { source: img.boot, fs_type: 'rafs', config: JSON.stringify(fanotifyConfig(d.cacheDir, localfs(img))) });
  const umount = async (mnt: string) => {
    const r = await apiRequest(d.sock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt)}`);
    assert.equal(r.status, 204, JSON.stringify(r.body));
    assert.equal(isMounted(mnt), false);
  };
  const mnt2 = path.join(work, 'shared', 'mnt2');
  fs.mkdirSync(mnt2);
  mounts.push(mnt2);
  const second = await mount(mnt2, rich);
  assert.equal(second.status, 204, JSON.stringify(second.body));
  assert.equal(fanotifyMarks(workerPid), 1, 'one cache file, marked once, for both mounts');
  // The mount that made the file goes first: the other reads on through it.
  await umount(d.mnt);
  assert.equal(fanotifyMarks(workerPid), 1, 'the cache file stays marked for the mount still using it');
  const metrics = await apiRequest(d.sock, 'GET', '/api/v1/metrics/files');
  assert.equal(metrics.status, 200, `metrics without an id are the only mount's, though the image of the one that went stays registered: ${JSON.stringify(metrics.body)}`);
  assert.deepEqual(diffManifests(srcManifest, mountManifest(mnt2)).slice(0, 20), [], 'the second mount reads as the source');
  const first = await fetches(d.sock, rich.blobId);
  assert.equal(Object.keys(first).length, richChunks, 'every chunk was fetched');
  assert.deepEqual(Object.values(first).filter((n) => n !== 1), [], 'each chunk once');

  // The second image, mounted where the first mount was (its image is still registered, for the file),
  // with its config in TOML as nydus's misc/configs have it (nydusd reads TOML after JSON).
  const third = await apiRequest(d.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(d.mnt)}`, {
    source: bImg.boot, fs_type: 'rafs',
    config: `version = 2\n\n[backend]\ntype = "localfs"\n\n[backend.localfs]\ndir = "${bImg.blobDir}"\n\n[cache]\ntype = "filecache"\n\n[cache.filecache]\nwork_dir = "${d.cacheDir}"\n`,
  });
  assert.equal(third.status, 204, JSON.stringify(third.body));
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  assert.deepEqual(diffManifests(bManifest, mountManifest(d.mnt)).slice(0, 20), [], 'the image sharing the blob reads as its source');
  assert.deepEqual(await fetches(d.sock, rich.blobId), first, 'nothing of the shared blob was fetched again');
  assert.ok(total(await fetches(d.sock, own)) > 0, 'its own blob was fetched');
  assert.deepEqual(fs.readdirSync(d.cacheDir).filter((f) => f.endsWith('.blob.data')).sort(), [`${own}.blob.data`, `${rich.blobId}.blob.data`].sort());
  await umount(mnt2);
  await umount(d.mnt);
  assert.equal(fanotifyMarks(workerPid), 0, 'no mount, no mark');

  // The other way round, in a work_dir of its own: the file made for the image with fewer of the blob's
  // chunks takes the first image's chunks in when it mounts (without them, the chunks only the first
  // image has would read as holes: zeros). The worker is killed: its successor serves both mounts
  // again, in the order they were made, and the first image's mount reads as the source.
  const cache2 = path.join(work, 'shared', 'cache2');
  const mount2 = (mnt: string, img: Image) => apiRequest(d.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt)}`,
    { source: img.boot, fs_type: 'rafs', config: JSON.stringify(fanotifyConfig(cache2, localfs(img))) });
  assert.equal((await mount2(d.mnt, bImg)).status, 204);
  const joined = await mount2(mnt2, rich);
  assert.equal(joined.status, 204, JSON.stringify(joined.body));
  const first2 = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body.pid as number;
  process.kill(first2, 'SIGKILL');
  await waitFor('a new worker', async () => {
    const r = await apiRequest(d.sock, 'GET', '/api/v1/daemon').catch(() => null);
    return r?.status === 200 && r.body.pid !== first2 && r.body.state === 'RUNNING';
  }, 30_000);
  assert.deepEqual((await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body.fanotify.mounts.sort(), [d.mnt, mnt2].sort());
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  assert.deepEqual(diffManifests(srcManifest, mountManifest(mnt2)).slice(0, 20), [], 'the first image reads as its source through the file made for the other');
  assert.deepEqual(diffManifests(bManifest, mountManifest(d.mnt)).slice(0, 20), [], 'the other reads as its source');
  assert.deepEqual(Object.values(await fetches(d.sock, rich.blobId)).filter((n) => n !== 2), [], 'each chunk of the shared blob fetched once more, for the second work_dir');
  const exited = new Promise((r) => d.proc.once('exit', r));
  d.proc.kill('SIGTERM');
  await exited;
  assert.equal(isMounted(d.mnt), false, 'the daemon unmounts when it stops');
});

test('root-kernel fanotify: a corrupt chunk gives EIO for its file only; DELETE removes the mark; a busy mount is served on until free when the daemon stops', async () => {
  const { img } = buildCorrupt('corrupt', 77);

  const d = await startDaemon('corrupt', img, localfs(img));
  assert.throws(() => readMounted(path.join(d.mnt, 'victim')), (e: NodeJS.ErrnoException) => e.code === 'EIO', 'the corrupt file reads as EIO');
  assert.throws(() => readMounted(path.join(d.mnt, 'victim')), (e: NodeJS.ErrnoException) => e.code === 'EIO', 'again: never zeros');
  for (let i = 0; i < 4; i++) assert.deepEqual(readMounted(path.join(d.mnt, `ok${i}`)), prand(150_000, 78 + i), `ok${i} reads right`);
  const info = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body;
  assert.ok(info.fanotify.eventErrors > 0, 'the failed events are counted');
  const workerPid = info.pid as number;
  assert.equal(fanotifyMarks(workerPid), 1, 'the incomplete cache file stays marked');
  // The marked cache file read by another process past its end: answered (nothing to fetch), the worker unharmed.
  const cacheFile = path.join(d.cacheDir, `${img.blobId}.blob.data`);
  const pastEnd = spawnSync('dd', [`if=${cacheFile}`, 'bs=4096', 'count=1', `skip=${fs.statSync(cacheFile).size + 65536}`, 'iflag=skip_bytes', 'status=none'], { timeout: 10_000 });
  assert.equal(pastEnd.status, 0, `a read past the end of the cache file returns (${pastEnd.error?.message ?? pastEnd.stderr})`);
  assert.equal(pastEnd.stdout.length, 0, 'and reads nothing');
  assert.equal((await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body.pid, workerPid, 'the same worker still serves');
  const del = await apiRequest(d.sock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(d.mnt)}`);
  assert.equal(del.status, 204, JSON.stringify(del.body));
  assert.equal(isMounted(d.mnt), false, 'DELETE /api/v1/mount unmounts');
  assert.equal(fanotifyMarks(workerPid), 0, 'and removes the mark');

  // Stopping with a busy mount: the daemon keeps serving it until it is free, then unmounts and exits.
  const post = await apiRequest(d.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(d.mnt)}`,
    { source: img.boot, fs_type: 'rafs', config: JSON.stringify(d.cfg) });
  assert.equal(post.status, 204, JSON.stringify(post.body));
  const holder = spawn('sh', ['-c', 'sleep 3'], { cwd: d.mnt, stdio: 'ignore' });
  await new Promise((r) => holder.once('spawn', r));
  let exitedAt = 0;
  const exited = new Promise((r) => d.proc.once('exit', () => r((exitedAt = Date.now()))));
  d.proc.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal(exitedAt, 0, 'the daemon does not stop while its mount is busy');
  assert.ok(isMounted(d.mnt), 'nor detach the busy mount (its holes would read as zeros once the daemon is gone)');
  assert.deepEqual(readMounted(path.join(d.mnt, 'ok0')), prand(150_000, 78), 'and still serves it');
  await new Promise((r) => holder.once('exit', r));
  await exited;
  assert.equal(isMounted(d.mnt), false, 'once free it is unmounted and the daemon stops');
});

/** A blob server (the http-proxy backend's shape: HEAD and Range GET of /blobs/<id>) that can hold reads. */
class HoldingBlobServer {
  held = false;
  readonly waiting: Array<() => void> = [];
  private readonly sockets = new Set<net.Socket>();
  private readonly server = http.createServer((req, res) => {
    const file = path.join(this.dir, path.basename(req.url ?? ''));
    if (!fs.existsSync(file)) return void res.writeHead(404).end();
    const size = fs.statSync(file).size;
    if (req.method === 'HEAD') return void res.writeHead(200, { 'content-length': size }).end();
    const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '');
    if (!m) return void res.writeHead(416).end();
    const answer = () => {
      const [s, e] = [Number(m[1]), Math.min(Number(m[2]), size - 1)];
      const buf = Buffer.alloc(e - s + 1);
      const fd = fs.openSync(file, 'r');
      fs.readSync(fd, buf, 0, buf.length, s);
      fs.closeSync(fd);
      res.writeHead(206, { 'content-range': `bytes ${s}-${e}/${size}`, 'content-length': buf.length }).end(buf);
    };
    if (this.held) this.waiting.push(answer);
    else answer();
  });

  constructor(private readonly dir: string) {
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
  }

  listen(): Promise<number> {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => resolve((this.server.address() as net.AddressInfo).port)));
  }

  release(): void {
    this.held = false;
    for (const w of this.waiting.splice(0)) w();
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

test('root-kernel fanotify: kill -9 of the worker while it holds an event; the next worker completes the read with the right bytes and refetches nothing cached', async () => {
  const bsrc = path.join(work, 'big-src');
  fs.mkdirSync(bsrc);
  const bigData = prand(12 << 20, 99);
  fs.writeFileSync(path.join(bsrc, 'big.bin'), bigData);
  const img = build('big', bsrc);
  const server = new HoldingBlobServer(img.blobDir);
  const port = await server.listen();
  try {
    const d = await startDaemon('big', img, { type: 'http-proxy', 'http-proxy': { addr: `http://127.0.0.1:${port}`, path: '/blobs', timeout: 30 } });
    const file = path.join(d.mnt, 'big.bin');
    const cached = async () => ((await apiRequest(d.sock, 'GET', `/api/v1/metrics/blobcache?blob_id=${img.blobId}`)).body.cached as number[]);
    // The first 3 MiB read and cached while the backend answers.
    const headRead = spawn('head', ['-c', String(3 << 20), file], { stdio: ['ignore', 'ignore', 'inherit'] });
    assert.equal(await new Promise((r) => headRead.once('exit', r)), 0);
    await waitFor('the first chunks marked', async () => (await cached()).length >= 3);
    const cachedBefore = await cached();
    const start = await fetches(d.sock, img.blobId);
    const worker = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body.pid as number;

    // Then the backend holds every read: the whole-file reader ends up waiting on an event the worker holds.
    server.held = true;
    const reader = sha256Async(file);
    const journal = path.join(d.state, 'pending-events');
    // (Not any backend read held: a read ahead of the reader is held too, while no event waits for it.)
    await waitFor('an event held by the worker', () => server.waiting.length > 0 && PendingEventJournal.read(journal).length > 0);
    // Held open across the kill, as nydus-snapshotter's liveness monitor holds one: its closing is
    // the daemon's death to the snapshotter, whose recover policy would then unmount the images.
    const watch = heldConnection(d.sock);
    await watch.connected;
    process.kill(worker, 'SIGKILL');
    let done = false;
    void reader.then(() => (done = true));
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(done, false, 'with the worker dead the reader still waits (its event is not allowed over holes)');
    server.release();
    await waitFor('a new worker', async () => {
      const r = await apiRequest(d.sock, 'GET', '/api/v1/daemon').catch(() => null);
      return r?.status === 200 && r.body.pid !== worker;
    });
    const { code, out, err } = await reader;
    assert.equal(code, 0, `the reader finished after the restart (${err})`);
    assert.equal(watch.closed, false, 'the idle API connection stayed open through the worker\'s death');
    assert.notEqual((await watch.request('/api/v1/daemon')).pid, worker, 'its first request is answered by the new worker');
    watch.c.destroy();
    assert.equal(out, crypto.createHash('sha256').update(bigData).digest('hex'), 'with the right bytes');
    assert.match(fs.readFileSync(path.join(work, 'big', 'nydusd.log'), 'utf8'), /serving a predecessor's event/, "the new worker answered the dead one's event from the journal");
    const after = await fetches(d.sock, img.blobId);
    assert.deepEqual(cachedBefore.filter((i) => after[i] !== start[i]), [], 'no chunk cached before the kill was fetched again');
    assert.deepEqual((await cached()).length, (inspect(img.boot, 'blobs') as Array<{ chunk_count: number }>)[0].chunk_count, 'every chunk is cached now');
    const exited = new Promise((r) => d.proc.once('exit', r));
    d.proc.kill('SIGTERM');
    await exited;
    assert.equal(isMounted(d.mnt), false, 'the daemon unmounts when it stops');
  } finally {
    server.release();
    await server.close();
  }
});

/** Reads `count` blocks of `file` from block `skip`, in one read(2) by another process (this one answers its events); resolves to the bytes. */
function readBlocks(file: string, skip: number, count: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const p = spawn('dd', [`if=${file}`, `bs=${count * READY_BLOCK}`, 'count=1', `skip=${skip * READY_BLOCK}`, 'iflag=skip_bytes,fullblock', 'status=none'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const out: Buffer[] = [];
    p.stdout.on('data', (d: Buffer) => out.push(d));
    p.on('exit', (code) => (code === 0 ? resolve(Buffer.concat(out)) : reject(new Error(`dd exited ${code}`))));
  });
}

test('root-kernel fanotify: the addon allows an event whose blocks are all set in the ready bitmap, and only those; the others are in the journal before they are delivered', async () => {
  const file = path.join(work, 'ready-blocks.data');
  const bytes = prand(3 * READY_BLOCK, 7);
  fs.writeFileSync(file, bytes);
  const group = FanotifyGroup.open();
  const seen: FanotifyEvent[] = [];
  const journalFile = path.join(work, 'ready-blocks.journal');
  const journal = new PendingEventJournal(journalFile);
  const journaledAtDelivery: boolean[] = [];
  try {
    group.mark(file);
    const st = fs.statSync(file);
    const bits = new Uint8Array(1);
    group.onEvents((events) => {
      for (const e of events) {
        seen.push(e);
        journaledAtDelivery.push(PendingEventJournal.read(journalFile).some((p) => p.fd === e.fd && p.offset === e.offset && p.count === e.count));
        if (e.answered) continue;
        group.respond(e.fd, 0);
        closeFd(e.fd);
        journal.done(e.fd);
      }
    }, (err) => assert.fail(err), journal.native);
    const readAndSee = async (skip: number, count: number) => {
      seen.length = 0;
      journaledAtDelivery.length = 0;
      const got = await readBlocks(file, skip, count);
      const want = bytes.subarray(skip * READY_BLOCK, (skip + count) * READY_BLOCK);
      // (An event the addon answered reaches JS up to a millisecond later: the reader thread holds such events back.)
      await waitFor(`the event of the read at block ${skip}`, () => seen.some((e) => e.offset === skip * READY_BLOCK), 5_000).catch(() => {});
      assert.ok(got.equals(want), `the reader gets the file's bytes (${got.length} bytes read, ${want.length} expected; events ${JSON.stringify(seen)})`);
      const reads = seen.filter((e) => e.offset === skip * READY_BLOCK);
      assert.equal(reads.length, 1, `one event for the read at block ${skip} (${JSON.stringify(seen)})`);
      assert.deepEqual(journaledAtDelivery, seen.map((e) => !e.answered), 'each event the handler must answer (and only those) is in the journal when it is delivered');
      assert.deepEqual(PendingEventJournal.read(journalFile), [], 'answered: nothing pending');
      return reads[0].answered;
    };
    assert.equal(await readAndSee(0, 1), false, 'no bitmap yet: the event goes to the handler');
    group.setReadyBlocks(st.dev, st.ino, bits);
    assert.equal(await readAndSee(0, 1), false, 'no bit set: the handler answers');
    bits[0] |= 1;
    assert.equal(await readAndSee(0, 1), true, 'block 0 is set: the addon answered');
    assert.equal(await readAndSee(0, 2), false, 'blocks 0 and 1, only 0 set: the handler answers');
    assert.equal(await readAndSee(1, 1), false, 'block 1 is not set');
    bits[0] |= 2;
    assert.equal(await readAndSee(0, 2), true, 'blocks 0 and 1 set: the addon answered');
    assert.equal(await readAndSee(2, 1), false, 'block 2 lies past the bits that are set');
    group.setReadyBlocks(st.dev, st.ino, null);
    assert.equal(await readAndSee(0, 1), false, 'the bitmap forgotten: the handler answers again');
  } finally {
    group.close();
    journal.close();
  }
});

test('root-kernel fanotify: events the addon answered and holds back reach JS before an event JS must answer, in the order they came', async () => {
  const blocks = 1024;
  const file = path.join(work, 'held-order.data');
  const bytes = prand(blocks * READY_BLOCK, 8);
  fs.writeFileSync(file, bytes);
  const group = FanotifyGroup.open();
  const seen: FanotifyEvent[] = [];
  try {
    group.mark(file);
    const st = fs.statSync(file);
    // The first 3/4 of the file held: reads of its first blocks are answered by the addon and held
    // back (far from the end of what is held); a read past it goes to JS.
    const bits = new Uint8Array(blocks / 8);
    bits.fill(0xff, 0, (blocks * 3) / 4 / 8);
    group.setReadyBlocks(st.dev, st.ino, bits);
    group.onEvents((events) => {
      for (const e of events) {
        seen.push(e);
        if (e.answered) continue;
        group.respond(e.fd, 0);
        closeFd(e.fd);
      }
    }, (err) => assert.fail(err));
    // One process reads blocks 0, 1, 2 and 1000, a read(2) each, microseconds apart.
    const script = `const fs = require('fs'); const fd = fs.openSync(process.argv[1], 'r'); const b = Buffer.alloc(${READY_BLOCK}); const out = [];
      for (const k of [0, 1, 2, 1000]) { fs.readSync(fd, b, 0, b.length, k * ${READY_BLOCK}); out.push(b.toString('hex')); }
      process.stdout.write(JSON.stringify(out));`;
    const got = await new Promise<string[]>((resolve, reject) => {
      const p = spawn(process.execPath, ['-e', script, file], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      p.stdout.on('data', (d: Buffer) => (out += d));
      p.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`the reader exited ${code}`))));
    });
    assert.deepEqual(got, [0, 1, 2, 1000].map((k) => bytes.subarray(k * READY_BLOCK, (k + 1) * READY_BLOCK).toString('hex')), 'the reader gets the file\'s bytes');
    await waitFor('the four events', () => seen.length >= 4, 5_000);
    const reads = seen.map((e) => [e.offset / READY_BLOCK, e.answered]);
    assert.deepEqual(reads, [[0, true], [1, true], [2, true], [1000, false]], `the held events first, in order (${JSON.stringify(seen)})`);
  } finally {
    group.close();
  }
});

for (const stream of [false, true]) test(`root-kernel fanotify: with prefetch on${stream ? ' as a stream (stream_prefetch)' : ''}, a corrupt chunk only the prefetch fetched still gives its reader EIO; the other files read right from what the prefetch wrote, none fetched twice`, async () => {
  const name = stream ? 'corrupt-spf' : 'corrupt-pf';
  const { img, victimChunk } = buildCorrupt(name, 91);
  const chunks = (inspect(img.boot, 'blobs') as Array<{ chunk_count: number }>)[0].chunk_count;

  const d = await startFanotifyDaemon(path.join(work, name), img, localfs(img), { daemons, mounts }, { prefetch: { enable: true, batch_size: 65536, stream_prefetch: stream } });
  await waitFor('the prefetch of every chunk', async () => Object.keys(await fetches(d.sock, img.blobId)).length === chunks);
  const prefetched = await fetches(d.sock, img.blobId);
  const backendReads = (await apiRequest(d.sock, 'GET', '/api/v1/metrics/backend')).body.read_count as number;
  if (stream) assert.equal(backendReads, 1, 'the blob came in one read of the backend, its stream');
  else assert.ok(backendReads > 1, `a prefetch in batches reads the backend many times (${backendReads})`);
  for (let i = 0; i < 4; i++) assert.deepEqual(readMounted(path.join(d.mnt, `ok${i}`)), prand(150_000, 92 + i), `ok${i} reads right`);
  const afterOk = await fetches(d.sock, img.blobId);
  // (The failed chunk, missing from the file, may be fetched again as read-ahead of the file before it.)
  assert.deepEqual({ ...afterOk, [victimChunk]: 0 }, { ...prefetched, [victimChunk]: 0 }, 'the other files were read from what the prefetch wrote: none of their chunks fetched again');
  assert.throws(() => readMounted(path.join(d.mnt, 'victim')), (e: NodeJS.ErrnoException) => e.code === 'EIO', 'the corrupt file reads as EIO, not zeros');
  const after = await fetches(d.sock, img.blobId);
  assert.ok(after[victimChunk] > afterOk[victimChunk], 'its chunk was fetched again for its reader (a failed fetch made before the read is never its answer)');
  assert.equal((await apiRequest(d.sock, 'GET', '/api/v1/metrics/backend')).body.read_errors, 0, 'the blob read right each time: the EIO is the digest\'s');
  assert.deepEqual({ ...after, [victimChunk]: 0 }, { ...prefetched, [victimChunk]: 0 }, 'and no other chunk');
  const exited = new Promise((r) => d.proc.once('exit', r));
  d.proc.kill('SIGTERM');
  await exited;
});

/** A daemon serving `rich` under `<work>/<name>`, its state directory a 1 MiB tmpfs (the test unmounts it); its worker's pid. */
async function daemonOnSmallStateDisk(name: string) {
  const base = path.join(work, name);
  const state = path.join(base, 'state');
  fs.mkdirSync(state, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', state]);
  mounts.push(state);
  const d = await startFanotifyDaemon(base, rich, localfs(rich), { daemons, mounts });
  const worker = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body.pid as number;
  return { base, state, d, worker };
}

test('root-kernel fanotify: a full disk under the state database is logged; the daemon serves on, unmounts, and writes the marks once there is room', async () => {
  const { base, state, d, worker: workerPid } = await daemonOnSmallStateDisk('full');
  // The rest of the state's disk taken by another file.
  const filler = fillDisk(state);
  // Every chunk fetched and marked while the database can take none of it (a flush every 100 ms).
  assert.deepEqual(diffManifests(srcManifest, mountManifest(d.mnt)).slice(0, 20), [], 'the mount reads as the source');
  await new Promise((r) => setTimeout(r, 300));
  const info = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body;
  assert.equal(info.pid, workerPid, 'the same worker serves on');
  const log = () => fs.readFileSync(path.join(base, 'nydusd.log'), 'utf8');
  assert.match(log(), /cannot write the state database/);
  assert.match(log(), /cannot write the journal of pending events/);
  // Unmounted through the API though the database cannot forget the image.
  const del = await apiRequest(d.sock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(d.mnt)}`);
  assert.equal(del.status, 204, JSON.stringify(del.body));
  assert.equal(isMounted(d.mnt), false);
  assert.equal((await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body.pid, workerPid, 'and still the same worker');
  // Room again: the marks kept in memory are written.
  fs.rmSync(filler);
  await waitFor('the marks written', async () => /the state database takes writes again/.test(log()));
  const blobcache = (await apiRequest(d.sock, 'GET', `/api/v1/metrics/blobcache?blob_id=${rich.blobId}`)).body;
  assert.ok(total(blobcache.fetches) > 0, `fetch counts were written (${JSON.stringify(blobcache.fetches).slice(0, 200)})`);
  const exited = new Promise((r) => d.proc.once('exit', r));
  d.proc.kill('SIGTERM');
  await exited;
  execFileSync('umount', [state]);
});

test('root-kernel fanotify: a worker killed while the state directory is full is replaced, and its successor serves the mount', async () => {
  const { base, state, d, worker: first } = await daemonOnSmallStateDisk('full-restart');
  const filler = fillDisk(state);
  process.kill(first, 'SIGKILL');
  await waitFor('a new worker', async () => {
    const r = await apiRequest(d.sock, 'GET', '/api/v1/daemon').catch(() => null);
    return r?.status === 200 && r.body.pid !== first && r.body.state === 'RUNNING';
  }, 30_000);
  const info = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body;
  assert.deepEqual(info.fanotify.mounts, [d.mnt], 'the new worker serves the mount');
  assert.deepEqual(diffManifests(srcManifest, mountManifest(d.mnt)).slice(0, 20), [], 'the mount reads as the source');
  assert.match(fs.readFileSync(path.join(base, 'nydusd.log'), 'utf8'), /cannot write the mounts file/);
  fs.rmSync(filler);
  const exited = new Promise((r) => d.proc.once('exit', r));
  d.proc.kill('SIGTERM');
  await exited;
  assert.equal(isMounted(d.mnt), false);
  execFileSync('umount', [state]);
});

test('root-kernel fanotify: on a full cache disk reads fail with EIO, the worker serves on, and once there is room they read as the source', async () => {
  const base = path.join(work, 'full-cache');
  const cacheDisk = path.join(base, 'cache');
  fs.mkdirSync(cacheDisk, { recursive: true });
  const image = path.join(work, 'full-cache.ext4');
  execFileSync('truncate', ['-s', '16M', image]);
  execFileSync('mkfs.ext4', ['-q', '-F', image]);
  execFileSync('mount', ['-o', 'loop', image, cacheDisk]);
  mounts.push(cacheDisk);
  const filler = fillDisk(cacheDisk);
  const d = await startFanotifyDaemon(base, rich, localfs(rich), { daemons, mounts });
  const worker = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body.pid as number;
  // (timeout: a read that hangs fails the test instead of holding it.)
  const read = spawnSync('timeout', ['60', 'sh', '-c', `find ${d.mnt} -type f -exec cat {} + > /dev/null`], { encoding: 'utf8' });
  assert.equal(read.status, 1, `the reads fail, none hangs: ${read.stderr.slice(0, 300)}`);
  assert.match(read.stderr, /Input\/output error/);
  const info = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body;
  assert.equal(info.pid, worker, 'the same worker serves on');
  assert.ok(info.fanotify.eventErrors > 10, `many events failed (${info.fanotify.eventErrors})`);
  // One line for them all, not one per event: the log may be on the same full disk.
  const told = fs.readFileSync(path.join(base, 'nydusd.log'), 'utf8').split('\n').filter((l) => l.includes('range cannot be served'));
  assert.equal(told.length, 1, `${told.length} lines`);
  assert.match(told[0], /ENOSPC/);
  fs.rmSync(filler);
  assert.deepEqual(diffManifests(srcManifest, mountManifest(d.mnt)).slice(0, 20), [], 'the mount reads as the source');
  const exited = new Promise((r) => d.proc.once('exit', r));
  d.proc.kill('SIGTERM');
  await exited;
  execFileSync('umount', [cacheDisk]);
});

test('root-kernel fanotify: a mount is refused, saying why, while the daemon has fewer than 64 open files free; the API and the mounts serve on (found by the scale probe: out of fds, accepted mounts read EIO and the API went silent)', async () => {
  const d = await startDaemon('fds', rich, localfs(rich));
  const worker = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body.pid as number;
  const open = () => fs.readdirSync(`/proc/${worker}/fd`).length;
  // --rlimit-nofile's default, as nydusd's: the hard limit raised to 1,000,000 (at most fs.file-max
  // less 16,384) where the daemon may raise it (CAP_SYS_RESOURCE); where not, the limit it was given.
  const hardOf = (pid: number | string) => Number(/^Max open files\s+\S+\s+(\S+)/m.exec(fs.readFileSync(`/proc/${pid}/limits`, 'utf8'))![1]);
  const mayRaise = (BigInt(`0x${/^CapEff:\s+(\S+)/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]}`) >> 24n) & 1n;
  const fileMax = Number(fs.readFileSync('/proc/sys/fs/file-max', 'utf8'));
  assert.equal(hardOf(worker), mayRaise ? Math.max(hardOf('self'), Math.min(1_000_000, fileMax - 16_384)) : hardOf('self'));
  const badLimit = spawnSync(path.join(repoRoot, 'bin/nydusd'), ['--fanotify', path.join(work, 'fds', 'state2'), '--apisock', path.join(work, 'fds', 'x.sock'), '--rlimit-nofile', 'many'], { encoding: 'utf8' });
  assert.equal(badLimit.status, 1);
  assert.match(badLimit.stderr, /invalid value "many" for --rlimit-nofile: a whole number of files/);
  const mnt2 = path.join(work, 'fds', 'mnt2');
  fs.mkdirSync(mnt2);
  const body = { source: rich.boot, fs_type: 'rafs', config: JSON.stringify(d.cfg) };
  // The soft limit just above what the worker holds (the hard one as it was).
  execFileSync('prlimit', ['--pid', String(worker), `--nofile=${open() + 20}:`]);
  const refused = await apiRequest(d.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt2)}`, body);
  assert.notEqual(refused.status, 204);
  assert.match(refused.body.message, /the daemon has \d+ of its \d+ open files in use, and a mount needs 64 free: unmount others, or raise its limit \(--rlimit-nofile/);
  assert.equal(isMounted(mnt2), false);
  assert.deepEqual(diffManifests(srcManifest, mountManifest(d.mnt)).slice(0, 20), [], 'the mount there reads as the source');
  execFileSync('prlimit', ['--pid', String(worker), `--nofile=${open() + 200}:`]);
  const ok = await apiRequest(d.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt2)}`, body);
  assert.equal(ok.status, 204, JSON.stringify(ok.body));
  mounts.push(mnt2);
  assert.deepEqual(diffManifests(srcManifest, mountManifest(mnt2)).slice(0, 20), [], 'mounted once there is room');
  assert.equal((await apiRequest(d.sock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt2)}`)).status, 204);
  const exited = new Promise((r) => d.proc.once('exit', r));
  d.proc.kill('SIGTERM');
  await exited;
});

test('root-kernel fanotify: SIGHUP is ignored (the daemon serves on), SIGQUIT stops it cleanly', async () => {
  const d = await startDaemon('signals', rich, localfs(rich));
  const worker = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body.pid as number;
  // As a terminal's hangup sends it: to the supervisor and its worker.
  d.proc.kill('SIGHUP');
  process.kill(worker, 'SIGHUP');
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(d.proc.exitCode, null, 'the supervisor lives');
  assert.equal((await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body.pid, worker, 'the same worker serves');
  assert.deepEqual(diffManifests(srcManifest, mountManifest(d.mnt)).slice(0, 20), [], 'the mount reads as the source');
  assert.equal(fs.readFileSync(path.join(work, 'signals', 'nydusd.log'), 'utf8').match(/SIGHUP ignored/g)?.length, 2);
  const exited = new Promise<number | null>((r) => d.proc.once('exit', r));
  d.proc.kill('SIGQUIT');
  assert.equal(await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running 20 s after SIGQUIT'), 20_000))]), 0);
  assert.equal(isMounted(d.mnt), false, 'unmounted');
});

test('root-kernel fanotify: the worker follows its supervisor into the cgroup it is moved to (as nydus-snapshotter moves the pid it started)', async () => {
  const d = await startDaemon('cgroup', rich, localfs(rich));
  const worker = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body.pid as number;
  const supervisor = d.proc.pid!;
  assert.notEqual(worker, supervisor);
  // A new cgroup under the supervisor's own, in the v2 hierarchy (else v1's memory, where the
  // snapshotter's memory limit would be).
  const mounts = parseCgroupMounts(fs.readFileSync('/proc/self/mountinfo', 'utf8'));
  const mine = parseProcCgroup(fs.readFileSync(`/proc/${supervisor}/cgroup`, 'utf8'));
  const key = [...mine.keys()].find((k) => k === '0:' && procsFile(k, mine.get(k)!, mounts)) ?? [...mine.keys()].find((k) => k.endsWith(':memory'));
  assert.ok(key && procsFile(key, mine.get(key)!, mounts), `no cgroup hierarchy to test with in ${[...mine.keys()].join(' ')}`);
  const target = path.posix.join(mine.get(key)!, `nydus-ts-follow-${process.pid}`);
  const dir = path.dirname(procsFile(key, target, mounts)!);
  fs.mkdirSync(dir);
  try {
    fs.writeFileSync(path.join(dir, 'cgroup.procs'), String(supervisor));
    const workerIn = () => parseProcCgroup(fs.readFileSync(`/proc/${worker}/cgroup`, 'utf8')).get(key);
    await waitFor('the worker in the supervisor\'s new cgroup', async () => workerIn() === target, 10_000);
    assert.deepEqual(diffManifests(srcManifest, mountManifest(d.mnt)).slice(0, 20), [], 'the mount reads as the source');
  } finally {
    const exited = new Promise((r) => d.proc.once('exit', r));
    d.proc.kill('SIGTERM');
    await exited;
    await waitFor('the cgroup empty', async () => fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').trim() === '', 20_000);
    fs.rmdirSync(dir);
  }
});

/** The parent pid of `pid`, from /proc. */
const parentOf = (pid: number) => Number(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[1]);
const gone = (pid: number) => !fs.existsSync(`/proc/${pid}`) || fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1][0] === 'Z';

/**
 * nydusd started under a subreaper (as containerd's shim or systemd are: orphans become its
 * children), its supervisor then killed: the worker is orphaned, says so, and starts an adoptive
 * supervisor. The subreaper notes the signals it gets in `got`, and goes on SIGUSR1.
 */
async function orphanedWorker(name: string, workerKilledAfterMs?: number) {
  const base = path.join(work, name);
  fs.mkdirSync(path.join(base, 'mnt'), { recursive: true });
  fs.writeFileSync(path.join(base, 'config.json'), JSON.stringify(fanotifyConfig(path.join(base, 'cache'), localfs(rich))));
  const sock = path.join(base, 'api.sock');
  const mnt = path.join(base, 'mnt');
  const log = path.join(base, 'nydusd.log');
  const got = path.join(base, 'subreaper-signals');
  const reaper = `
import ctypes, os, signal, subprocess, sys, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
def note(sig, _):
    if sig == signal.SIGUSR1: sys.exit(0)
    open(sys.argv[1], 'a').write(signal.Signals(sig).name + '\\n')
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1): signal.signal(s, note)
subprocess.Popen(sys.argv[2:])
# Reaps by polling, never blocked in wait() or pause(): a signal that lands just before such a call
# runs its handler only once the call returns, and pause() with no child left never did (a release
# that hung, once in CI).
while True:
    try:
        if os.waitpid(-1, os.WNOHANG)[0]: continue
    except ChildProcessError: pass
    time.sleep(0.02)
`;
  const wrapper = spawnDaemon(base, 'python3', ['-c', reaper, got, path.join(repoRoot, 'bin/nydusd'), '--fanotify', path.join(base, 'state'), '--config', path.join(base, 'config.json'),
    '--bootstrap', rich.boot, '--mountpoint', mnt, '--apisock', sock, '--log-file', log]);
  reapers.push(wrapper);
  mounts.push(mnt);
  await waitFor('the mount and the API', async () => isMounted(mnt) && (await apiRequest(sock, 'GET', '/api/v1/daemon').catch(() => null))?.status === 200);
  const worker = (await apiRequest(sock, 'GET', '/api/v1/daemon')).body.pid as number;
  // Held open across the kill, as nydus-snapshotter's liveness monitor holds one: its closing is the
  // daemon's death to the snapshotter, which would start a second nydusd while this one serves on.
  const watch = heldConnection(sock);
  await watch.connected;
  // (The relay has parked it in the worker once the worker got its message: no wire to see that.)
  await new Promise((r) => setTimeout(r, 200));
  process.kill(parentOf(worker), 'SIGKILL');
  if (workerKilledAfterMs !== undefined) {
    // The worker too, at once: the adoptive supervisor must already hold the group by then.
    await new Promise((r) => setTimeout(r, workerKilledAfterMs));
    process.kill(worker, 'SIGKILL');
  } else {
    await waitFor('the worker adopted by the subreaper', () => parentOf(worker) === wrapper.pid);
  }
  await waitFor('the worker saying its supervisor is gone', () => fs.readFileSync(log, 'utf8').includes('the supervisor is gone'), 10_000);
  await waitFor('the adoptive supervisor', () => fs.readFileSync(log, 'utf8').includes('supervisor started to adopt a worker'), 10_000);
  // (Its own line: the worker's may never be written when it is killed right after starting it.)
  const adoptive = Number(JSON.parse(fs.readFileSync(log, 'utf8').split('\n').find((l) => l.includes('supervisor started to adopt a worker'))!).pid);
  if (workerKilledAfterMs === undefined) assert.equal(parentOf(adoptive), worker, 'the adoptive supervisor is the worker\'s child');
  const signalsGot = () => (fs.existsSync(got) ? fs.readFileSync(got, 'utf8') : '');
  const release = async () => {
    if (wrapper.exitCode !== null || wrapper.signalCode !== null) assert.fail(`the subreaper ended before the test let it go (${wrapper.exitCode ?? wrapper.signalCode})`);
    wrapper.kill('SIGUSR1');
    try {
      await waitFor('the subreaper let go', () => wrapper.exitCode !== null || wrapper.signalCode !== null, 10_000);
    } catch (e) {
      // (Its state, signal masks and wait channel say why, should it ever hang again.)
      const status = fs.readFileSync(`/proc/${wrapper.pid}/status`, 'utf8').split('\n').filter((l) => /^(State|SigPnd|ShdPnd|SigBlk|SigIgn|SigCgt):/.test(l)).join(', ');
      const wchan = fs.readFileSync(`/proc/${wrapper.pid}/wchan`, 'utf8');
      (e as Error).message += ` (subreaper ${wrapper.pid}: ${status}, wchan ${wchan})`;
      throw e;
    }
  };
  return { mnt, sock, log, worker, adoptive, watch, signalsGot, release };
}

/** The orphaned worker killed (`afterMs` after its supervisor, or once adopted): a new worker serves its mount, as the source. */
async function killedOrphanIsReplaced(name: string, afterMs?: number): Promise<void> {
  const o = await orphanedWorker(name, afterMs);
  // Nothing was read yet: the cache files are holes, which a mount outliving its group reads as zeros.
  if (afterMs === undefined) process.kill(o.worker, 'SIGKILL');
  await waitFor('a new worker', async () => {
    const pid = (await apiRequest(o.sock, 'GET', '/api/v1/daemon').catch(() => null))?.body?.pid;
    return typeof pid === 'number' && pid !== o.worker;
  });
  const next = (await apiRequest(o.sock, 'GET', '/api/v1/daemon')).body.pid as number;
  assert.equal(parentOf(next), o.adoptive, 'the new worker is the adoptive supervisor\'s');
  if (afterMs === undefined) {
    // (Killed at once, the worker may die before it hands the idle connection on: not asserted then.)
    assert.equal(o.watch.closed, false, 'the idle API connection stayed open through the supervisor\'s death and the worker\'s');
    assert.equal((await o.watch.request('/api/v1/daemon')).pid, next, 'its first request is answered by the new worker');
  }
  o.watch.c.destroy();
  assert.deepEqual(diffManifests(srcManifest, mountManifest(o.mnt)).slice(0, 20), [], 'the mount reads as the source');
  process.kill(o.adoptive, 'SIGTERM');
  await waitFor('the adoptive supervisor and its worker gone', () => gone(o.adoptive) && gone(next), 20_000);
  assert.equal(isMounted(o.mnt), false, 'unmounted');
  assert.equal(o.signalsGot(), '', 'the subreaper got no signal');
  await o.release();
}

/**
 * `fn`'s failure with what the daemon under `work/name` wrote (the last lines of its log and output)
 * and the processes still running there: what a run that failed far away needs to be understood.
 */
async function telling(name: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    const base = path.join(work, name);
    const parent = (pid: number) => {
      try {
        return parentOf(pid);
      } catch {
        return 'gone';
      }
    };
    const running = processesUnder(base).map(({ pid, cmd }) => `${pid} (parent ${parent(pid)}) ${cmd.join(' ').slice(0, 160)}`);
    (e as Error).message += `${daemonFilesTail(base)}\n--- processes:\n${running.join('\n') || '(none)'}`;
    throw e;
  }
}

test('root-kernel fanotify: a worker whose supervisor died is adopted by a new one; killed then, it is replaced and its mount reads as the source, not zeros', async () => {
  await telling('orphan-killed', () => killedOrphanIsReplaced('orphan-killed'));
});

test('root-kernel fanotify: a worker killed 100 ms after its supervisor was already adopted (the kernel tells it at once): its mount reads as the source', async () => {
  await telling('orphan-killed-at-once', () => killedOrphanIsReplaced('orphan-killed-at-once', 100));
});

test('root-kernel fanotify: an adopted worker told to stop unmounts, its adoptive supervisor ends with it, and no one else (its new parent) is signalled', () => telling('orphan-stopped', async () => {
  const o = await orphanedWorker('orphan-stopped');
  assert.deepEqual(diffManifests(srcManifest, mountManifest(o.mnt)).slice(0, 20), [], 'the orphaned worker serves on');
  process.kill(o.worker, 'SIGTERM');
  await waitFor('the worker and its adoptive supervisor gone', () => gone(o.worker) && gone(o.adoptive), 20_000);
  assert.equal(isMounted(o.mnt), false, 'it unmounted');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(o.signalsGot(), '', 'the subreaper got no signal');
  await o.release();
}));

test('root-kernel fanotify: an adopted daemon whose API socket is removed (as nydus-snapshotter stops a daemon: the pid it knows signalled, the socket\'s directory removed) stops and unmounts, and no one else is signalled', () => telling('orphan-socket-removed', async () => {
  const o = await orphanedWorker('orphan-socket-removed');
  o.watch.c.destroy();
  // The supervisor the snapshotter knows is dead: its signal reaches no one. Then its cleanup.
  fs.rmSync(o.sock);
  await waitFor('the worker and its adoptive supervisor gone', () => gone(o.worker) && gone(o.adoptive), 20_000);
  assert.equal(isMounted(o.mnt), false, 'it unmounted');
  assert.match(fs.readFileSync(o.log, 'utf8'), /the API socket was removed/);
  assert.equal(o.signalsGot(), '', 'the subreaper got no signal');
  await o.release();
}));

test('root-kernel fanotify: a cache work_dir on tmpfs is refused naming the cause', async () => {
  const base = path.join(work, 'tmpfs');
  const cacheDir = path.join(base, 'cache');
  fs.mkdirSync(cacheDir, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', cacheDir]);
  mounts.push(cacheDir);
  fs.mkdirSync(path.join(base, 'mnt'));
  fs.writeFileSync(path.join(base, 'config.json'), JSON.stringify(fanotifyConfig(cacheDir, localfs(rich))));
  const r = spawn(path.join(repoRoot, 'bin/nydusd'), ['--fanotify', path.join(base, 'state'), '--config', path.join(base, 'config.json'),
    '--bootstrap', rich.boot, '--mountpoint', path.join(base, 'mnt')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  r.stderr!.on('data', (d) => (err += d));
  const code = await new Promise((res) => r.once('exit', res));
  assert.notEqual(code, 0);
  assert.match(err, /cannot mount .*ENOTSUP: operation not supported, fanotify_mark .*: this file system does not allow pre-content marks/);
  assert.equal(isMounted(path.join(base, 'mnt')), false);
});

test('root-kernel fanotify: a cache file that is a symlink or a FIFO is refused naming it, the file a symlink names untouched, no fd left open; a body nesting too deep is refused, nothing registered', async () => {
  const d = await startDaemon('odd-cache-files', rich, localfs(rich));
  const worker = (await apiRequest(d.sock, 'GET', '/api/v1/daemon')).body.pid as number;
  const fds = () => fs.readdirSync(`/proc/${worker}/fd`).length;
  const base = path.join(work, 'odd-cache-files');
  const mount = (cacheDir: string) => {
    const mnt = path.join(base, `mnt-${path.basename(cacheDir)}`);
    fs.mkdirSync(mnt, { recursive: true });
    mounts.push(mnt);
    return apiRequest(d.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt)}`, { source: rich.boot, fs_type: 'rafs', config: JSON.stringify(fanotifyConfig(cacheDir, localfs(rich))) });
  };
  const victim = path.join(base, 'victim.txt');
  fs.writeFileSync(victim, 'a file the daemon must not touch\n');
  const linked = path.join(base, 'cache-symlink');
  fs.mkdirSync(linked);
  fs.symlinkSync(victim, path.join(linked, `${rich.blobId}.blob.data`));
  const fifo = path.join(base, 'cache-fifo');
  fs.mkdirSync(fifo);
  execFileSync('mkfifo', [path.join(fifo, `${rich.blobId}.blob.data`)]);
  const before = fds();
  for (const [dir, why] of [[linked, 'is a symbolic link, not a regular file'], [fifo, 'is not a regular file'], [fifo, 'is not a regular file']] as const) {
    const r = await mount(dir);
    assert.equal(r.status, 500, JSON.stringify(r.body));
    assert.ok(String(r.body.message).includes(`cache file ${path.join(dir, `${rich.blobId}.blob.data`)} ${why}`), JSON.stringify(r.body));
  }
  assert.equal(fs.readFileSync(victim, 'utf8'), 'a file the daemon must not touch\n');
  assert.equal(fds(), before, 'no fd left open by the refusals');
  // A registration whose body nests 100,000 levels is refused as it is read: nothing registered, and
  // the same id registers afterwards.
  const entry = { type: 'bootstrap', id: 'deep', config_v2: { version: 2, id: 'deep', backend: localfs(rich), cache: { type: 'fscache', fscache: { work_dir: path.join(base, 'fscache') } }, metadata_path: rich.boot } };
  const deep = JSON.stringify({ ...entry, x: 'X' }).replace('"X"', `${'['.repeat(100_000)}${']'.repeat(100_000)}`);
  const r = await apiRequest(d.sock, 'PUT', '/api/v2/blobs', deep);
  assert.equal(r.status, 400, JSON.stringify(r.body));
  assert.match(String(r.body.message), /request body nests deeper than 256 levels/);
  assert.deepEqual((await apiRequest(d.sock, 'GET', '/api/v2/blobs')).body.filter((b: { id?: string }) => b.id === 'deep'), [], 'nothing registered');
});

test('root-kernel fanotify: a body over the API\'s bound, sent through the supervisor\'s relay by node\'s own client, gets its 400 every time; an endless one gets it and is cut', { timeout: 120_000 }, async () => {
  const d = await startDaemon('big-bodies', rich, localfs(rich));
  /** PUT of `body` (or an endless one) on the daemon's API socket, node's http client, as a client of the API writes it. */
  const put = (body: Buffer | 'endless') => new Promise<{ status?: number; message?: string; err?: string; ms: number }>((resolve) => {
    const t0 = Date.now();
    const req = http.request({ socketPath: d.sock, method: 'PUT', path: '/api/v2/blobs', headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode, message: JSON.parse(text).message, ms: Date.now() - t0 }));
    });
    req.on('error', (e) => resolve({ err: e.message, ms: Date.now() - t0 }));
    if (body !== 'endless') {
      req.end(body);
      return;
    }
    const piece = Buffer.alloc(64 << 10, 0x20);
    const pump = () => {
      while (!req.destroyed && req.write(piece));
      if (!req.destroyed) req.once('drain', pump);
    };
    pump();
  });
  const big = Buffer.alloc(2 << 20, 0x20);
  for (let i = 0; i < 10; i++) {
    const r = await put(big);
    assert.deepEqual([r.status, r.message], [400, 'request body is too large'], `try ${i}: ${JSON.stringify(r)}`);
  }
  const endless = await put('endless');
  assert.deepEqual([endless.status, endless.message], [400, 'request body is too large'], JSON.stringify(endless));
  assert.ok(endless.ms < 30_000, `answered in ${endless.ms} ms`);
  assert.equal((await apiRequest(d.sock, 'GET', '/api/v1/daemon')).status, 200, 'the daemon serves on');
  // fscache mode's lifecycle calls say what this daemon does instead.
  const cull = await apiRequest(d.sock, 'DELETE', `/api/v2/blobs?blob_id=${rich.blobId}`);
  assert.equal(cull.status, 400);
  assert.match(cull.body.message, /fscache mode's .*culling a blob's cache files.*this daemon runs in fanotify mode: mounts come and go with POST and DELETE \/api\/v1\/mount/);
});

test('root-kernel fanotify: an image mounted lazily from a registry (Basic auth) reads identical to the source', async () => {
  const reg = await startRegistry({ users: { alice: 'wonderland' } });
  try {
    const client = new RegistryClient({ plainHttp: true, dockerConfig: false, credentials: { username: 'alice', password: 'wonderland' } });
    await client.pushBlob(`${reg.host}/nydus/rich`, fs.readFileSync(path.join(rich.blobDir, rich.blobId)));
    await client.close();
    const d = await startDaemon('registry', rich, {
      type: 'registry', registry: { scheme: 'http', host: reg.host, repo: 'nydus/rich', auth: Buffer.from('alice:wonderland').toString('base64') },
    });
    assert.deepEqual(diffManifests(srcManifest, mountManifest(d.mnt)).slice(0, 20), [], 'the mount reads as the source');
    const backends = (await apiRequest(d.sock, 'GET', '/api/v1/metrics/backend')).body.backends;
    assert.ok(backends.registry?.read_count > 0 && backends.registry.read_errors === 0, `the data came from the registry (${JSON.stringify(backends)})`);
    const exited = new Promise((r) => d.proc.once('exit', r));
    d.proc.kill('SIGTERM');
    await exited;
    // The credentials in IMAGE_PULL_AUTH, as nydusd takes them: they replace the --config's (here a
    // wrong user's), so that the file need hold none.
    process.env.IMAGE_PULL_AUTH = Buffer.from('alice:wonderland').toString('base64');
    try {
      const e = await startDaemon('registry-env', rich, {
        type: 'registry', registry: { scheme: 'http', host: reg.host, repo: 'nydus/rich', auth: Buffer.from('mallory:guess').toString('base64') },
      });
      assert.deepEqual(diffManifests(srcManifest, mountManifest(e.mnt)).slice(0, 20), [], 'the mount reads as the source with the credentials of IMAGE_PULL_AUTH');
      const eExited = new Promise((r) => e.proc.once('exit', r));
      e.proc.kill('SIGTERM');
      await eExited;
    } finally {
      delete process.env.IMAGE_PULL_AUTH;
    }
  } finally {
    await reg.stop();
  }
});

test('root-kernel fanotify: the daemon stops when its mount was unmounted by someone else; a worker killed as the daemon stops leaves no mount behind', async () => {
  const ssrc = path.join(work, 'stop-src');
  fs.mkdirSync(ssrc);
  fs.writeFileSync(path.join(ssrc, 'f'), prand(300_000, 5));
  const img = build('stop', ssrc);
  // Unmounted by umount(8): SIGTERM still stops the daemon (nothing is left to unmount).
  const a = await startDaemon('stop-a', img, localfs(img));
  execFileSync('umount', [a.mnt]);
  const aExit = new Promise<number | null>((r) => a.proc.once('exit', r));
  a.proc.kill('SIGTERM');
  const aCode = await Promise.race([aExit, new Promise<string>((r) => setTimeout(() => r('still running after 20 s'), 20_000))]);
  assert.equal(aCode, 0);
  assert.match(fs.readFileSync(path.join(work, 'stop-a', 'nydusd.log'), 'utf8'), /unmounted by someone else/);
  // The worker dies (kill -9) as the daemon is told to stop, or just before, while its successor is
  // due: a worker takes the mount over and unmounts it. A daemon gone with its mount left up would
  // let unfetched ranges read as zeros.
  for (const [name, due] of [['stop-b', false], ['stop-c', true]] as const) {
    const b = await startDaemon(name, img, localfs(img));
    const worker = (await apiRequest(b.sock, 'GET', '/api/v1/daemon')).body.pid as number;
    const bExit = new Promise<number | null>((r) => b.proc.once('exit', r));
    process.kill(worker, 'SIGKILL');
    if (due) await waitFor('the next worker due', () => fs.readFileSync(path.join(work, name, 'nydusd.log'), 'utf8').includes('worker died; starting a new one'));
    b.proc.kill('SIGTERM');
    const bCode = await Promise.race([bExit, new Promise<string>((r) => setTimeout(() => r('still running after 30 s'), 30_000))]);
    assert.equal(bCode, 0, name);
    assert.equal(isMounted(b.mnt), false, `${name}: no mount is left behind`);
  }
});

test('root-kernel fanotify: a mount no worker can serve is never left reading zeros: covered (DELETE refused until the cover goes), its cache file or bootstrap gone at a restart (unmounted), its daemon killed with its supervisor (the next daemon serves it); two daemons on one work_dir are refused', async () => {
  const lsrc = path.join(work, 'left-src');
  fs.mkdirSync(lsrc);
  const data = prand(3 << 20, 77);
  fs.writeFileSync(path.join(lsrc, 'f'), data);
  const img = build('left', lsrc);
  const other = build('left-other', src);
  const log = (name: string) => fs.readFileSync(path.join(work, name, 'nydusd.log'), 'utf8');
  const workerOf = async (sock: string) => (await apiRequest(sock, 'GET', '/api/v1/daemon')).body.pid as number;
  const nextWorker = (sock: string, old: number) => waitFor('a new worker', async () => {
    const r = await apiRequest(sock, 'GET', '/api/v1/daemon').catch(() => null);
    return r?.status === 200 && r.body.pid !== old;
  });
  const stop = async (proc: ChildProcess) => {
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await exited;
  };

  // Covered by another mount: DELETE is refused and the mount served on; once the cover goes, it reads as the source.
  const a = await startDaemon('left-a', img, localfs(img));
  const q = `/api/v1/mount?mountpoint=${encodeURIComponent(a.mnt)}`;
  execFileSync('mount', ['-t', 'tmpfs', 'cover', a.mnt]);
  const refused = await apiRequest(a.sock, 'DELETE', q);
  assert.equal(refused.status, 500);
  assert.match(JSON.stringify(refused.body), /has another mount over it: unmount that one first/);
  execFileSync('umount', [a.mnt]);
  assert.ok(readMounted(path.join(a.mnt, 'f')).equals(data), 'served after the cover went');

  // A second daemon whose mount's cache is the first one's work_dir: refused, naming the holder.
  const b = await startDaemon('left-b', other, localfs(other));
  const bMnt = path.join(work, 'left-b', 'mnt2');
  fs.mkdirSync(bMnt);
  const shared = await apiRequest(b.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(bMnt)}`,
    { source: img.boot, fs_type: 'rafs', config: JSON.stringify(fanotifyConfig(a.cacheDir, localfs(img))) });
  assert.notEqual(shared.status, 204);
  assert.match(JSON.stringify(shared.body), new RegExp(`cache work_dir \\S+ is served by another nydusd \\(pid ${await workerOf(a.sock)}\\)`));
  assert.equal(isMounted(bMnt), false);
  await stop(b.proc);
  assert.equal((await apiRequest(a.sock, 'DELETE', q)).status, 204);
  await stop(a.proc);

  // A restarted worker that cannot serve a mount (its work_dir removed; its bootstrap replaced) unmounts it.
  for (const [name, spoil, why] of [
    ['left-c', (d: { cacheDir: string; boot: string }) => fs.rmSync(d.cacheDir, { recursive: true, force: true }), /a cache file is gone: was its work_dir removed\?/],
    ['left-d', (d: { cacheDir: string; boot: string }) => {
      fs.copyFileSync(other.boot, `${d.boot}.new`);
      fs.renameSync(`${d.boot}.new`, d.boot);
    }, /its bootstrap \S+ was replaced or changed since it was mounted/],
  ] as const) {
    const boot = path.join(work, `${name}.boot`);
    fs.copyFileSync(img.boot, boot);
    const d = await startDaemon(name, { ...img, boot }, localfs(img));
    const worker = await workerOf(d.sock);
    spoil({ cacheDir: d.cacheDir, boot });
    process.kill(worker, 'SIGKILL');
    await nextWorker(d.sock, worker);
    await waitFor(`${name}: its mount unmounted`, () => !isMounted(d.mnt));
    assert.match(log(name), why);
    await stop(d.proc);
  }

  // Supervisor and worker killed together: the group is gone, the mount reads holes as zeros, until
  // the next daemon on the directory serves it again.
  const e = await startDaemon('left-e', img, localfs(img));
  const eWorker = await workerOf(e.sock);
  process.kill(e.proc.pid!, 'SIGKILL');
  process.kill(eWorker, 'SIGKILL');
  await waitFor('both gone', () => e.proc.exitCode !== null || e.proc.signalCode !== null);
  await waitFor('the worker gone', () => !fs.existsSync(`/proc/${eWorker}`));
  assert.ok(isMounted(e.mnt), 'the mount outlives its daemon');
  const sock2 = path.join(work, 'left-e', 'api2.sock');
  // Started again as it was (the same --bootstrap and --mountpoint): the mount left is the one asked
  // for. (A second mount over it failed the start, and the daemon took every mount down with it.)
  const again = spawnDaemon(path.join(work, 'left-e'), path.join(repoRoot, 'bin/nydusd'), ['--fanotify', e.state, '--config', path.join(work, 'left-e', 'config.json'),
    '--bootstrap', img.boot, '--mountpoint', e.mnt, '--apisock', sock2, '--log-file', path.join(work, 'left-e', 'nydusd.log')]);
  daemons.push(again);
  await waitFor('the next daemon', async () => (await apiRequest(sock2, 'GET', '/api/v1/daemon').catch(() => null))?.status === 200);
  assert.match(log('left-e'), /a mount of a daemon that was killed without unmounting it: served again/);
  assert.match(log('left-e'), /the command line's mount was left by the daemon before and is served again/);
  assert.ok(readMounted(path.join(e.mnt, 'f')).equals(data), 'read as the source, not zeros');
  assert.deepEqual((await apiRequest(sock2, 'GET', '/api/v1/daemon')).body.fanotify.mounts, [fs.realpathSync(e.mnt)], 'one mount, served');
  assert.equal(again.exitCode, null, 'the daemon serves on');
  await stop(again);
  assert.equal(isMounted(e.mnt), false, 'the next daemon unmounts it as it stops');
});

test('root-kernel fanotify: SIGTERM while a mount call is under way: the call gets an answer, and no mount outlives the daemon', async () => {
  for (const delayMs of [0, 10, 30, 60, 120]) {
    const name = `term-${delayMs}`;
    const d = await startDaemon(name, rich, localfs(rich));
    const mnt2 = path.join(work, name, 'mnt2');
    fs.mkdirSync(mnt2);
    const call = apiRequest(d.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt2)}`,
      { source: rich.boot, fs_type: 'rafs', config: JSON.stringify(fanotifyConfig(path.join(work, name, 'cache2'), localfs(rich))) })
      .then((r) => `${r.status} ${JSON.stringify(r.body)}`, (e: Error) => `no answer: ${e.message}`);
    await new Promise((r) => setTimeout(r, delayMs));
    const exited = new Promise((r) => d.proc.once('exit', r));
    d.proc.kill('SIGTERM');
    const answer = await call;
    await exited;
    assert.match(answer, /^(204|500 .*the daemon is stopping: no new mounts)|^no answer: .*(ECONNREFUSED|ENOENT|socket hang up)/, `${delayMs} ms`);
    assert.equal(isMounted(mnt2), false, `${delayMs} ms: no mount is left behind (${answer})`);
    assert.equal(isMounted(d.mnt), false, `${delayMs} ms: the first mount is unmounted`);
  }
});
