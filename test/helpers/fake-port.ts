/** A cachefiles port for daemon tests without a kernel: records copens, writes (as sparse file images), completions. */
import assert from 'node:assert/strict';
import type { CachefilesPort } from '../../src/daemon/ondemand.ts';

/** Records writes per fd as a sparse file image, and completions. */
export class FakePort implements CachefilesPort {
  files = new Map<number, Buffer>();
  copens: Array<[number, number]> = [];
  completed: number[] = [];
  closed: number[] = [];
  writes: Array<[number, number]> = [];
  copen(msgId: number, size: number): void {
    this.copens.push([msgId, size]);
  }
  async writeData(fd: number, offset: number, data: Uint8Array): Promise<void> {
    assert.equal(offset % 4096, 0, 'writes start 4096-aligned');
    this.writes.push([fd, offset]);
    const cur = this.files.get(fd) ?? Buffer.alloc(0);
    // Like the addon: the tail is zero-padded to 4096.
    const end = offset + Math.ceil(data.length / 4096) * 4096;
    const next = cur.length >= end ? cur : Buffer.concat([cur, Buffer.alloc(end - cur.length)]);
    Buffer.from(data).copy(next, offset);
    this.files.set(fd, next);
  }
  readComplete(_fd: number, msgId: number): void {
    this.completed.push(msgId);
  }
  closeFd(fd: number): void {
    this.closed.push(fd);
  }
}
