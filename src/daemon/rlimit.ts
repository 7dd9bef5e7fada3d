/**
 * nydusd's --rlimit-nofile (default 1,000,000; 0 leaves the limit as it is): every mount holds fds
 * (an image's cache files, the blobs it reads), and a daemon that runs out of them reads EIO and
 * its API goes silent. As nydusd: the limit asked, at most fs.file-max less 16,384 kept for the rest
 * of the machine (and 1,000,000), never below the limit the daemon already has; soft and hard alike
 * when the daemon may raise the hard limit (root), else the soft one up to the hard.
 */
import fs from 'node:fs';
import { NydusError } from '../../erofs/errors.ts';
import { fscacheBinding } from '../../native/fscache/index.ts';

export const RLIMIT_NOFILE_DEFAULT = 1_000_000;
const RESERVED = 16_384;

/** --rlimit-nofile's value: a whole number, 0 for "leave it". */
export function parseRlimitNofile(v: unknown): number {
  if (v === undefined) return RLIMIT_NOFILE_DEFAULT;
  const n = typeof v === 'string' && /^\d{1,15}$/.test(v.trim()) ? Number(v.trim()) : NaN;
  if (!Number.isSafeInteger(n)) throw new NydusError(`invalid value ${JSON.stringify(v)} for --rlimit-nofile: a whole number of files (0 leaves the limit as it is)`);
  return n;
}

/** Applies --rlimit-nofile; returns what was done, for the log (null: nothing). */
export function applyRlimitNofile(requested: number): string | null {
  if (requested === 0) return null;
  const b = fscacheBinding();
  const [soft, hard] = b.nofileLimit();
  let fileMax = Infinity;
  try {
    fileMax = Number(fs.readFileSync('/proc/sys/fs/file-max', 'utf8').trim());
  } catch { /* no procfs: bounded by the hard limit alone */ }
  const cap = Math.min(fileMax - RESERVED, RLIMIT_NOFILE_DEFAULT);
  const most = soft < 0 || soft >= cap ? soft : cap;
  const target = most < 0 ? requested : Math.min(requested, most);
  if (soft < 0 || target <= soft) return null;
  try {
    b.nofileLimit(target, Math.max(target, hard < 0 ? target : hard));
    return `open files limit ${soft} -> ${target}`;
  } catch {
    // Not allowed to raise the hard limit: the soft one as far as it goes.
    const reach = hard < 0 ? target : Math.min(target, hard);
    if (reach <= soft) return `open files limit stays ${soft} (the hard limit ${hard} cannot be raised)`;
    b.nofileLimit(reach, hard);
    return `open files limit ${soft} -> ${reach} (the hard limit ${hard} cannot be raised)`;
  }
}
