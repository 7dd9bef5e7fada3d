/**
 * nydusd's lifecycle as nydus-snapshotter drives it, on a host without cachefiles: a daemon started
 * with --upgrade waits in INIT without touching /dev/cachefiles, takes state and fd over from a
 * supervisor (an independent Python implementation of the snapshotter's), rebuilds its images,
 * asks the device to resend (`restore`), starts, hands state and fd back on sendfd, and exits on
 * request. A FIFO stands in for the device: what the daemon writes to it is read back here. The real
 * kernel path (kill -9 under a mounted image, upgrade) is the guest's scenario.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { createImage } from '../src/builder/create.ts';
import { fscacheBinding } from '../native/fscache/index.ts';
import { hardlinkHeavyImage, prand, tmpDir } from './helpers/fixtures.ts';
import { DaemonState } from '../src/daemon/state.ts';
import { apiRequest as api } from './helpers/api-client.ts';
import { repoRoot } from './helpers/cli.ts';
import { TestSupervisor } from './helpers/supervisor.ts';
import { openDeviceWhenFree } from '../src/daemon/run.ts';
import { NydusError } from '../erofs/errors.ts';

const work = tmpDir('lifecycle');
after(() => fs.rmSync(work, { recursive: true, force: true }));

async function waitState(sock: string, want: string): Promise<void> {
  let last = '';
  for (let i = 0; i < 300; i++) {
    try {
      last = (await api(sock, 'GET', '/api/v1/daemon')).body.state;
      if (last === want) return;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`daemon never reached ${want} (last: ${last || 'no answer'})`);
}

test('--upgrade: INIT, takeover from the supervisor, READY, start, RUNNING, sendfd back, exit', { timeout: 120_000 }, async () => {
  const src = path.join(work, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'f'), prand(300_000, 3));
  const blobDir = path.join(work, 'blobs');
  const boot = path.join(work, 'img.boot');
  createImage({ source: src, bootstrap: boot, blobDir, chunkSize: 0x10000, compressor: 'zstd', digester: 'blake3' });
  const cacheDir = path.join(work, 'cache');
  const supSock = path.join(work, 'supervisor.sock');
  const apiSock = path.join(work, 'api1.sock');
  // The state a previous nydus-ts daemon handed to the supervisor: one image, its PUT body as the snapshotter sends it.
  const fsid = 'a'.repeat(64);
  const body = {
    type: 'bootstrap', id: fsid, domain_id: fsid,
    config: {
      id: fsid, backend_type: 'localfs', backend_config: { readahead: false, dir: blobDir, proxy: { fallback: false } }, cache_type: 'fscache',
      cache_config: { work_dir: cacheDir }, prefetch_config: { enable: false, threads_count: 8, merging_size: 1048576, bandwidth_rate: 0, prefetch_all: false },
      metadata_path: boot,
    },
  };
  const handed = Buffer.from(JSON.stringify({ format: 'nydus-ts-fscache-state', version: 1, id: 'old', cacheDir, threads: 4, images: [body] }));
  // The device stand-in: a FIFO whose read end stays here.
  const fifo = path.join(work, 'device');
  execFileSync('mkfifo', [fifo]);
  const readEnd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const devFd = fs.openSync(fifo, fs.constants.O_WRONLY);
  const sup = new TestSupervisor(supSock);
  try {
    await sup.listen('recv');
    await fscacheBinding().sendState(supSock, handed, devFd, 5000);
    assert.match(await sup.answer(), /^received \d+ \d+$/);

    const d = spawn(path.join(repoRoot, 'bin/nydusd'), ['singleton', '--fscache', cacheDir, '--upgrade', '--id', 'upgraded', '--apisock', apiSock,
      '--log-level', 'info', '--log-rotation-size', '100', '--supervisor', supSock, '--log-file', path.join(work, 'logs/nydusd.log')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    d.stdout!.on('data', (c) => (out += c));
    d.stderr!.on('data', (c) => (out += c));
    const exited = new Promise<number | null>((r) => d.once('exit', (code) => r(code)));
    await waitState(apiSock, 'INIT');
    const info = (await api(apiSock, 'GET', '/api/v1/daemon')).body;
    assert.deepEqual([info.id, info.supervisor, typeof info.version.git_commit], ['upgraded', supSock, 'string']);
    assert.equal((await api(apiSock, 'PUT', '/api/v1/daemon/start')).status, 400, 'start before takeover is refused');

    await sup.listen('send');
    assert.equal((await api(apiSock, 'PUT', '/api/v1/daemon/fuse/takeover')).status, 204);
    assert.equal(await sup.answer(), `sent ${handed.length}`);
    assert.equal((await api(apiSock, 'GET', '/api/v1/daemon')).body.state, 'READY');
    assert.deepEqual((await api(apiSock, 'GET', '/api/v2/blobs')).body.map((e: { id: string }) => e.id), [fsid], 'the image came back with the state');
    // The snapshotter registers its images again after an upgrade: the same body is no error.
    assert.equal((await api(apiSock, 'PUT', '/api/v2/blobs', body)).status, 204);
    assert.equal((await api(apiSock, 'PUT', '/api/v1/daemon/start')).status, 204);
    assert.equal((await api(apiSock, 'GET', '/api/v1/daemon')).body.state, 'RUNNING');
    const buf = Buffer.alloc(64);
    const n = fs.readSync(readEnd, buf);
    assert.equal(buf.subarray(0, n).toString(), 'restorerestore', 'the device was asked to resend at takeover and again at start');

    // sendfd: the supervisor gets the current state and the same device.
    await sup.listen('recv');
    assert.equal((await api(apiSock, 'PUT', '/api/v1/daemon/fuse/sendfd')).status, 204);
    const [, bytes, ino] = /^received (\d+) (\d+)$/.exec(await sup.answer()) ?? [];
    assert.equal(Number(ino), fs.fstatSync(devFd).ino, 'the fd sent is the device taken over');
    await sup.listen('send');
    const kept = await fscacheBinding().receiveState(supSock, 1 << 20, 5000);
    assert.equal(await sup.answer(), `sent ${bytes}`);
    fs.closeSync(kept.fd);
    const state = JSON.parse(kept.data.toString());
    assert.deepEqual([state.format, state.cacheDir, state.images.map((b: { id: string }) => b.id)], ['nydus-ts-fscache-state', cacheDir, [fsid]]);

    assert.equal((await api(apiSock, 'PUT', '/api/v1/daemon/exit')).status, 204);
    assert.equal(await exited, 0, out);
    assert.ok(fs.readFileSync(path.join(work, 'logs/nydusd.log'), 'utf8').includes('took over from the supervisor'), 'logs go to --log-file');
    assert.equal(out, '', 'nothing on stdout or stderr with --log-file');
  } finally {
    sup.stop();
    fs.closeSync(readEnd);
    fs.closeSync(devFd);
  }
});

test('--upgrade: the API answers in INIT at once, while the images of the state database are still being registered again (the snapshotter\'s failover waits 2 s for INIT)', { timeout: 180_000 }, async () => {
  const heavy = hardlinkHeavyImage(path.join(work, 'heavy'));
  const cacheDir = path.join(work, 'cache-restore');
  const apiSock = path.join(work, 'api-restore.sock');
  // A node with many images: each re-validated at start (a bootstrap of 3,000 entries and 16,384 chunks).
  const images = 16;
  const state = new DaemonState(path.join(cacheDir, 'nydus-ts'));
  for (let i = 0; i < images; i++) {
    const id = `img${i}`;
    state.saveImage(id, {
      type: 'bootstrap', id, domain_id: id,
      config_v2: { version: 2, id, backend: { type: 'localfs', localfs: { dir: heavy.blobDir } }, cache: { type: 'fscache', fscache: { work_dir: cacheDir } }, metadata_path: heavy.bootstrap },
    });
  }
  state.close();
  const d = spawn(path.join(repoRoot, 'bin/nydusd'), ['singleton', '--fscache', cacheDir, '--upgrade', '--id', 'restoring', '--apisock', apiSock,
    '--supervisor', path.join(work, 'no-supervisor.sock'), '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const exited = new Promise<number | null>((r) => d.once('exit', (code) => r(code)));
  try {
    await waitState(apiSock, 'INIT');
    const first = (await api(apiSock, 'GET', '/api/v2/blobs')).body.length;
    assert.ok(first < images, `the API answered before the restore ended (${first} of ${images} images back then)`);
    for (let i = 0; i < 600 && (await api(apiSock, 'GET', '/api/v2/blobs')).body.length < images; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal((await api(apiSock, 'GET', '/api/v2/blobs')).body.length, images, 'every image came back');
  } finally {
    d.kill('SIGTERM');
    await exited;
  }
});

test('a starting daemon waits for /dev/cachefiles held by one that is stopping (busy, nothing at its API socket\'s path: the snapshotter removed it and started the next), at most 5 s; busy with a socket there, or another failure, is the error at once', async () => {
  const busy = () => new NydusError('cannot bind the fscache cache at /x: EBUSY', undefined, 'EBUSY');
  const sock = path.join(work, 'when-free.sock');
  const opts = { apiSock: sock, fscacheDir: '/x', tag: '' };
  /** A device busy `n` times, then free; counts the opens. */
  const device = (n: number, err = busy) => {
    const d = { opens: 0, open: () => {
      if (++d.opens <= n) throw err();
      return 'bound';
    } };
    return d;
  };
  // Busy twice, the socket gone: bound on the third try, some 400 ms on.
  const freed = device(2);
  const t0 = Date.now();
  assert.equal(await openDeviceWhenFree(opts, freed.open, 5_000), 'bound');
  assert.equal(freed.opens, 3);
  assert.ok(Date.now() - t0 >= 350, `waited between tries (${Date.now() - t0} ms)`);
  // Busy for good: the EBUSY error once the wait is over (here 1 s), not before.
  const held = device(Infinity);
  const t1 = Date.now();
  await assert.rejects(openDeviceWhenFree(opts, held.open, 1_000), /EBUSY/);
  assert.ok(Date.now() - t1 >= 1_000 && held.opens >= 5, `tried for the whole wait (${Date.now() - t1} ms, ${held.opens} tries)`);
  // Another failure: at once.
  const denied = device(1, () => new NydusError('cannot bind the fscache cache at /x: EACCES', undefined, 'EACCES'));
  await assert.rejects(openDeviceWhenFree(opts, denied.open, 5_000), /EACCES/);
  assert.equal(denied.opens, 1);
  // Busy while a daemon answers at the socket (it serves, it is not stopping): at once.
  const server = net.createServer((c) => c.end());
  await new Promise<void>((r) => server.listen(sock, r));
  try {
    const serving = device(Infinity);
    await assert.rejects(openDeviceWhenFree(opts, serving.open, 5_000), /EBUSY/);
    assert.equal(serving.opens, 1);
  } finally {
    await new Promise((r) => server.close(r));
  }
  // Busy, a socket file nobody answers at (a daemon that died): not a stopping daemon's, at once too.
  spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(sock)}, () => process.kill(process.pid, 'SIGKILL'))`]);
  assert.ok(fs.lstatSync(sock).isSocket(), 'a killed listener left its socket file');
  const stale = device(Infinity);
  await assert.rejects(openDeviceWhenFree(opts, stale.open, 5_000), /EBUSY/);
  assert.equal(stale.opens, 1);
  fs.rmSync(sock, { force: true });
  // No API socket configured: nothing tells a stopping daemon from a serving one; at once.
  const noSock = device(Infinity);
  await assert.rejects(openDeviceWhenFree({ apiSock: '', fscacheDir: '/x', tag: '' }, noSock.open, 5_000), /EBUSY/);
  assert.equal(noSock.opens, 1);
});
