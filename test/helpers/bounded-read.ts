/**
 * Reads of a lazily served mount (fanotify) made by another process, killed when they take too long.
 * A read that its daemon never answers waits in the kernel: made by the test's own process, it would
 * stop that process and every timeout in it for good, and the suite would hang instead of failing.
 * (The kernel's wait for a fanotify answer ends on SIGKILL.)
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { repoRoot } from './cli.ts';

const child = path.join(path.dirname(fileURLToPath(import.meta.url)), 'bounded-read-child.ts');

function run(args: string[], what: string, ms: number): Buffer {
  // The answer comes in a file: spawnSync's pipes are non-blocking, a big write to one fails EAGAIN.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bounded-read-'));
  const out = path.join(dir, 'out');
  try {
    const r = spawnSync(process.execPath, ['--import', 'tsx', child, out, ...args], { cwd: repoRoot, timeout: ms, killSignal: 'SIGKILL', encoding: 'utf8' });
    if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ETIMEDOUT' || r.signal === 'SIGKILL') {
      throw new Error(`${what}: no answer within ${ms / 1000} s (a read its daemon never answered)`);
    }
    if (r.error) throw r.error;
    if (r.status === 0) return fs.readFileSync(out);
    let failure: { code?: string; message?: string } = {};
    try {
      failure = JSON.parse(r.stderr);
    } catch { /* not the child's own report: a crash */ }
    const e = new Error(`${what}: ${failure.message ?? r.stderr.trim()}`) as NodeJS.ErrnoException;
    if (failure.code) e.code = failure.code;
    throw e;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** `manifest(root, opts)` (manifest.ts) made by another process within `ms`. */
export function mountManifest(root: string, opts: { skipRootTimes?: boolean } = {}, ms = 120_000): Map<string, string> {
  return new Map(JSON.parse(run(['manifest', root, JSON.stringify(opts)], `reading the tree at ${root}`, ms).toString()));
}

/** `fs.readFileSync(file)` made by another process within `ms`; a failed read throws with its errno code (`EIO`). */
export function readMounted(file: string, ms = 60_000): Buffer {
  return run(['read', file], `reading ${file}`, ms);
}
