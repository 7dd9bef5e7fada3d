/**
 * The prefetch list on standard input (`nydus-image create|merge --prefetch-policy fs`, `nydusify
 * convert --prefetch-patterns`), read as nydus-image reads it (read_line: each line UTF-8, else the
 * read fails), and bounded: the list as a whole, and each path by PATH_MAX (a longer one names
 * nothing an image can hold, and is left out with a warning that shows its start only).
 */
import fs from 'node:fs';
import { NydusError } from '../../erofs/errors.ts';
import { EROFS_PATH_MAX } from '../../erofs/limits.ts';
import { prefetchPatterns, prefetchPatternWarnings } from '../builder/prefetch-layout.ts';

/** The most a prefetch list may hold: far beyond the paths of any image. */
export const PREFETCH_LIST_MAX_BYTES = 64 << 20;
const WHAT = 'the prefetch list (standard input)';

function readAll(fd: number, max: number): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  const piece = Buffer.allocUnsafe(1 << 20);
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(fd, piece, 0, piece.length, null);
    } catch (e) {
      // A non-blocking stdin with nothing yet: wait for it, without spinning.
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
        continue;
      }
      throw new NydusError(`cannot read ${WHAT}: ${(e as Error).message}`);
    }
    if (n === 0) break;
    total += n;
    if (total > max) throw new NydusError(`${WHAT} holds more than ${max >> 20} MiB: a list of paths is far smaller`);
    parts.push(Buffer.from(piece.subarray(0, n)));
  }
  return Buffer.concat(parts);
}

/** The list's lines, each decoded as UTF-8 (fatal), those no path can be (past EROFS_PATH_MAX) left out and described in `tooLong`. */
export function prefetchListLines(bytes: Buffer): { lines: string[]; tooLong: string[] } {
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const lines: string[] = [];
  const tooLong: string[] = [];
  for (let start = 0, n = 1; start < bytes.length; n++) {
    let end = bytes.indexOf(0x0a, start);
    if (end < 0) end = bytes.length;
    const line = bytes.subarray(start, end);
    start = end + 1;
    if (line.length > EROFS_PATH_MAX) {
      tooLong.push(`prefetch path on line ${n} is ${line.length} bytes, longer than a path can be (starts ${JSON.stringify(line.subarray(0, 64).toString('utf8'))}); left out`);
      continue;
    }
    try {
      lines.push(decoder.decode(line));
    } catch {
      throw new NydusError(`${WHAT}: line ${n} is not UTF-8 (prefetch paths are read as UTF-8, as nydus-image reads them)`);
    }
  }
  return { lines, tooLong };
}

/** The patterns of the list on standard input (prefetchPatterns) and what to warn of it. */
export function readPrefetchList(): { patterns: string[]; warnings: string[] } {
  const { lines, tooLong } = prefetchListLines(readAll(0, PREFETCH_LIST_MAX_BYTES));
  const list = prefetchPatterns(lines);
  return { patterns: list.patterns, warnings: [...tooLong, ...prefetchPatternWarnings(list)] };
}
