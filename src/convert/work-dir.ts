/**
 * A run's scratch directory under nydusify's --work-dir (the system's temporary directory when none is
 * given). A --work-dir the run makes goes with it, as nydusify's; one that was there stays.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NydusError } from '../../erofs/errors.ts';

export function scratchDir(workDir: string | undefined, prefix: string): { path: string; remove(): void } {
  const base = workDir ?? os.tmpdir();
  let madeBase: string | undefined;
  try {
    madeBase = fs.mkdirSync(base, { recursive: true });
  } catch (e) {
    throw new NydusError(`work directory ${base}: ${(e as Error).message}`);
  }
  const dir = fs.mkdtempSync(path.join(base, prefix));
  return { path: dir, remove: () => fs.rmSync(madeBase ?? dir, { recursive: true, force: true }) };
}
