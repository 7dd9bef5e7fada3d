/**
 * The host side of bench/ondemand.ts (`--host`): the same whole-image read on this machine's kernel,
 * through nydusd --fanotify (pre-content events, Linux >= 6.14) cold and warm, against a loop mount of
 * the uncompressed export, all in one run. Needs root.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { apiRequest } from '../test/helpers/api-client.ts';
import { childOf, peakRssMiB } from './ondemand-plan.ts';

export interface HostPlan {
  dir: string;
  boot: string;
  blobDir: string;
  exported: string;
  /** Background prefetch on, as in the snapshotter's default nydusd config (8 threads, 1 MiB merges). */
  prefetch?: boolean;
}

/** The prefetch part of the snapshotter's default nydusd config (misc/snapshotter/nydusd-config.fscache.json). */
export const SNAPSHOTTER_PREFETCH = { enable: true, threads_count: 8, batch_size: 1048576 };

/**
 * Seconds from the mount to every regular file under `root` read once, page cache dropped before the
 * mount: a background prefetch that starts at the mount has no head start over the reader.
 */
async function timeMountAndReadAll(root: string, mount: () => Promise<void>): Promise<number> {
  // Written back first: drop_caches keeps dirty pages, and the cache file a cold read wrote (171 MiB
  // for the rootfs) was then read back from memory by the warm read, or written back during the next.
  execFileSync('sync');
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  const t0 = process.hrtime.bigint();
  await mount();
  const r = spawnSync('sh', ['-c', 'find "$1" -type f -print0 | xargs -0 cat > /dev/null', 'sh', root], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error(`reading ${root} failed`);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function until(what: string, ok: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (await ok()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export async function benchHost(plan: HostPlan, repo: string): Promise<{ loop: number; cold: number; warm: number; rssMiB: number }> {
  const loopDir = path.join(plan.dir, 'loop-mnt');
  fs.mkdirSync(loopDir, { recursive: true });
  let loop: number;
  try {
    loop = await timeMountAndReadAll(loopDir, async () => {
      execFileSync('mount', ['-t', 'erofs', '-o', 'loop,ro', plan.exported, loopDir]);
    });
  } finally {
    execFileSync('umount', [loopDir]);
  }

  const { daemon, mnt, sock, stop } = await startFanotify(plan.dir, plan.blobDir, plan.prefetch ?? false, repo);
  try {
    const q = `/api/v1/mount?mountpoint=${encodeURIComponent(mnt)}`;
    const mount = async () => {
      const r = await apiRequest(sock, 'POST', q, { source: plan.boot, fs_type: 'rafs', config: fs.readFileSync(path.join(plan.dir, 'config.json'), 'utf8') });
      if (r.status !== 204) throw new Error(`mount through the API failed: ${JSON.stringify(r.body)}`);
    };
    const cold = await timeMountAndReadAll(mnt, mount);
    const rssMiB = peakRssMiB(childOf(daemon.pid!));
    // Warm: unmounted and mounted again, page cache dropped: every byte comes from the cache file.
    if ((await apiRequest(sock, 'DELETE', q)).status !== 204) throw new Error('umount through the API failed');
    const warm = await timeMountAndReadAll(mnt, mount);
    return { loop, cold, warm, rssMiB };
  } finally {
    await stop();
  }
}

/** nydusd --fanotify answering at `<dir>/nydusd.sock`, nothing mounted yet (config at `<dir>/config.json`); `stop` ends it. */
async function startFanotify(dir: string, blobDir: string, prefetch: boolean, repo: string) {
  const mnt = path.join(dir, 'fanotify-mnt');
  const sock = path.join(dir, 'nydusd.sock');
  const cfg = { version: 2, backend: { type: 'localfs', localfs: { dir: blobDir } }, cache: { type: 'filecache', filecache: { work_dir: path.join(dir, 'cache') }, ...(prefetch ? { prefetch: SNAPSHOTTER_PREFETCH } : {}) } };
  fs.mkdirSync(mnt, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
  const daemon = spawn(path.join(repo, 'bin/nydusd'), ['--fanotify', path.join(dir, 'state'), '--apisock', sock,
    '--log-level', 'warn', '--log-file', path.join(dir, 'nydusd.log')], { stdio: 'inherit' });
  const stop = async () => {
    const exited = new Promise((r) => daemon.once('exit', r));
    daemon.kill('SIGTERM');
    await exited;
  };
  try {
    await until('the API socket', async () => (await apiRequest(sock, 'GET', '/api/v1/daemon').catch(() => null))?.status === 200);
  } catch (e) {
    await stop();
    throw e;
  }
  return { daemon, mnt, sock, stop };
}

/**
 * The files the first `chroot <mnt> /bin/ls /` of a rootfs image reads, in order, as nydusd traces
 * them (`nydusctl metrics pattern --paths`, through the fanotify front end, which sees every read).
 */
export async function traceFirstLs(dir: string, boot: string, blobDir: string, repo: string): Promise<string> {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const { mnt, sock, stop } = await startFanotify(dir, blobDir, false, repo);
  try {
    const r = await apiRequest(sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt)}`, { source: boot, fs_type: 'rafs', config: fs.readFileSync(path.join(dir, 'config.json'), 'utf8') });
    if (r.status !== 204) throw new Error(`mount through the API failed: ${JSON.stringify(r.body)}`);
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    execFileSync('chroot', [mnt, '/bin/ls', '/'], { stdio: 'ignore' });
    return execFileSync(path.join(repo, 'bin/nydusctl'), ['--sock', sock, 'metrics', 'pattern', '--paths'], { encoding: 'utf8' });
  } finally {
    await stop();
  }
}
