/**
 * nydusd as containerd's nydus-snapshotter drives it in fscache mode, replayed from the snapshotter's
 * source (pkg/manager/daemon_adaptor.go, pkg/daemon/command, pkg/daemon/client.go, pkg/supervisor,
 * config/daemonconfig/fscache.go, pkg/utils/erofs): its command line with a supervisor, its state
 * polling, its PUT body, a plain `fsid=` mount (domain = fsid), sendfd after each mount, then
 *   - a crash: kill -9 of nydusd mid-read, the same command line again (it finds the device held by
 *     the supervisor and its API socket dead, so it waits in INIT), takeover, start;
 *   - an upgrade: a new nydusd with --upgrade on api1.sock, takeover, READY, exit of the old one,
 *     start, the images PUT again;
 * and every file of every image equals its source. The supervisor is kernel-test/guest/supervisor.py,
 * an independent implementation of the snapshotter's. Runs in the kernel-test guest (20-snapshotter.sh).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { manifest, diffManifests } from '../../test/helpers/manifest.ts';
import { apiRequest } from '../../test/helpers/api-client.ts';
import { TestSupervisor } from '../../test/helpers/supervisor.ts';

interface PlanImage { id: string; boot: string; blobDir: string; blobId: string; manifest: string }
interface Plan { images: Record<'many' | 'shared1' | 'shared2' | 'big', PlanImage>; bigFile: string; bigSha256: string }

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const plan: Plan = JSON.parse(fs.readFileSync(path.join(repo, 'kernel-test/.cache/ondemand/plan.json'), 'utf8'));
const root = path.join(process.env.KT_SCRATCH ?? '/tmp', 'snapshotter');
const cacheDir = path.join(process.env.KT_CACHE ?? '/var/cache', 'snapshotter-cache');
const daemonId = 'cv0d0ib8t6jb2pkqnmdg';
const supervisorSock = path.join(root, 'supervisor', `${daemonId}.sock`);
const supervisor = new TestSupervisor(supervisorSock);
const daemons: ChildProcess[] = [];
const mounted: string[] = [];

/** pkg/daemon/command: fields in declaration order, `--name value`, the flag alone. */
function argv(apiSock: string, upgrade: boolean): string[] {
  return ['singleton', '--fscache', cacheDir, ...(upgrade ? ['--upgrade'] : []), '--id', daemonId, '--apisock', apiSock,
    '--log-level', 'info', '--log-rotation-size', '100', '--supervisor', supervisorSock, '--log-file', path.join(root, 'logs', daemonId, 'nydusd.log')];
}

function startNydusd(apiSock: string, upgrade: boolean): ChildProcess {
  const d = spawn(path.join(repo, 'bin/nydusd'), argv(apiSock, upgrade), { stdio: ['ignore', 'inherit', 'inherit'] });
  daemons.push(d);
  return d;
}

const api = (sock: string, method: string, url: string, body?: unknown) => apiRequest(sock, method, url, body);

