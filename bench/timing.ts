/**
 * Wall time, CPU time (user + system) and peak RSS of one command, by GNU time: what the benchmarks
 * compare. On a machine shared with other work CPU time is the steadier of the two times.
 */
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { ensureTool } from '../test/helpers/debian-rootfs.ts';

export interface Sample { wall: number; cpu: number; rssMiB: number }

export function ensureGnuTime(): void {
  if (!fs.existsSync('/usr/bin/time')) ensureTool('/usr/bin/time', 'time');
}

export function timed(cmd: string[]): Sample {
  const r = spawnSync('/usr/bin/time', ['-f', 'BENCHTIME %e %U %S %M', ...cmd], { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd.join(' ')} failed: ${r.stderr.slice(-2000)}`);
  const m = r.stderr.match(/BENCHTIME ([\d.]+) ([\d.]+) ([\d.]+) (\d+)/)!;
  return { wall: Number(m[1]), cpu: Number(m[2]) + Number(m[3]), rssMiB: Number(m[4]) / 1024 };
}

export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export interface Summary { wall: number; cpu: number; rss: number }

/** Median times and the highest peak RSS of a command's samples. */
export function summarize(samples: Sample[]): Summary {
  return { wall: median(samples.map((s) => s.wall)), cpu: median(samples.map((s) => s.cpu)), rss: Math.max(...samples.map((s) => s.rssMiB)) };
}

/**
 * Runs each command `runs` times after one warm-up, interleaved (a, b, a, b...) so that load from
 * elsewhere falls on all alike; prints and returns each one's summary.
 */
export function compare(tools: Record<string, () => Sample>, runs: number): Record<string, Summary> {
  const samples: Record<string, Sample[]> = Object.fromEntries(Object.keys(tools).map((k) => [k, []]));
  for (let i = 0; i <= runs; i++) {
    for (const [name, run] of Object.entries(tools)) {
      const s = run();
      if (i > 0) samples[name].push(s);
    }
  }
  const out: Record<string, Summary> = {};
  const width = Math.max(...Object.keys(tools).map((k) => k.length)) + 2;
  console.log(`${''.padEnd(width)} ${'wall'.padStart(8)} ${'cpu'.padStart(8)} ${'peak RSS'.padStart(10)}`);
  for (const name of Object.keys(tools)) {
    const r = out[name] = summarize(samples[name]);
    console.log(`${name.padEnd(width)} ${r.wall.toFixed(2).padStart(6)} s ${r.cpu.toFixed(2).padStart(6)} s ${r.rss.toFixed(0).padStart(6)} MiB`);
  }
  return out;
}
