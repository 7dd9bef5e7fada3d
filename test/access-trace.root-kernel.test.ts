/**
 * Trace-driven prefetch end to end on the host kernel (fanotify front end, Linux >= 6.14): an image
 * mounted lazily, a few files read by other processes, the trace fetched through nydus's API and
 * `nydusctl`, and a new image built from nydusctl's paths with `--prefetch-policy fs`: its prefetch
 * table lists them and their data comes first in its blob.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFile, execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { prand, tmpDir } from './helpers/fixtures.ts';
import { mustRun, repoRoot } from './helpers/cli.ts';
import { apiRequest } from './helpers/api-client.ts';
import { assertChunksFirst } from './helpers/blob-order.ts';
import { type FanotifyImage, isMounted, localfsBackend, startFanotifyDaemon, waitFor } from './helpers/fanotify-daemon.ts';

const work = tmpDir('access-trace-kernel');
const daemons: ChildProcess[] = [];
const mounts: string[] = [];
const src = path.join(work, 'src');

/** The files read, in this order (the second one only in part). */
const READ = ['/etc/app.conf', '/usr/lib/libbig.so', '/usr/bin/app', '/usr/share/data/b.dat'];

before(() => {
  const kernel = execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();
  const [maj, min] = kernel.split('.').map(Number);
  assert.ok(maj > 6 || (maj === 6 && min >= 14), `fanotify pre-content events need Linux >= 6.14; this kernel is ${kernel}`);
  const put = (p: string, data: Buffer) => {
    fs.mkdirSync(path.dirname(path.join(src, p)), { recursive: true });
    fs.writeFileSync(path.join(src, p), data);
  };
  put('/etc/app.conf', prand(3000, 1));
  put('/etc/other.conf', prand(2000, 2));
  put('/usr/bin/app', prand(400_000, 3));
  put('/usr/bin/tool', prand(500_000, 4));
  put('/usr/lib/libbig.so', prand(3 * 1024 * 1024 + 100, 5));
  // Files nobody reads, more than the amplification window: the cache file stays marked (every read seen).
  for (let i = 0; i < 12; i++) put(`/usr/share/data/${String.fromCharCode(97 + i)}.dat`, prand(700_000, 10 + i));
  put('/var/empty-later', Buffer.alloc(0));
});

after(() => {
  for (const d of daemons) if (d.exitCode === null && d.signalCode === null) d.kill('SIGTERM');
  for (const m of mounts) if (isMounted(m)) spawnSync('umount', ['-l', m]);
  fs.rmSync(work, { recursive: true, force: true });
});

function build(name: string, list?: string): FanotifyImage {
  const blobDir = path.join(work, `${name}-blobs`);
  const boot = path.join(work, `${name}.boot`);
  mustRun('nydus-image', ['create', '-B', boot, '-D', blobDir, '--compressor', 'zstd', ...(list === undefined ? [] : ['--prefetch-policy', 'fs']), src], { input: list });
  return { boot, blobDir, blobId: fs.readdirSync(blobDir)[0] };
}

