/** Guest side of bench/ondemand.ts: times reading every file of the bench image three ways. */
import fs from 'node:fs';
import path from 'node:path';
import { spawn, execFileSync } from 'node:child_process';
import { apiRequest } from '../test/helpers/api-client.ts';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const plan = JSON.parse(fs.readFileSync(path.join(repo, 'kernel-test/.cache/bench/plan.json'), 'utf8'));
const scratch = process.env.KT_SCRATCH!;
const sock = path.join(scratch, 'bench.sock');
const cacheDir = path.join(process.env.KT_CACHE!, 'fscache');

function readAll(dir: string): number {
  execFileSync('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
  const t0 = process.hrtime.bigint();
  // cat reads like an application would; one process for all files.
  execFileSync('sh', ['-c', `cat ${dir}/* > /dev/null`]);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

const mnt = (name: string) => {
  const d = path.join(scratch, name);
  fs.mkdirSync(d, { recursive: true });
  return d;
};

fs.mkdirSync(cacheDir, { recursive: true });
const daemon = spawn(path.join(repo, 'bin/nydusd'), ['singleton', '--fscache', cacheDir, '--apisock', sock, '--log-level', 'warn'], { stdio: 'inherit' });
for (let i = 0; i < 1200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 100));
await new Promise((r) => setTimeout(r, 500));
const { status } = await apiRequest(sock, 'PUT', '/api/v2/blobs', {
  type: 'bootstrap', id: 'bench', config_v2: {
    version: 2, id: 'bench', backend: { type: 'localfs', localfs: { dir: plan.blobDir } },
    cache: { type: 'fscache', fscache: { work_dir: cacheDir } }, metadata_path: plan.boot,
  },
});
if (status !== 204) throw new Error(`register failed: ${status}`);
const loopDir = mnt('loop');
execFileSync('mount', ['-t', 'erofs', '-o', 'loop,ro', plan.exported, loopDir]);
const loop = readAll(loopDir);
const fsDir = mnt('fscache');
execFileSync('mount', ['-t', 'erofs', '-o', 'fsid=bench', 'none', fsDir]);
const cold = readAll(fsDir);
execFileSync('umount', [fsDir]);
execFileSync('mount', ['-t', 'erofs', '-o', 'fsid=bench', 'none', fsDir]);
const warm = readAll(fsDir);
console.log(`BENCH loop ${loop}\nBENCH cold ${cold}\nBENCH warm ${warm}`);
execFileSync('umount', [fsDir]);
execFileSync('umount', [loopDir]);
daemon.kill('SIGTERM');
