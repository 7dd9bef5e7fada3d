/** What bench/ondemand.ts hands its guest side (bench/guest-ondemand.ts), and what both use. */
import fs from 'node:fs';
import { apiRequest } from '../test/helpers/api-client.ts';

export interface BenchWorkload {
  name: string;
  boot: string;
  blobDir: string;
  /** The image's export (`nydus-image export --block`): the loop mount reference. */
  exported: string;
  bytes: number;
  blobBytes: number;
  /** Also time the first `chroot <mnt> /bin/ls /` (a rootfs). */
  ls: boolean;
  /**
   * The same tree built with a prefetch table of the files that first `ls` read (as nydusd traced
   * them): its `ls` is timed with prefetch on.
   */
  lsPrefetch?: { boot: string; blobDir: string };
}

export interface BenchPlan {
  workloads: BenchWorkload[];
}

/** Milliseconds from t0 (performance.now()) until GET /api/v1/daemon on the socket answers. */
export async function untilAnswers(sock: string, t0: number, timeoutMs: number): Promise<number> {
  for (;;) {
    if (fs.existsSync(sock)) {
      try {
        await apiRequest(sock, 'GET', '/api/v1/daemon');
        return performance.now() - t0;
      } catch { /* not listening yet */ }
    }
    if (performance.now() - t0 > timeoutMs) throw new Error(`nydusd did not answer on ${sock} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** VmHWM of a process, MiB. */
export function peakRssMiB(pid: number): number {
  const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmHWM:\s+(\d+) kB/m);
  return m ? Number(m[1]) / 1024 : NaN;
}

/** The worker nydusd's supervisor spawned. */
export function childOf(pid: number): number {
  for (const p of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      // The worker runs nydusd itself; another child of the supervisor (a helper it runs) is not it.
      if (new RegExp(`^PPid:\\s+${pid}$`, 'm').test(fs.readFileSync(`/proc/${p}/status`, 'utf8'))
        && fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('nydusd')) return Number(p);
    } catch { /* gone */ }
  }
  throw new Error(`nydusd ${pid} has no worker`);
}
