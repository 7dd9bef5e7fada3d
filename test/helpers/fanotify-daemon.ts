/** `nydusd --fanotify` for tests on the host kernel: started on one image, its mount and API awaited. */
import fs from 'node:fs';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { repoRoot } from './cli.ts';
import { apiRequest } from './api-client.ts';

export interface FanotifyImage { boot: string; blobDir: string; blobId: string }

export interface FanotifyDaemon { mnt: string; sock: string; state: string; cacheDir: string; proc: ChildProcess; cfg: object }

/** nydusd's FUSE-mode config (v2) with a localfs or http-proxy backend, and `rafs` settings if given. */
export function fanotifyConfig(workDir: string, backend: object, rafs?: object): object {
  return { version: 2, backend, cache: { type: 'filecache', filecache: { work_dir: workDir } }, ...(rafs ? { rafs } : {}) };
}

export const localfsBackend = (img: FanotifyImage) => ({ type: 'localfs', localfs: { dir: img.blobDir } });

export function isMounted(dir: string): boolean {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === dir);
}

export async function waitFor(what: string, ok: () => boolean | Promise<boolean>, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Starts `nydusd --fanotify` under `base` mounting `img` at `<base>/mnt`; resolves once it is mounted
 * and its API answers. The process and the mountpoint go into `track` for the test's cleanup.
 */
export async function startFanotifyDaemon(
  base: string, img: FanotifyImage, backend: object, track: { daemons: ChildProcess[]; mounts: string[] }, rafs?: object,
): Promise<FanotifyDaemon> {
  const mnt = path.join(base, 'mnt');
  const state = path.join(base, 'state');
  const cacheDir = path.join(base, 'cache');
  const sock = path.join(base, 'api.sock');
  fs.mkdirSync(mnt, { recursive: true });
  const cfg = fanotifyConfig(cacheDir, backend, rafs);
  fs.writeFileSync(path.join(base, 'config.json'), JSON.stringify(cfg));
  const proc = spawn(path.join(repoRoot, 'bin/nydusd'), ['--fanotify', state, '--config', path.join(base, 'config.json'),
    '--bootstrap', img.boot, '--mountpoint', mnt, '--apisock', sock, '--log-file', path.join(base, 'nydusd.log')], { stdio: ['ignore', 'inherit', 'inherit'] });
  track.daemons.push(proc);
  track.mounts.push(mnt);
  await waitFor(`${base}: the mount and the API`, async () => isMounted(mnt) && fs.existsSync(sock) && (await apiRequest(sock, 'GET', '/api/v1/daemon').catch(() => null))?.status === 200);
  return { mnt, sock, state, cacheDir, proc, cfg };
}
