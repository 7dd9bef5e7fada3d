/**
 * nydusd's --rlimit-nofile (default 1,000,000; 0 leaves the limit as it is): every mount holds fds
 * (an image's cache files, the blobs it reads), and a daemon that runs out of them reads EIO and
 * its API goes silent. As nydusd: the limit asked, at most fs.file-max less 16,384 kept for the rest
 * of the machine (and 1,000,000), never below the limit the daemon already has. Node raises its soft
 * limit to the hard one as it starts, so what is raised here is the hard limit, soft alike: where
 * the daemon may not (no CAP_SYS_RESOURCE), the limit stays as it is.
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

/** Applies --rlimit-nofile (parseRlimitNofile's value). */
export function applyRlimitNofile(requested: number): void {
  if (requested === 0) return;
  const b = fscacheBinding();
  const [soft, hard] = b.nofileLimit();
  if (soft < 0) return;
  let fileMax = Infinity;
  try {
    fileMax = Number(fs.readFileSync('/proc/sys/fs/file-max', 'utf8').trim());
  } catch { /* no procfs: bounded by 1,000,000 alone */ }
  const target = Math.min(requested, Math.max(soft, Math.min(fileMax - RESERVED, RLIMIT_NOFILE_DEFAULT)));
  if (target <= soft) return;
  try {
    b.nofileLimit(target, hard < 0 ? target : Math.max(target, hard));
  } catch { /* not allowed to raise the hard limit: it stays */ }
}