/** pkg/daemon/daemon.go WaitUntilState, with room for Node's start under TCG. */
async function waitState(sock: string, want: string): Promise<number> {
  let last = '';
  for (let i = 0; i < 600; i++) {
    try {
      const info = (await api(sock, 'GET', '/api/v1/daemon')).body;
      last = info.state;
      if (last === want) return info.pid;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nydusd at ${sock} never reached ${want} (last: ${last || 'no answer'})`);
}

/** Supervisor.FetchDaemonStates: listen, trigger sendfd, receive state and fd. */
async function sendStates(sock: string): Promise<void> {
  await supervisor.listen('recv');
  const r = await api(sock, 'PUT', '/api/v1/daemon/fuse/sendfd');
  assert.equal(r.status, 204, JSON.stringify(r.body));
  assert.match(await supervisor.answer(), /^received [1-9]\d* \d+$/);
}

/** fsid = sha256("nydus-snapshot-" + snapshotID); the default domain is the fsid itself. */
function fsidOf(snapshotId: string): string {
  return crypto.createHash('sha256').update(`nydus-snapshot-${snapshotId}`).digest('hex');
}

/** config/daemonconfig/fscache.go, marshalled as the snapshotter does (every field present). */
function putBody(img: PlanImage, snapshotId: string) {
  const fsid = fsidOf(snapshotId);
  const snap = path.join(root, 'snapshots', snapshotId, 'fs');
  return {
    type: 'bootstrap', id: fsid, domain_id: fsid,
    config: {
      id: fsid, backend_type: 'localfs', backend_config: { readahead: false, dir: img.blobDir, proxy: { fallback: false } },
      cache_type: 'fscache', cache_config: { work_dir: snap },
      prefetch_config: { enable: false, threads_count: 8, merging_size: 1048576, bandwidth_rate: 0, prefetch_all: false },
      metadata_path: img.boot,
    },
  };
}

/** daemon.go sharedErofsMount: PUT, mkdir, mount `fsid=` alone (domain == fsid), then sendfd. */
async function mountImage(sock: string, img: PlanImage, snapshotId: string): Promise<string> {
  const r = await api(sock, 'PUT', '/api/v2/blobs', putBody(img, snapshotId));
  assert.equal(r.status, 204, JSON.stringify(r.body));
  const mnt = path.join(root, 'snapshots', snapshotId, 'mnt');
  fs.mkdirSync(mnt, { recursive: true });
  execFileSync('mount', ['-t', 'erofs', '-o', `fsid=${fsidOf(snapshotId)}`, 'erofs', mnt], { stdio: 'pipe' });
  mounted.push(mnt);
  await sendStates(sock);
  return mnt;
}

function assertTree(img: PlanImage, dir: string): void {
  const want = new Map<string, string>(Object.entries(JSON.parse(fs.readFileSync(img.manifest, 'utf8'))));
  assert.deepEqual(diffManifests(want, manifest(dir)).slice(0, 10), [], `${dir} reads back as ${img.id}'s source`);
}

/** A reader that takes its time (1 MiB every 100 ms), so a kill lands in the middle of it. */
function slowSha256(file: string): { done: Promise<string>; finished: () => boolean } {
  const code = `const fs = require('fs'), h = require('crypto').createHash('sha256'), fd = fs.openSync(process.argv[1], 'r');
    const buf = Buffer.alloc(1 << 20); let n;
    (function step() { n = fs.readSync(fd, buf); if (!n) { console.log(h.digest('hex')); return; } h.update(buf.subarray(0, n)); setTimeout(step, 100); })();`;
  const p = spawn(process.execPath, ['-e', code, file], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let exited = false;
  p.stdout!.on('data', (d) => (out += d));
  return {
    done: new Promise((resolve, reject) => p.once('exit', (c) => (c === 0 ? resolve(out.trim()) : reject(new Error(`reader exited ${c}`))))),
    finished: () => exited || (exited = p.exitCode !== null),
  };
}

before(() => {
  fs.mkdirSync(path.dirname(supervisorSock), { recursive: true });
  fs.mkdirSync(cacheDir, { recursive: true });
});

after(() => {
  for (const m of [...mounted].reverse()) try { execFileSync('umount', [m]); } catch { /* busy */ }
  for (const d of daemons) d.kill('SIGKILL');
  supervisor.stop();
});

test('crash and upgrade under mounted images, as the snapshotter recovers them', { timeout: 900_000 }, async () => {
  const sock0 = path.join(root, 'socket', daemonId, 'api.sock');
  fs.mkdirSync(path.dirname(sock0), { recursive: true });
  // Fresh start: RUNNING by itself, then the snapshotter's sendfd.
  const first = startNydusd(sock0, false);
  const pid0 = await waitState(sock0, 'RUNNING');
  assert.equal(pid0, first.pid, 'with a supervisor, the daemon is the process the snapshotter started');
  await sendStates(sock0);

  const big = await mountImage(sock0, plan.images.big, '11');
  const many = await mountImage(sock0, plan.images.many, '12');
  // Two images on one base layer, each in its own domain (the snapshotter's default).
  const s1 = await mountImage(sock0, plan.images.shared1, '13');
  const s2 = await mountImage(sock0, plan.images.shared2, '14');
  assertTree(plan.images.shared1, s1);
  assertTree(plan.images.shared2, s2);

  // Crash: kill -9 of every nydusd process while a reader is in the middle of a file.
  const reader = slowSha256(path.join(big, plan.bigFile));
  await new Promise((r) => setTimeout(r, 1500));
  assert.ok(!reader.finished(), 'the kill lands while the file is being read');
  process.kill(pid0, 'SIGKILL');
  await new Promise((r) => first.once('exit', r));
  // Failover (pkg/manager/daemon_event.go): the supervisor offers the state, the same command line
  // starts a daemon that must wait in INIT, then takeover and start.
  await supervisor.listen('send');
  startNydusd(sock0, false);
  await waitState(sock0, 'INIT');
  assert.equal((await api(sock0, 'PUT', '/api/v1/daemon/fuse/takeover')).status, 204);
  assert.match(await supervisor.answer(), /^sent \d+$/);
  assert.equal((await api(sock0, 'PUT', '/api/v1/daemon/start')).status, 204);
  const pid1 = await waitState(sock0, 'RUNNING');
  await sendStates(sock0);
  assert.equal(await reader.done, plan.bigSha256, 'the reader blocked across the crash finished with the right bytes');
  assertTree(plan.images.many, many);

  // Upgrade (daemon_event.go doUpgradeDaemon): a new daemon with --upgrade on api1.sock.
  const sock1 = path.join(root, 'socket', daemonId, 'api1.sock');
  await supervisor.listen('send');
  startNydusd(sock1, true);
  await waitState(sock1, 'INIT');
  assert.equal((await api(sock1, 'PUT', '/api/v1/daemon/fuse/takeover')).status, 204);
  assert.match(await supervisor.answer(), /^sent \d+$/);
  await waitState(sock1, 'READY');
  const old = daemons[daemons.length - 2];
  assert.equal(old.pid, pid1);
  const oldExit = new Promise((r) => old.once('exit', r));
  assert.equal((await api(sock0, 'PUT', '/api/v1/daemon/exit')).status, 204);
  await oldExit;
  assert.equal((await api(sock1, 'PUT', '/api/v1/daemon/start')).status, 204);
  await waitState(sock1, 'RUNNING');
  // RecoverRafsInstances: every image PUT again (the same body is no error), sendfd.
  for (const [img, id] of [[plan.images.big, '11'], [plan.images.many, '12'], [plan.images.shared1, '13'], [plan.images.shared2, '14']] as const) {
    const r = await api(sock1, 'PUT', '/api/v2/blobs', putBody(img, id));
    assert.equal(r.status, 204, JSON.stringify(r.body));
  }
  await sendStates(sock1);
  // Every file of every image, served by the upgraded daemon (the page cache dropped first).
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  assertTree(plan.images.many, many);
  assertTree(plan.images.shared1, s1);
  assertTree(plan.images.shared2, s2);
  const whole = crypto.createHash('sha256').update(fs.readFileSync(path.join(big, plan.bigFile))).digest('hex');
  assert.equal(whole, plan.bigSha256);
  // Umount as the snapshotter does: DELETE the domain, umount, DELETE ?blob_id=<fsid> (cull).
  const fsid = fsidOf('12');
  assert.equal((await api(sock1, 'DELETE', `/api/v2/blobs?domain_id=${fsid}`)).status, 204);
  execFileSync('umount', [many]);
  mounted.splice(mounted.indexOf(many), 1);
  const cull = await api(sock1, 'DELETE', `/api/v2/blobs?blob_id=${fsid}`);
  assert.equal(cull.status, 204, JSON.stringify(cull.body));
  assert.deepEqual(fs.readdirSync(path.join(cacheDir, 'cache')).filter((v) => v === `Ierofs,${fsid}`)
    .flatMap((v) => fs.readdirSync(path.join(cacheDir, 'cache', v)).flatMap((f) => fs.readdirSync(path.join(cacheDir, 'cache', v, f))))
    .filter((f) => f === `D${fsid}`), [], 'the bootstrap cache file was culled');
});
