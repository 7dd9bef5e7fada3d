/** A fake cachefiles device for the daemon's on-demand session: what the kernel would see, without a kernel. */
import assert from 'node:assert/strict';
import type { CachefilesPort } from '../../src/daemon/frontend/cachefiles.ts';

/**
 * Records writes per fd as a sparse file image, and completions. Like the kernel, it hands out fds and
 * takes them back: a write or a completion on an fd that is not open is recorded as a violation.
 */
export class FakePort implements CachefilesPort {
  files = new Map<number, Buffer>();
  /** 4096-byte blocks written, per fd: what SEEK_DATA would find in the cache file. */
  blocks = new Map<number, Set<number>>();
  copens: Array<[number, number]> = [];
  completed: number[] = [];
  closed: number[] = [];
  writes: Array<[number, number]> = [];
  violations: string[] = [];
  open = new Set<number>();
  /** OPENs the kernel has withdrawn (its mount interrupted): their copen fails EINVAL, as the device's write does. */
  withdrawn = new Set<number>();
  /** While set, writes wait for it (to hold work in flight). */
  gate: Promise<void> | null = null;
  /** Hands the kernel's fd for an OPEN to the daemon. */
  give(fd: number): number {
    this.open.add(fd);
    return fd;
  }
  copen(msgId: number, size: number): void {
    if (this.withdrawn.has(msgId)) throw Object.assign(new Error(`copen ${msgId},${size}: Invalid argument`), { code: 'EINVAL', errno: 22 });
    this.copens.push([msgId, size]);
  }
  async writeData(fd: number, offset: number, data: Uint8Array): Promise<void> {
    assert.equal(offset % 4096, 0, 'writes start 4096-aligned');
    if (this.gate) await this.gate;
    if (!this.open.has(fd)) this.violations.push(`write at ${offset} to fd ${fd}, which is not open`);
    this.writes.push([fd, offset]);
    const cur = this.files.get(fd) ?? Buffer.alloc(0);
    // Like the addon: the tail is zero-padded to 4096.
    const end = offset + Math.ceil(data.length / 4096) * 4096;
    const next = cur.length >= end ? cur : Buffer.concat([cur, Buffer.alloc(end - cur.length)]);
    Buffer.from(data).copy(next, offset);
    this.files.set(fd, next);
    const b = this.blocks.get(fd) ?? new Set<number>();
    for (let blk = offset / 4096; blk < end / 4096; blk++) b.add(blk);
    this.blocks.set(fd, b);
  }
  readComplete(fd: number, msgId: number): void {
    if (!this.open.has(fd)) this.violations.push(`read complete of msg ${msgId} on fd ${fd}, which is not open`);
    this.completed.push(msgId);
  }
  closeFd(fd: number): void {
    if (!this.open.delete(fd)) this.violations.push(`close of fd ${fd}, which is not open`);
    this.closed.push(fd);
  }
  dataRanges(fd: number, from: number, to: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    const b = this.blocks.get(fd) ?? new Set<number>();
    for (let blk = Math.floor(from / 4096); blk * 4096 < to; blk++) {
      if (!b.has(blk)) continue;
      const last = out[out.length - 1];
      const s = Math.max(from, blk * 4096);
      const e = Math.min(to, (blk + 1) * 4096);
      if (last && last[1] === s) last[1] = e;
      else out.push([s, e]);
    }
    return out;
  }
}

export const settle = () => new Promise((r) => setTimeout(r, 200));
/** Waits until `cond` holds (the daemon's work is asynchronous); fails naming what never happened. */
export async function waitFor(cond: () => boolean, what: string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  await settle();
}