test('root-kernel fanotify: the files read on a lazy mount come back in read order from the API and nydusctl, and an image built from that list has them first', async () => {
  const img = build('first');
  const d = await startFanotifyDaemon(path.join(work, 'd'), img, localfsBackend(img), { daemons, mounts }, { batch_size: 131072 });
  // Read by other processes, as a container would (the daemon's own reads are never accesses).
  const run = promisify(execFile);
  for (const f of READ) {
    const file = path.join(d.mnt, f);
    if (f === '/usr/lib/libbig.so') await run('dd', [`if=${file}`, 'of=/dev/null', 'bs=64k', 'count=2', 'status=none']);
    else assert.ok((await run('sha256sum', [file], { encoding: 'utf8' })).stdout.startsWith(execFileSync('sha256sum', [path.join(src, f)], { encoding: 'utf8' }).split(' ')[0]), `${f} reads as the source`);
  }
  // Listing directories and stat reads only the bootstrap: no file is traced for them.
  await run('ls', ['-lR', d.mnt]);

  const pattern = await apiRequest(d.sock, 'GET', `/api/v1/metrics/pattern?id=${encodeURIComponent(d.mnt)}`);
  assert.equal(pattern.status, 200, JSON.stringify(pattern.body));
  assert.deepEqual(pattern.body.map((p: { path: string }) => p.path), READ, 'the files in the order they were first read');
  const stat = fs.statSync(path.join(d.mnt, '/usr/bin/app'));
  assert.equal(pattern.body[2].ino, stat.ino, 'ino is the inode number the kernel shows');
  for (const p of pattern.body) assert.ok(p.nr_read >= 1 && p.first_access_time_secs > 0, JSON.stringify(p));

  const files = await apiRequest(d.sock, 'GET', `/api/v1/metrics/files?id=${encodeURIComponent(d.mnt)}`);
  const big = Object.values(files.body as Record<string, { path: string; data_read: number }>).find((f) => f.path === '/usr/lib/libbig.so')!;
  assert.equal(big.data_read, 1024 * 1024, 'of the 4-chunk file only its first chunk was read');
  const latest = await apiRequest(d.sock, 'GET', `/api/v1/metrics/files?id=${encodeURIComponent(d.mnt)}&latest=true`);
  const expand = (r: number[]) => (r.length === 1 ? r : Array.from({ length: r[1] - r[0] + 1 }, (_, i) => r[0] + i));
  assert.deepEqual((latest.body as number[][]).flatMap(expand), pattern.body.map((p: { ino: number }) => p.ino).sort((a: number, b: number) => a - b), `nydus's latest read files: ${JSON.stringify(latest.body)}`);

  // nydusctl's paths are nydus-image's prefetch list.
  const list = (await run(path.join(repoRoot, 'bin/nydusctl'), ['--sock', d.sock, 'metrics', 'pattern', '--id', d.mnt, '--paths'], { encoding: 'utf8' })).stdout;
  assert.equal(list, READ.join('\n') + '\n');
  const next = build('second', list);
  const table = JSON.parse(mustRun('nydus-image', ['inspect', '-B', next.boot, '-R', 'prefetch']).stdout) as Array<{ path: string[] }>;
  assert.deepEqual(table.map((e) => e.path), READ.map((p) => [p]), 'the prefetch table lists the traced files in order');
  const listed = assertChunksFirst(next.boot, READ);
  mustRun('nydus-image', ['check', '-B', next.boot, '-D', next.blobDir]);

  // Mounted with prefetch on, the new image's traced files are fetched before any read, and only they;
  // the daemon's own reads (the one that gets it a writer fd) are no accesses.
  const p = await startFanotifyDaemon(path.join(work, 'p'), next, localfsBackend(next), { daemons, mounts }, { prefetch: { enable: true } });
  const want = listed.map((c) => String(c.chunk_index)).sort();
  const fetched = async () => Object.keys((await apiRequest(p.sock, 'GET', `/api/v1/metrics/blobcache?blob_id=${next.blobId}`)).body.fetches).sort();
  await waitFor('the prefetch of the traced files', async () => (await fetched()).length >= want.length);
  assert.deepEqual(await fetched(), want, 'prefetch fetched the traced files\' chunks, the first of the blob');
  assert.deepEqual((await apiRequest(p.sock, 'GET', '/api/v1/metrics/pattern')).body, [], 'prefetch is no access');

  const del = await apiRequest(d.sock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(d.mnt)}`);
  assert.equal(del.status, 204);
  const gone = await apiRequest(d.sock, 'GET', `/api/v1/metrics/pattern?id=${encodeURIComponent(d.mnt)}`);
  assert.equal(gone.status, 404, 'an unmounted image has no trace');
});
