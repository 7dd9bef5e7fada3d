/**
 * nydusd --fanotify on the host kernel (root, Linux >= 6.14) against bad input and failures: a request
 * target that is no path, mountpoints and directories it must refuse, a flood of idle API connections,
 * a journal naming impossible fds, a second daemon on the same directory, a damaged state database,
 * and a supervisor that gives up on its workers. Whatever happens, no lazy mount is left behind
 * without its daemon (its unfetched ranges would read as zeros), and no reader gets wrong bytes.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { prand, tmpDir } from './helpers/fixtures.ts';
import { mustRun, repoRoot } from './helpers/cli.ts';
import { readMounted } from './helpers/bounded-read.ts';
import { apiRequest, rawHttp, type ApiResponse } from './helpers/api-client.ts';
import { type FanotifyDaemon, type FanotifyImage, fanotifyConfig, isMounted, localfsBackend, startFanotifyDaemon, waitFor } from './helpers/fanotify-daemon.ts';
import { PLAN_STORE_FILE } from '../src/daemon/plan-store.ts';

const work = tmpDir('hostile');
const daemons: ChildProcess[] = [];
const mounts: string[] = [];
let img: FanotifyImage;
const big = prand(3 << 20, 41);
const small = prand(100_000, 42);

before(() => {
  const kernel = execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();
  const [maj, min] = kernel.split('.').map(Number);
  assert.ok(maj > 6 || (maj === 6 && min >= 14), `fanotify pre-content events need Linux >= 6.14; this kernel is ${kernel}`);
  const src = path.join(work, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'big.bin'), big);
  fs.writeFileSync(path.join(src, 'small.bin'), small);
  const blobDir = path.join(work, 'blobs');
  const boot = path.join(work, 'img.boot');
  mustRun('nydus-image', ['create', '-t', 'dir-rafs', '-B', boot, '-D', blobDir, '--compressor', 'zstd', src]);
  img = { boot, blobDir, blobId: fs.readdirSync(blobDir)[0] };
});

/** The supervisor's worker (its child running nydusd, not tsx's esbuild). */
function workerOf(supervisor: number): number | undefined {
  let children: number[];
  try {
    children = fs.readFileSync(`/proc/${supervisor}/task/${supervisor}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return undefined;
  }
  return children.find((c) => {
    try {
      return fs.readFileSync(`/proc/${c}/cmdline`, 'utf8').includes('nydusd');
    } catch {
      return false;
    }
  });
}

function exited(proc: ChildProcess): boolean {
  return proc.exitCode !== null || proc.signalCode !== null;
}

/** The exit code, or a string saying it still runs after `ms`. */
function exitCode(proc: ChildProcess, ms: number): Promise<number | null | string> {
  if (exited(proc)) return Promise.resolve(proc.exitCode);
  return Promise.race([
    new Promise<number | null>((r) => proc.once('exit', (code) => r(code))),
    new Promise<string>((r) => setTimeout(() => r(`still running after ${ms} ms`), ms)),
  ]);
}

after(async () => {
  // SIGTERM first (the daemon unmounts); whatever is stuck (a worker blocked before these fixes) is killed.
  for (const d of daemons) if (!exited(d)) d.kill('SIGTERM');
  for (const d of daemons) {
    if (typeof await exitCode(d, 10_000) !== 'string') continue;
    const w = workerOf(d.pid!);
    if (w) process.kill(w, 'SIGKILL');
    d.kill('SIGKILL');
  }
  for (const m of mounts.reverse()) for (let i = 0; i < 5 && isMounted(m); i++) spawnSync('umount', ['-l', m]);
  fs.rmSync(work, { recursive: true, force: true });
});

function startDaemon(name: string): Promise<FanotifyDaemon> {
  return startFanotifyDaemon(path.join(work, name), img, localfsBackend(img), { daemons, mounts });
}

/** An API call that gives up after `ms` (a request the worker never answers must fail the test, not hang it). */
function call(sock: string, method: string, url: string, body?: unknown, ms = 10_000): Promise<ApiResponse> {
  return Promise.race([
    apiRequest(sock, method, url, body),
    new Promise<ApiResponse>((_, reject) => setTimeout(() => reject(new Error(`${method} ${url}: no answer within ${ms} ms`)), ms)),
  ]);
}

const workerPid = async (sock: string) => (await call(sock, 'GET', '/api/v1/daemon')).body.pid as number;

test('root-kernel hostile: a request target that is no path is a 400, again and again; the worker lives', async () => {
  const d = await startDaemon('target');
  const worker = await workerPid(d.sock);
  for (let i = 0; i < 6; i++) {
    assert.match((await rawHttp(d.sock, 'GET //%%%/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')).split('\r\n')[0], /^HTTP\/1\.1 400 /, `bad target ${i}`);
  }
  assert.equal(await workerPid(d.sock), worker, 'the same worker still serves');
  assert.deepEqual(readMounted(path.join(d.mnt, 'small.bin')), small, 'and its mount reads right');
});

/** POST /api/v1/mount of the test image at `mountpoint`, with a config whose cache is at `cacheDir`. */
function postMount(d: FanotifyDaemon, mountpoint: string, cacheDir: string, source = img.boot): Promise<ApiResponse> {
  return call(d.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(mountpoint)}`,
    { source, fs_type: 'rafs', config: JSON.stringify(fanotifyConfig(cacheDir, localfsBackend(img))) });
}

/** A mount the daemon refused: nydusd's answer to a mount that fails (500), naming what. */
async function refused(what: string, r: Promise<ApiResponse>, message: RegExp): Promise<void> {
  const { status, body } = await r;
  assert.equal(status, 500, `${what}: ${JSON.stringify(body)}`);
  assert.match(body.message, message, what);
}

test('root-kernel hostile: mountpoints on pseudo file systems, over the daemon\'s own files or the bootstrap, relative, NUL or over-long, and a missing bootstrap are refused naming them (500, as nydusd answers a mount that fails); a body or query nydusd cannot parse is a 400', async () => {
  const d = await startDaemon('mountpoints');
  const worker = await workerPid(d.sock);
  const free = path.join(work, 'mp-free');
  fs.mkdirSync(free);
  const cache = (n: number) => path.join(work, `mp-cache${n}`);
  await refused('relative', postMount(d, 'mp-free', cache(1)), /mountpoint.* "mp-free" must be an absolute path/);
  await refused('NUL', postMount(d, `${free}\0x`, cache(2)), /mountpoint.* holds a NUL byte/);
  await refused('over-long', postMount(d, `/${'a'.repeat(5000)}`, cache(3)), /mountpoint.* is 5001 bytes long/);
  // A proc file system of our own: mounting over it (what mountpoint=/proc did) harms nothing else.
  const procDir = path.join(work, 'proc');
  fs.mkdirSync(procDir);
  execFileSync('mount', ['-t', 'proc', 'proc', procDir]);
  mounts.push(procDir);
  await refused('proc', postMount(d, procDir, cache(4)), /mountpoint .*proc is on proc, a pseudo file system/);
  await refused('over the socket and the state', postMount(d, path.dirname(d.sock), cache(5)), /mountpoint .* would hide (the API socket|the daemon's directory)/);
  const bootDir = path.join(work, 'bootdir');
  fs.mkdirSync(bootDir);
  fs.copyFileSync(img.boot, path.join(bootDir, 'img.boot'));
  mounts.push(bootDir);
  await refused('over the bootstrap', postMount(d, bootDir, cache(6), path.join(bootDir, 'img.boot')), /mountpoint .*bootdir would hide the bootstrap/);
  mounts.push(free);
  await refused('missing bootstrap', postMount(d, free, cache(7), path.join(work, 'nope.boot')), /bootstrap .*nope\.boot does not exist/);
  await refused('relative bootstrap', postMount(d, free, cache(8), 'img.boot'), /body\.source .* must be an absolute path/);
  await refused('a config that is no config', call(d.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(free)}`, { source: img.boot, fs_type: 'rafs', config: '{"version": 2' }), /body\.config/);
  const badRequest = async (what: string, r: Promise<ApiResponse>, message: RegExp) => {
    const { status, body } = await r;
    assert.equal(status, 400, `${what}: ${JSON.stringify(body)}`);
    assert.match(body.message, message, what);
  };
  await badRequest('no source', call(d.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(free)}`, { fs_type: 'rafs', config: '{}' }), /body\.source/);
  await badRequest('a source that is no string', call(d.sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(free)}`, { source: 7, config: '{}' }), /body\.source/);
  await badRequest('no mountpoint', call(d.sock, 'POST', '/api/v1/mount', { source: img.boot, config: '{}' }), /'mountpoint' should be specified/);
  await badRequest('DELETE without a mountpoint', call(d.sock, 'DELETE', '/api/v1/mount'), /'mountpoint' should be specified/);
  assert.equal(fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4] === procDir).length, 1, 'nothing was mounted over the proc mount');
  for (const dir of [free, bootDir, path.dirname(d.sock)]) assert.equal(isMounted(dir), false, dir);
  assert.equal(await workerPid(d.sock), worker, 'the same worker still serves');
});

test('root-kernel hostile: a cache work_dir under /proc is refused naming it, at once', async () => {
  const d = await startDaemon('workdir');
  const free = path.join(work, 'wd-free');
  fs.mkdirSync(free);
  mounts.push(free);
  await refused('cache work_dir on /proc', postMount(d, free, '/proc/nydus-hostile-probe'), /cache work_dir \/proc\/nydus-hostile-probe is on proc/);
  assert.equal(isMounted(free), false);
  assert.equal((await call(d.sock, 'GET', '/api/v1/daemon')).status, 200, 'the worker still answers');
});

test('root-kernel hostile: --fanotify and --log-file on /proc are refused at start, naming them', () => {
  const base = path.join(work, 'procstart');
  fs.mkdirSync(path.join(base, 'mnt'), { recursive: true });
  fs.writeFileSync(path.join(base, 'config.json'), JSON.stringify(fanotifyConfig(path.join(base, 'cache'), localfsBackend(img))));
  const args = (dir: string, log: string) => ['--fanotify', dir, '--config', path.join(base, 'config.json'), '--bootstrap', img.boot, '--mountpoint', path.join(base, 'mnt'), '--log-file', log];
  for (const [what, a, message] of [
    ['state dir', args('/proc/nydus-hostile-state', path.join(base, 'log')), /--fanotify directory \/proc\/nydus-hostile-state is on proc/],
    ['log file', args(path.join(base, 'state'), '/proc/nydus-hostile-log/x.log'), /--log-file directory \/proc\/nydus-hostile-log is on proc/],
  ] as const) {
    const r = spawnSync(path.join(repoRoot, 'bin/nydusd'), a, { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });
    assert.equal(r.status, 1, `${what}: ${r.error?.message ?? r.stderr}`);
    assert.match(r.stderr, message, what);
  }
  assert.equal(isMounted(path.join(base, 'mnt')), false);
});

test('root-kernel hostile: thousands of idle API connections take no fd the kernel\'s events need: the mount reads right through them', async () => {
  const d = await startDaemon('flood');
  const worker = await workerPid(d.sock);
  // A tight open-files limit makes the flood bite soon (the worker needs far fewer fds than this).
  execFileSync('prlimit', ['--pid', String(worker), '--nofile=600:600']);
  const conns: net.Socket[] = [];
  try {
    await Promise.all(Array.from({ length: 900 }, () => new Promise<void>((resolve) => {
      const c = net.connect(d.sock);
      conns.push(c);
      c.on('connect', () => resolve());
      c.on('error', () => resolve());
      c.on('close', () => resolve());
    })));
    await new Promise((r) => setTimeout(r, 500));
    const fds = fs.readdirSync(`/proc/${worker}/fd`).length;
    assert.ok(fds < 400, `the worker holds ${fds} fds`);
    const read = spawnSync('cmp', ['-', path.join(d.mnt, 'big.bin')], { input: big, timeout: 20_000 });
    assert.equal(read.status, 0, `the mount reads right during the flood (${read.stderr})`);
  } finally {
    for (const c of conns) c.destroy();
  }
  await waitFor('the API to answer again', async () => (await call(d.sock, 'GET', '/api/v1/daemon').catch(() => null))?.status === 200, 10_000);
  assert.equal(await workerPid(d.sock), worker, 'the same worker serves');
});

test('root-kernel hostile: journal records of fds no process can have are skipped with a warning; the next worker serves on, no crash loop', async () => {
  const d = await startDaemon('journal');
  const worker = await workerPid(d.sock);
  fs.writeFileSync(path.join(d.state, 'pending-events'), '+ 999999 1 1 0 4096\n+ 4294967296 1 1 0 4096\n+ -7 1 1 0 4096\n');
  process.kill(worker, 'SIGKILL');
  await waitFor('a new worker', async () => {
    const r = await call(d.sock, 'GET', '/api/v1/daemon').catch(() => null);
    return r?.status === 200 && r.body.pid !== worker;
  }, 20_000);
  const log = fs.readFileSync(path.join(work, 'journal', 'nydusd.log'), 'utf8');
  for (const fd of [999999, 4294967296, -7]) assert.match(log, new RegExp(`"fd":${fd},"msg":"a record of the pending-events journal is not served: [^"]*skipped"`), `fd ${fd}`);
  assert.equal(log.match(/worker died; starting a new one/g)?.length, 1, 'one restart, no crash loop');
  assert.deepEqual(readMounted(path.join(d.mnt, 'big.bin')), big, 'the mount reads right');
});

test('root-kernel hostile: a second daemon on the same --fanotify directory is refused naming it; the first one\'s mounts file and mount are untouched', async () => {
  const d = await startDaemon('lock-a');
  const listed = fs.readFileSync(path.join(d.state, 'mounts.json'), 'utf8');
  const base = path.join(work, 'lock-b');
  fs.mkdirSync(path.join(base, 'mnt'), { recursive: true });
  mounts.push(path.join(base, 'mnt'));
  const b = spawn(path.join(repoRoot, 'bin/nydusd'), ['--fanotify', d.state, '--config', path.join(work, 'lock-a', 'config.json'), '--bootstrap', img.boot,
    '--mountpoint', path.join(base, 'mnt'), '--apisock', path.join(base, 'api.sock')], { stdio: ['ignore', 'ignore', 'pipe'] });
  daemons.push(b);
  let err = '';
  b.stderr!.on('data', (x) => (err += x));
  assert.equal(await exitCode(b, 15_000), 1, err);
  assert.match(err, new RegExp(`--fanotify directory ${d.state} is in use by another nydusd \\(pid ${d.proc.pid}\\)`));
  assert.equal(isMounted(path.join(base, 'mnt')), false);
  assert.equal(fs.readFileSync(path.join(d.state, 'mounts.json'), 'utf8'), listed, 'the mounts file is the first daemon\'s');
  assert.deepEqual(readMounted(path.join(d.mnt, 'big.bin')), big, 'its mount reads right');
  d.proc.kill('SIGTERM');
  assert.equal(await exitCode(d.proc, 20_000), 0);
  assert.equal(isMounted(d.mnt), false);
});

test('root-kernel hostile: a damaged state database is a fatal error naming it (exit 78, no restarts), the file kept; a daemon whose next worker meets it unmounts first', async () => {
  const garbage = prand(65536, 9);
  // At start: refused, said on stderr and in the log, with what to do.
  const base = path.join(work, 'db-start');
  fs.mkdirSync(path.join(base, 'mnt'), { recursive: true });
  fs.mkdirSync(path.join(base, 'state'));
  const db = path.join(base, 'state', 'chunk-state.db');
  fs.writeFileSync(db, garbage);
  fs.writeFileSync(path.join(base, 'config.json'), JSON.stringify(fanotifyConfig(path.join(base, 'cache'), localfsBackend(img))));
  const r = spawnSync(path.join(repoRoot, 'bin/nydusd'), ['--fanotify', path.join(base, 'state'), '--config', path.join(base, 'config.json'), '--bootstrap', img.boot,
    '--mountpoint', path.join(base, 'mnt'), '--log-file', path.join(base, 'log')], { encoding: 'utf8', timeout: 30_000, killSignal: 'SIGKILL' });
  assert.equal(r.status, 78, `${r.error?.message ?? ''} ${r.stderr}`);
  assert.match(r.stderr, new RegExp(`state database ${db} cannot be used: file is not a database .*move it .* away or restore it`));
  // (--log-file <base>/log: nydusd adds .log to a name without an extension.)
  assert.ok(!fs.existsSync(path.join(base, 'log')), 'the log file is log.log, as nydusd names it');
  const log = fs.readFileSync(path.join(base, 'log.log'), 'utf8');
  assert.match(log, new RegExp(`"level":60,.*state database ${db} cannot be used`), 'the cause is in the log file');
  assert.doesNotMatch(log, /worker died; starting a new one/, 'no restarts');
  assert.deepEqual(fs.readFileSync(db), garbage, 'the database file is kept as it was');
  assert.equal(isMounted(path.join(base, 'mnt')), false);

  // A running daemon whose worker dies and whose database is damaged meanwhile: the next worker cannot
  // start; the daemon ends, and its mount goes with it (never left to read zeros).
  const d = await startDaemon('db-run');
  const worker = await workerPid(d.sock);
  const damaged = path.join(d.state, 'damaged');
  fs.writeFileSync(damaged, garbage);
  fs.renameSync(damaged, path.join(d.state, 'chunk-state.db'));
  // (Its WAL would still hold a good first page.)
  for (const f of ['chunk-state.db-wal', 'chunk-state.db-shm']) fs.rmSync(path.join(d.state, f), { force: true });
  process.kill(worker, 'SIGKILL');
  assert.equal(await exitCode(d.proc, 30_000), 78);
  assert.equal(isMounted(d.mnt), false, 'the mount was taken down before the group was released');
  assert.match(fs.readFileSync(path.join(work, 'db-run', 'nydusd.log'), 'utf8'), /unmounted a mount the workers left/);
});

test('root-kernel hostile: damaged kept registration plans are no state damage: the daemon starts and serves, and the file is made anew', async () => {
  const base = path.join(work, 'plans-damaged');
  fs.mkdirSync(path.join(base, 'state'), { recursive: true });
  const plans = path.join(base, 'state', PLAN_STORE_FILE);
  fs.writeFileSync(plans, prand(65536, 11));
  const d = await startDaemon('plans-damaged');
  assert.deepEqual(readMounted(path.join(d.mnt, 'small.bin')), small, 'the mount reads right');
  assert.match(fs.readFileSync(path.join(base, 'nydusd.log'), 'utf8'), /kept registration plans cannot be used; the file is made anew/);
  assert.equal(fs.readFileSync(plans).subarray(0, 16).toString('latin1'), 'SQLite format 3\0', 'a database again');
});

test('root-kernel hostile: a supervisor that gives up on its workers keeps a busy mount served with EIO (never zeros) until it is free, then unmounts and ends', async () => {
  const d = await startDaemon('giveup');
  const holder = spawn('sleep', ['60'], { cwd: d.mnt, stdio: 'ignore' });
  try {
    // Workers killed as soon as they appear: five quick deaths and the supervisor gives up.
    const logFile = path.join(work, 'giveup', 'nydusd.log');
    let last = 0;
    await waitFor('the supervisor to give up', async () => {
      if (fs.readFileSync(logFile, 'utf8').includes('giving up')) return true;
      const w = workerOf(d.proc.pid!);
      if (w && w !== last) {
        process.kill(w, 'SIGKILL');
        last = w;
      }
      return false;
    }, 30_000);
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(exited(d.proc), false, 'the supervisor stays: closing the group would let the mount read zeros');
    assert.ok(isMounted(d.mnt), 'the busy mount is not detached');
    assert.throws(() => readMounted(path.join(d.mnt, 'big.bin')), (e: NodeJS.ErrnoException) => e.code === 'EIO', 'its unfetched data reads as EIO');
    assert.match(fs.readFileSync(logFile, 'utf8'), /cannot be unmounted yet \(busy\)/);
    holder.kill('SIGKILL');
    assert.equal(await exitCode(d.proc, 20_000), 1, 'once free it is unmounted and the daemon ends');
    assert.equal(isMounted(d.mnt), false);
  } finally {
    holder.kill('SIGKILL');
  }
});
