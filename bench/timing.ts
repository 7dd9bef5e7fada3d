/** Wall time and peak RSS of one command, by GNU time: what the benchmarks compare. */
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { ensureTool } from '../test/helpers/debian-rootfs.ts';

export interface Sample { wall: number; rssMiB: number }

export function ensureGnuTime(): void {
  if (!fs.existsSync('/usr/bin/time')) ensureTool('/usr/bin/time', 'time');
}

export function timed(cmd: string[]): Sample {
  const r = spawnSync('/usr/bin/time', ['-f', 'BENCHTIME %e %M', ...cmd], { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd.join(' ')} failed: ${r.stderr.slice(-2000)}`);
  const m = r.stderr.match(/BENCHTIME ([\d.]+) (\d+)/)!;
  return { wall: Number(m[1]), rssMiB: Number(m[2]) / 1024 };
}

export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
