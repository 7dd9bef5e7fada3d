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
import { apiRequest } from '../../test/helpers/api-client.ts';

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

async function register(img: PlanImage, domain = ''): Promise<void> {
  const r = await api('PUT', '/api/v2/blobs', {
    type: 'bootstrap', id: img.id, domain_id: domain,
    config_v2: {
      version: 2, id: img.id, backend: { type: 'localfs', localfs: { dir: img.blobDir } },
      cache: { type: 'fscache', fscache: { work_dir: cacheDir } }, metadata_path: img.boot,
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

async function fetches(img: PlanImage): Promise<Record<string, number>> {
  return (await api('GET', `/api/v1/metrics/blobcache?blob_id=${img.blobId}`)).body.fetches;
}

before(async () => {
  fs.mkdirSync(cacheDir, { recursive: true });
  daemon = spawn(path.join(repo, 'bin/nydusd'), ['singleton', '--fscache', cacheDir, '--apisock', sock, '--log-level', 'warn', '--fscache-threads', '4'], { stdio: ['ignore', 'inherit', 'inherit'] });
  await waitForApi();
});

after(async () => {
  for (const d of [...mounted].reverse()) try { umount(d); } catch { /* busy */ }
  daemon.kill('SIGTERM');
  const code = await new Promise((r) => daemon.once('exit', r));
  assert.equal(code, 0, 'nydusd exits cleanly on SIGTERM');
});

test('1: a zstd image mounts with -o fsid and reads back identical to the source', async () => {
  await register(plan.images.many);
  const dir = mountImage(plan.images.many);
  assert.deepEqual(diffManifests(expected(plan.images.many), manifest(dir, { skipRootTimes: false })).slice(0, 10), []);
});

test('2: two images in one domain share their blob; each chunk is fetched once', async () => {
  await register(plan.images.shared1, 'dom');
  await register(plan.images.shared2, 'dom');
  assert.equal(plan.images.shared1.blobId, plan.images.shared2.blobId, 'the plan gives both images one blob');
  const d1 = mountImage(plan.images.shared1, 'dom');
  const d2 = mountImage(plan.images.shared2, 'dom');
  assert.deepEqual(diffManifests(expected(plan.images.shared1), manifest(d1)).slice(0, 10), []);
  assert.deepEqual(diffManifests(expected(plan.images.shared2), manifest(d2)).slice(0, 10), []);
  const counts = Object.values(await fetches(plan.images.shared1));
  assert.ok(counts.length > 0);
  assert.deepEqual(counts.filter((n) => n !== 1), [], 'no chunk of the shared blob was fetched twice');
});

test('3: a corrupted chunk gives EIO for its file only', async () => {
  await register(plan.images.corrupt);
  const dir = mountImage(plan.images.corrupt);
  assert.throws(() => fs.readFileSync(path.join(dir, plan.corruptFile)), (e: NodeJS.ErrnoException) => e.code === 'EIO');
  const want = expected(plan.images.corrupt);
  for (const [k, v] of want) {
    const rel = k.split('/').map((h) => Buffer.from(h, 'hex').toString('latin1')).join('/');
    if (rel === `/${plan.corruptFile}` || !JSON.parse(v).sha256) continue;
    const data = fs.readFileSync(path.join(dir, rel));
    assert.equal(crypto.createHash('sha256').update(data).digest('hex'), JSON.parse(v).sha256, rel);
  }
});

test('5: unmount and mount again warm: zero backend reads', async () => {
  const before = await fetches(plan.images.many);
  umount(path.join(scratch, `mnt-${plan.images.many.id}`));
  const dir = mountImage(plan.images.many);
  assert.deepEqual(diffManifests(expected(plan.images.many), manifest(dir)).slice(0, 10), []);
  assert.deepEqual(await fetches(plan.images.many), before);
});

test('4: kill -9 of the daemon during reads; the restarted daemon serves the mount, cached chunks are not fetched again', async () => {
  await register(plan.images.big);
  const dir = mountImage(plan.images.big);
  // A reader that takes its time (1 MiB every 100 ms), so the kill surely lands in the middle of it.
  const slowSha256 = `const fs = require('fs'), h = require('crypto').createHash('sha256'), fd = fs.openSync(process.argv[1], 'r');
    const buf = Buffer.alloc(1 << 20); let n;
    (function step() { n = fs.readSync(fd, buf); if (!n) { console.log(h.digest('hex') + ' ' + process.argv[1]); return; } h.update(buf.subarray(0, n)); setTimeout(step, 100); })();`;
  const reader = spawn(process.execPath, ['-e', slowSha256, path.join(dir, plan.bigFile)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  reader.stdout!.on('data', (d) => (out += d));
  const pid = (await api('GET', '/api/v1/daemon')).body.pid as number;
  // Kill it once a few chunks are in the cache file and the read is still going.
  let cachedBefore: number[] = [];
  for (let i = 0; i < 1200 && cachedBefore.length < 3; i++) {
    cachedBefore = (await api('GET', `/api/v1/metrics/blobcache?blob_id=${plan.images.big.blobId}`)).body.cached as number[];
    if (cachedBefore.length < 3) await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(cachedBefore.length < plan.bigChunks, 'the kill comes while the file is still being read');
  process.kill(pid, 'SIGKILL');
  const newPid = await waitForApi(pid);
  assert.notEqual(newPid, pid);
  const code = await new Promise((r) => reader.once('exit', r));
  assert.equal(code, 0, 'the reader finished after the restart');
  assert.equal(out.split(' ')[0], plan.bigSha256);
  const after = await fetches(plan.images.big);
  assert.ok(cachedBefore.length > 0, 'some chunks were cached before the kill');
  assert.deepEqual(cachedBefore.filter((i) => after[i] !== 1), [], 'no chunk cached before the kill was fetched again');
});

test('6: reference: the exported uncompressed image loop-mounted in the guest gives the same bytes', () => {
  const dir = path.join(scratch, 'mnt-export');
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('mount', ['-t', 'erofs', '-o', 'loop,ro', plan.exported, dir], { stdio: 'pipe' });
  mounted.push(dir);
  assert.deepEqual(diffManifests(expected(plan.images.many), manifest(dir)).slice(0, 10), []);
});
