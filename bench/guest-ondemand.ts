/**
 * Guest side of bench/ondemand.ts. Per workload: every file read from a loop mount of the export;
 * then one nydusd (its start timed) with its own cache directory, and the files read cold and warm
 * through fscache;
 * for a rootfs the first `chroot <mnt> /bin/ls /` on the loop mount and on a cold fscache mount (an
 * image of its own fsid, so cache files of its own); the worker's peak RSS. Prints `BENCH <key> <value>`.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn, execFileSync } from 'node:child_process';
import { apiRequest } from '../test/helpers/api-client.ts';
import { type BenchPlan, type BenchWorkload, childOf, peakRssMiB, untilAnswers } from './ondemand-plan.ts';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const plan: BenchPlan = JSON.parse(fs.readFileSync(path.join(repo, 'kernel-test/.cache/bench/plan.json'), 'utf8'));
const scratch = process.env.KT_SCRATCH!;

const report = (key: string, value: number) => console.log(`BENCH ${key} ${value}`);
const dropCaches = () => execFileSync('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);

function timed(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/**
 * Mount, then every regular file read whole, timed from the mount (caches dropped before it: a
 * background prefetch that starts at the mount has no head start over the reader); cat reads as an
 * application would. Unmounted after.
 */
function mountAndReadAll(args: string[], dir: string): number {
  dropCaches();
  const s = timed(() => {
    mount(args, dir);
    execFileSync('sh', ['-c', `find '${dir}' -type f -print0 | xargs -0 cat > /dev/null`]);
  });
  execFileSync('umount', [dir]);
  return s;
}

/** CPU seconds (user + system) a process has used: every thread, and its main (event loop) thread. */
function cpuSeconds(pid: number): { all: number; main: number } {
  const of = (stat: string) => {
    const f = fs.readFileSync(stat, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  };
  return { all: of(`/proc/${pid}/stat`), main: of(`/proc/${pid}/task/${pid}/stat`) };
}

/** The CPU a process used since `before` (cpuSeconds), reported as `<name>` and `<name>_main`. */
function reportCpu(name: string, pid: number, before: { all: number; main: number }): void {
  const now = cpuSeconds(pid);
  report(name, now.all - before.all);
  report(`${name}_main`, now.main - before.main);
}

function mount(args: string[], dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('mount', [...args, dir]);
}

/**
 * Mount and the first `chroot <dir> /bin/ls /`, caches dropped first: reported as `<key>` (both)
 * and `<key>_mount` (the mount alone; a first fscache mount of an fsid includes cachefiles making
 * the volume's directories).
 */
function mountAndLs(key: string, args: string[], dir: string): void {
  dropCaches();
  const t0 = process.hrtime.bigint();
  mount(args, dir);
  const mounted = Number(process.hrtime.bigint() - t0) / 1e9;
  execFileSync('chroot', [dir, '/bin/ls', '/'], { stdio: 'ignore' });
  report(key, Number(process.hrtime.bigint() - t0) / 1e9);
  report(`${key}_mount`, mounted);
  execFileSync('umount', [dir]);
}

/** `prefetch`: background prefetch on, as the snapshotter's default nydusd config has it (8 threads, 1 MiB merges). */
async function register(sock: string, id: string, w: Pick<BenchWorkload, 'boot' | 'blobDir'>, cacheDir: string, prefetch = false): Promise<void> {
  const { status, body } = await apiRequest(sock, 'PUT', '/api/v2/blobs', {
    type: 'bootstrap', id, config_v2: {
      version: 2, id, backend: { type: 'localfs', localfs: { dir: w.blobDir } },
      cache: { type: 'fscache', fscache: { work_dir: cacheDir }, ...(prefetch ? { prefetch: { enable: true, threads_count: 8, batch_size: 1048576 } } : {}) },
      metadata_path: w.boot,
    },
  });
  if (status !== 204) throw new Error(`register ${id} failed: ${status} ${JSON.stringify(body)}`);
}

async function run(w: BenchWorkload): Promise<void> {
  const cacheDir = path.join(process.env.KT_CACHE!, `fscache-${w.name}`);
  const sock = path.join(scratch, `bench-${w.name}.sock`);
  fs.mkdirSync(cacheDir, { recursive: true });
  // The loop reference first, before nydusd starts: nothing of the daemon runs beside it (its start
  // goes on after the API answers: the registration thread it starts ahead of need took about 1 s of
  // the guest's CPU, which overlapped the big workload's loop read when it came after).
  const loopDir = path.join(scratch, `${w.name}-loop`);
  const fsDir = path.join(scratch, `${w.name}-fscache`);
  const loopArgs = ['-t', 'erofs', '-o', 'loop,ro', w.exported];
  if (w.ls) mountAndLs(`${w.name}.ls_loop`, loopArgs, loopDir);
  report(`${w.name}.loop`, mountAndReadAll(loopArgs, loopDir));

  const t0 = performance.now();
  const daemon = spawn(path.join(repo, 'bin/nydusd'), ['singleton', '--fscache', cacheDir, '--apisock', sock, '--log-level', 'warn'], { stdio: 'inherit' });
  report(`${w.name}.start_ms`, await untilAnswers(sock, t0, 120_000));
  const worker = childOf(daemon.pid!);
  await register(sock, w.name, w, cacheDir);
  if (w.ls) await register(sock, `${w.name}-ls`, w, cacheDir);
  if (w.lsPrefetch) await register(sock, `${w.name}-lspf`, w.lsPrefetch, cacheDir, true);

  if (w.ls) mountAndLs(`${w.name}.ls_cold`, ['-t', 'erofs', '-o', `fsid=${w.name}-ls`, 'none'], fsDir);
  if (w.lsPrefetch) mountAndLs(`${w.name}.ls_prefetch`, ['-t', 'erofs', '-o', `fsid=${w.name}-lspf`, 'none'], fsDir);
  const fsArgs = (id: string) => ['-t', 'erofs', '-o', `fsid=${id}`, 'none'];
  let cpu0 = cpuSeconds(worker);
  report(`${w.name}.cold`, mountAndReadAll(fsArgs(w.name), fsDir));
  reportCpu(`${w.name}.cold_cpu`, worker, cpu0);
  report(`${w.name}.warm`, mountAndReadAll(fsArgs(w.name), fsDir));
  report(`${w.name}.rss_mib`, peakRssMiB(worker));
  // Cold again, through an image of its own (its own cache file) with prefetch on: the reader and
  // the prefetch share the CPU from the mount on.
  await register(sock, `${w.name}-pf`, w, cacheDir, true);
  cpu0 = cpuSeconds(worker);
  report(`${w.name}.cold_prefetch`, mountAndReadAll(fsArgs(`${w.name}-pf`), fsDir));
  reportCpu(`${w.name}.cold_prefetch_cpu`, worker, cpu0);
  report(`${w.name}.rss_mib_prefetch`, peakRssMiB(worker));

  const exited = new Promise((r) => daemon.once('exit', r));
  daemon.kill('SIGTERM');
  await exited;
}

for (const w of plan.workloads) await run(w);
