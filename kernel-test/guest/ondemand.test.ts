/**
 * On-demand scenarios in a guest kernel with cachefiles on-demand support: nydusd serves
 * `mount -t erofs -o fsid=...` and every byte read is checked against the source tree's manifest
 * made on the host. The plan (images, manifests) comes from test/kernel-vm.root-kernel.test.ts.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { manifest, diffManifests } from '../../test/helpers/manifest.ts';
import { apiRequest, heldConnection } from '../../test/helpers/api-client.ts';

interface PlanImage { id: string; boot: string; blobDir: string; blobId: string; manifest: string }
interface Plan {
  images: Record<'many' | 'shared1' | 'shared2' | 'corrupt' | 'big', PlanImage>;
  corruptFile: string;
  bigFile: string;
  bigSha256: string;
  bigChunks: number;
  exported: string;
}

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const plan: Plan = JSON.parse(fs.readFileSync(path.join(repo, 'kernel-test/.cache/ondemand/plan.json'), 'utf8'));
const scratch = process.env.KT_SCRATCH ?? '/tmp';
const cacheDir = path.join(process.env.KT_CACHE ?? '/var/cache', 'fscache');
const sock = path.join(scratch, 'nydusd.sock');
let daemon: ChildProcess;
/** The supervisor that adopted the worker once scenario 7 killed `daemon`: the one to stop then. */
let adoptiveSupervisor = 0;
const mounted: string[] = [];

const api = (method: string, url: string, body?: unknown) => apiRequest(sock, method, url, body);

