/** `nydusd --fanotify` for tests on the host kernel: started on one image, its mount and API awaited. */
import fs from 'node:fs';
import path from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
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

/**
 * Spawns a daemon (or what starts one) under `base` with its stdout and stderr going to
 * `<base>/nydusd.out`, not to the test's own: the test runner reads a test file's stdout to its end,
 * so a daemon (or a worker it started) that outlived a failed test would hold the whole run open.
 */
export function spawnDaemon(base: string, cmd: string, args: string[]): ChildProcess {
  const out = fs.openSync(path.join(base, 'nydusd.out'), 'a');
  try {
    return spawn(cmd, args, { stdio: ['ignore', out, out] });
  } finally {
    fs.closeSync(out);
  }
}

/** The last `lines` lines of a file, or '(none)'. */
function tailOf(file: string, lines = 40): string {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n') : '(none)';
}

/** What the daemon under `base` wrote, for a failure's message: the ends of its output and log file. */
export function daemonFilesTail(base: string): string {
  return `\n--- ${base}/nydusd.out:\n${tailOf(path.join(base, 'nydusd.out'))}\n--- ${base}/nydusd.log:\n${tailOf(path.join(base, 'nydusd.log'))}`;
}

/** The processes whose command line names something under `dir`, with that command line. */
export function processesUnder(dir: string): Array<{ pid: number; cmd: string[] }> {
  return fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number).flatMap((pid) => {
    if (pid === process.pid) return [];
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      return cmd.some((a) => a.startsWith(dir)) ? [{ pid, cmd }] : [];
    } catch {
      return []; // gone meanwhile
    }
  });
}

/**
 * Kills (SIGKILL) every process under `dir` (processesUnder): what a failed test left running (a
 * worker, or an adoptive supervisor, no test started itself). Then their mounts can go.
 */
export function killProcessesUnder(dir: string): void {
  for (const { pid } of processesUnder(dir)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch { /* gone meanwhile */ }
  }
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
  const proc = spawnDaemon(base, path.join(repoRoot, 'bin/nydusd'), ['--fanotify', state, '--config', path.join(base, 'config.json'),
    '--bootstrap', img.boot, '--mountpoint', mnt, '--apisock', sock, '--log-file', path.join(base, 'nydusd.log')]);
  track.daemons.push(proc);
  track.mounts.push(mnt);
  try {
    await waitFor(`${base}: the mount and the API`, async () => isMounted(mnt) && fs.existsSync(sock) && (await apiRequest(sock, 'GET', '/api/v1/daemon').catch(() => null))?.status === 200);
  } catch (e) {
    // What the daemon said is in its files now, not in the test's output.
    (e as Error).message += daemonFilesTail(base);
    throw e;
  }
  return { mnt, sock, state, cacheDir, proc, cfg };
}

/**
 * A test file's cleanup: its daemons stopped, what they left running under `work` killed, their
 * mounts unmounted (a busy one is left), then `work` removed.
 */
export async function cleanUpDaemons(work: string, track: { daemons: ChildProcess[]; mounts: string[] }): Promise<void> {
  for (const d of track.daemons) if (d.exitCode === null && d.signalCode === null) d.kill('SIGTERM');
  await waitFor('the daemons stopped', () => track.daemons.every((d) => d.exitCode !== null || d.signalCode !== null), 10_000).catch(() => {});
  killProcessesUnder(work);
  for (const m of track.mounts) if (isMounted(m)) spawnSync('umount', [m]);
  fs.rmSync(work, { recursive: true, force: true });
}