async function waitForApi(notPid?: number): Promise<number> {
  for (let i = 0; i < 300; i++) {
    try {
      const r = await api('GET', '/api/v1/daemon');
      if (r.status === 200 && r.body.pid !== notPid) return r.body.pid;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('nydusd API did not come up');
}

let seq = 0;
/** The image under an fsid of its own: every scenario mounts cold, alone, whatever ran before it. */
function fresh(img: PlanImage): PlanImage {
  return { ...img, id: `${img.id}-${++seq}` };
}

async function register(img: PlanImage, domain = '', opts: { prefetch?: boolean } = {}): Promise<void> {
  const r = await api('PUT', '/api/v2/blobs', {
    type: 'bootstrap', id: img.id, domain_id: domain,
    config_v2: {
      version: 2, id: img.id, backend: { type: 'localfs', localfs: { dir: img.blobDir } },
      cache: { type: 'fscache', fscache: { work_dir: cacheDir } }, metadata_path: img.boot,
      ...(opts.prefetch ? { rafs: { prefetch: { enable: true } } } : {}),
    },
  });
  assert.equal(r.status, 204, JSON.stringify(r.body));
}

function mountImage(img: PlanImage, domain = ''): string {
  const dir = path.join(scratch, `mnt-${img.id}`);
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('mount', ['-t', 'erofs', '-o', `fsid=${img.id}${domain ? `,domain_id=${domain}` : ''}`, 'none', dir], { stdio: 'pipe' });
  mounted.push(dir);
  return dir;
}

function umount(dir: string): void {
  execFileSync('umount', [dir], { stdio: 'pipe' });
  mounted.splice(mounted.indexOf(dir), 1);
}

function expected(img: PlanImage): Map<string, string> {
  return new Map(Object.entries(JSON.parse(fs.readFileSync(img.manifest, 'utf8'))));
}

async function blobcache(blobId: string): Promise<{ cached: number[]; fetches: Record<string, number>; cache_files: Array<{ volume: string; cached_chunks: number; cached: number[] }> }> {
  return (await api('GET', `/api/v1/metrics/blobcache?blob_id=${blobId}`)).body;
}

async function fetches(img: PlanImage): Promise<Record<string, number>> {
  return (await blobcache(img.blobId)).fetches;
}

/** Backend fetches per chunk between two snapshots (chunks never fetched in between are left out). */
function fetchDelta(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(after).filter(([k, n]) => n !== (before[k] ?? 0)).map(([k, n]) => [k, n - (before[k] ?? 0)]));
}

function readAll(img: PlanImage, dir: string): void {
  assert.deepEqual(diffManifests(expected(img), manifest(dir, { skipRootTimes: false })).slice(0, 10), [], `${img.id} reads back as its source`);
}

before(async () => {
  fs.mkdirSync(cacheDir, { recursive: true });
  daemon = spawn(path.join(repo, 'bin/nydusd'), ['singleton', '--fscache', cacheDir, '--apisock', sock, '--log-level', 'warn', '--fscache-threads', '4'], { stdio: ['ignore', 'inherit', 'inherit'] });
  await waitForApi();
});

after(async () => {
  for (const d of [...mounted].reverse()) try { umount(d); } catch { /* busy */ }
  if (adoptiveSupervisor) {
    // Not our child: its end is seen in /proc (init reaps it).
    process.kill(adoptiveSupervisor, 'SIGTERM');
    for (let i = 0; i < 200 && fs.existsSync(`/proc/${adoptiveSupervisor}`); i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(fs.existsSync(`/proc/${adoptiveSupervisor}`), false, 'the adoptive supervisor exits on SIGTERM');
    return;
  }
  daemon.kill('SIGTERM');
  const code = await new Promise((r) => daemon.once('exit', r));
  assert.equal(code, 0, 'nydusd exits cleanly on SIGTERM');
});

test('1: a zstd image mounts with -o fsid and reads back identical to the source; amplified reads fetch each chunk once, merged', async () => {
  const img = fresh(plan.images.many);
  await register(img);
  readAll(img, mountImage(img));
  const f = await fetches(img);
  assert.deepEqual(Object.entries(f).filter(([, n]) => n !== 1), [], 'every chunk fetched once');
  // The first scenario: the daemon's backend reads are this image's alone.
  const backend = (await api('GET', '/api/v1/metrics/backend')).body;
  assert.ok(backend.read_count * 3 <= Object.keys(f).length, `adjacent chunks come in merged reads: ${backend.read_count} backend reads for ${Object.keys(f).length} chunks`);
  const { ondemand } = (await api('GET', '/api/v1/daemon')).body;
  assert.ok(ondemand.chunksWrittenByVerifier > 0, `chunks written into the cache file through the OPEN's fd by their verification jobs (${JSON.stringify(ondemand)})`);
});

test('2: two images in one domain share one cache file for their blob; each chunk is fetched once', async () => {
  const [a, b] = [fresh(plan.images.shared1), fresh(plan.images.shared2)];
  const domain = `dom-${seq}`;
  assert.equal(a.blobId, b.blobId, 'the plan gives both images one blob');
  const before = await fetches(a);
  await register(a, domain);
  await register(b, domain);
  readAll(a, mountImage(a, domain));
  readAll(b, mountImage(b, domain));
  const delta = Object.values(fetchDelta(before, await fetches(a)));
  assert.ok(delta.length > 0);
  assert.deepEqual(delta.filter((n) => n !== 1), [], 'no chunk of the shared blob was fetched twice');
  assert.ok((await blobcache(a.blobId)).cache_files.some((f) => f.volume === `erofs,${domain}`), 'one cache file, in the domain volume');
});

for (const order of ['first, second', 'second, first'] as const) {
  test(`2b: two images on one blob without a domain: a cache file each, both read exactly (${order})`, async () => {
    const [a, b] = [fresh(plan.images.shared1), fresh(plan.images.shared2)];
    await register(a);
    await register(b);
    const [da, db] = [mountImage(a), mountImage(b)];
    if (order === 'first, second') {
      readAll(a, da);
      readAll(b, db);
    } else {
      readAll(b, db);
      readAll(a, da);
    }
    const files = (await blobcache(a.blobId)).cache_files;
    const chunks = (await blobcache(a.blobId)).cached.length;
    for (const img of [a, b]) {
      const f = files.find((x) => x.volume === `erofs,${img.id}`);
      assert.ok(f && f.cached_chunks === chunks, `${img.id} has its own cache file holding every chunk (${JSON.stringify(files)})`);
    }
  });
}

test('3: a corrupted chunk gives EIO for its file only', async () => {
  const img = fresh(plan.images.corrupt);
  await register(img);
  const dir = mountImage(img);
  assert.throws(() => fs.readFileSync(path.join(dir, plan.corruptFile)), (e: NodeJS.ErrnoException) => e.code === 'EIO');
  const want = expected(img);
  for (const [k, v] of want) {
    const rel = k.split('/').map((h) => Buffer.from(h, 'hex').toString('latin1')).join('/');
    if (rel === `/${plan.corruptFile}` || !JSON.parse(v).sha256) continue;
    const data = fs.readFileSync(path.join(dir, rel));
    assert.equal(crypto.createHash('sha256').update(data).digest('hex'), JSON.parse(v).sha256, rel);
  }
});

test('4: kill -9 of the daemon during reads; the restarted daemon serves the mount, cached chunks are not fetched again', async () => {
  const img = fresh(plan.images.big);
  await register(img);
  const dir = mountImage(img);
  const start = await fetches(img);
  // A reader that takes its time (1 MiB every 100 ms), so the kill surely lands in the middle of it.
  const slowSha256 = `const fs = require('fs'), h = require('crypto').createHash('sha256'), fd = fs.openSync(process.argv[1], 'r');
    const buf = Buffer.alloc(1 << 20); let n;
    (function step() { n = fs.readSync(fd, buf); if (!n) { console.log(h.digest('hex') + ' ' + process.argv[1]); return; } h.update(buf.subarray(0, n)); setTimeout(step, 100); })();`;
  const reader = spawn(process.execPath, ['-e', slowSha256, path.join(dir, plan.bigFile)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  reader.stdout!.on('data', (d) => (out += d));
  const pid = (await api('GET', '/api/v1/daemon')).body.pid as number;
  // Kill it once a few chunks are in the cache file and the read is still going.
  const ours = async () => (await blobcache(img.blobId)).cache_files.find((f) => f.volume === `erofs,${img.id}`)?.cached ?? [];
  let cachedBefore: number[] = [];
  for (let i = 0; i < 1200 && cachedBefore.length < 3; i++) {
    cachedBefore = await ours();
    if (cachedBefore.length < 3) await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(cachedBefore.length < plan.bigChunks, 'the kill comes while the file is still being read');
  // Held open as nydus-snapshotter's liveness monitor holds one: its closing is the daemon's death to
  // the snapshotter, whose default recover policy then waits for the supervisor's exit.
  const watch = heldConnection(sock);
  await watch.connected;
  process.kill(pid, 'SIGKILL');
  const newPid = await waitForApi(pid);
  assert.notEqual(newPid, pid);
  assert.equal(watch.closed, false, 'the idle API connection stayed open through the worker\'s death');
  assert.equal((await watch.request('/api/v1/daemon')).pid, newPid, 'its first request is answered by the new worker');
  watch.c.destroy();
  const code = await new Promise((r) => reader.once('exit', r));
  assert.equal(code, 0, 'the reader finished after the restart');
  assert.equal(out.split(' ')[0], plan.bigSha256);
  const fetched = fetchDelta(start, await fetches(img));
  assert.ok(cachedBefore.length > 0, 'some chunks were cached before the kill');
  assert.deepEqual(cachedBefore.filter((i) => fetched[i] !== 1), [], 'no chunk cached before the kill was fetched again');
});

test('5: fill, unmount, restart the worker, mount again with prefetch on: zero backend reads, no mark dropped', async () => {
  const img = fresh(plan.images.many);
  await register(img, '', { prefetch: true });
  let dir = mountImage(img);
  readAll(img, dir);
  // Let the whole-blob prefetch finish.
  const chunks = (JSON.parse(execFileSync(path.join(repo, 'bin/nydus-image'), ['inspect', '-R', 'blobs', img.boot], { encoding: 'utf8' })) as Array<{ chunk_count: number }>)[0].chunk_count;
  const ours = async () => (await blobcache(img.blobId)).cache_files.find((f) => f.volume === `erofs,${img.id}`)?.cached_chunks ?? 0;
  for (let i = 0; i < 600 && (await ours()) < chunks; i++) await new Promise((r) => setTimeout(r, 100));
  assert.equal(await ours(), chunks, 'prefetch filled the cache file');
  const before = await fetches(img);
  umount(dir);
  dir = mountImage(img);
  readAll(img, dir);
  await new Promise((r) => setTimeout(r, 1000));
  assert.deepEqual(fetchDelta(before, await fetches(img)), {}, 'remount: nothing fetched');
  umount(dir);
  const pid = (await api('GET', '/api/v1/daemon')).body.pid as number;
  process.kill(pid, 'SIGKILL');
  await waitForApi(pid);
  dir = mountImage(img);
  readAll(img, dir);
  await new Promise((r) => setTimeout(r, 1000));
  assert.deepEqual(fetchDelta(before, await fetches(img)), {}, 'after a worker restart: nothing fetched');
  assert.equal(await ours(), chunks, 'every mark held');
  const daemon = (await api('GET', '/api/v1/daemon')).body;
  assert.equal(daemon.ondemand.staleMarks, 0, 'no mark was found stale');
});

test('6: reference: the exported uncompressed image loop-mounted in the guest gives the same bytes', () => {
  const dir = path.join(scratch, 'mnt-export');
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('mount', ['-t', 'erofs', '-o', 'loop,ro', plan.exported, dir], { stdio: 'pipe' });
  mounted.push(dir);
  assert.deepEqual(diffManifests(expected(plan.images.many), manifest(dir)).slice(0, 10), []);
});

/** A process's parent and its children, from /proc. */
const parentOf = (pid: number) => Number(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[1]);
const childrenOf = (pid: number) => fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);

test('7: the supervisor killed, the worker starts one that adopts it; the worker killed then, a new one serves the mount with the right bytes', async () => {
  const img = fresh(plan.images.big);
  await register(img);
  const dir = mountImage(img);
  const worker = (await api('GET', '/api/v1/daemon')).body.pid as number;
  const exited = new Promise((r) => daemon.once('exit', r));
  daemon.kill('SIGKILL');
  await exited;
  for (let i = 0; i < 100 && !adoptiveSupervisor; i++) {
    adoptiveSupervisor = childrenOf(worker)[0] ?? 0;
    if (!adoptiveSupervisor) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(adoptiveSupervisor, 'the orphaned worker started a supervisor');
  // At once: the adoptive supervisor holds the device from its fork on, and the pipe tells it of the
  // death whenever it comes to read it.
  process.kill(worker, 'SIGKILL');
  const next = await waitForApi(worker);
  assert.equal(parentOf(next), adoptiveSupervisor, 'the new worker is the adoptive supervisor\'s');
  const data = fs.readFileSync(path.join(dir, plan.bigFile));
  assert.equal(crypto.createHash('sha256').update(data).digest('hex'), plan.bigSha256, 'the mount reads the right bytes');
});
