/**
 * The fscache session's hot path on the host, without a kernel: the Debian rootfs image of
 * bench/ondemand.ts read cold as one reader would (`cat` of every file in blob order), the kernel
 * emulated: a READ for every chunk the cache file does not hold yet, one at a time, answered by the
 * real session (verify pool, localfs backend, SQLite marks) into a sparse cache file on disk.
 * Prints the READs sent, the wall time, backend reads and the process's peak RSS.
 *   node --import tsx bench/session-host.ts [--amplify <bytes>] [--threads 4]
 * Not a test: it asserts nothing. Profile with `node --cpu-prof --import tsx bench/session-host.ts`.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { ImageRegistry } from '../src/daemon/daemon.ts';
import { DaemonState } from '../src/daemon/state.ts';
import { OnDemandSession, type CachefilesPort } from '../src/daemon/frontend/cachefiles.ts';
import { VerifyPool } from '../src/daemon/verify-pool.ts';
import { openImage } from '../src/image/open.ts';
import { BlobMap } from '../src/daemon/blob-map.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const dir = path.join(repo, 'kernel-test/.cache/bench/debian');
if (!fs.existsSync(path.join(dir, '.complete'))) throw new Error(`${dir} is not made yet: run bench/ondemand.ts once`);
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'session-host-'));
const boot = path.join(dir, 'image.boot');

/** Cache files as sparse files; holes are what the kernel would ask for. */
class FilePort implements CachefilesPort {
  readonly fds = new Map<number, number>();
  readonly blocks = new Map<number, Set<number>>();
  copen(): void {}
  async writeData(fd: number, offset: number, data: Uint8Array): Promise<void> {
    await new Promise<void>((resolve, reject) => fs.write(this.fds.get(fd)!, data, 0, data.length, offset, (e) => (e ? reject(e) : resolve())));
    const b = this.blocks.get(fd) ?? new Set<number>();
    for (let blk = offset / 4096; blk < Math.ceil((offset + data.length) / 4096); blk++) b.add(blk);
    this.blocks.set(fd, b);
  }
  readComplete(_fd: number, msgId: number): void {
    waiting.get(msgId)?.();
  }
  closeFd(fd: number): void {
    fs.closeSync(this.fds.get(fd)!);
  }
  dataRanges(): Array<[number, number]> {
    return [];
  }
}
const waiting = new Map<number, () => void>();

const state = new DaemonState(path.join(work, 'state'));
const pool = new VerifyPool(Math.min(os.availableParallelism(), arg('threads', 4)));
const log = pino({ level: 'warn' });
const registry = new ImageRegistry(state, log, pool);
const opened = openImage(boot);
const blob = [...BlobMap.fromImage(opened.image).values()][0];
opened.close();
await registry.add({
  type: 'bootstrap', id: 'host', config_v2: {
    version: 2, id: 'host', backend: { type: 'localfs', localfs: { dir: path.join(dir, 'blobs') } },
    cache: { type: 'fscache' }, metadata_path: boot, rafs: { batch_size: arg('amplify', 1 << 20) },
  },
});
const port = new FilePort();
port.fds.set(3, fs.openSync(path.join(work, 'cache'), 'w+'));
const session = new OnDemandSession(port, registry, state, log, arg('threads', 4));
session.handle({ type: 'open', msgId: 1, objectId: 1, volumeKey: 'erofs,host', cookieKey: blob.blobId, fd: 3, flags: 0 });

let msgId = 10;
let reads = 0;
const t0 = performance.now();
const cpu0 = process.cpuUsage();
for (const c of blob.all()) {
  const have = port.blocks.get(3);
  const first = c.uncompressedOffset / 4096;
  const last = Math.ceil((c.uncompressedOffset + c.uncompressedSize) / 4096) - 1;
  let whole = true;
  for (let b = first; b <= last && whole; b++) whole = !!have?.has(b);
  if (whole) continue;
  const id = msgId++;
  reads++;
  await new Promise<void>((resolve) => {
    waiting.set(id, resolve);
    session.handle({ type: 'read', msgId: id, objectId: 1, offset: c.uncompressedOffset, len: (last - first + 1) * 4096 });
  });
}
const ms = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);
const hwm = Number(fs.readFileSync('/proc/self/status', 'utf8').match(/^VmHWM:\s+(\d+) kB/m)![1]) / 1024;
console.log(`${blob.chunkCount} chunks, ${reads} READs, ${ms.toFixed(0)} ms wall (${(ms / reads).toFixed(2)} ms a READ), CPU (all threads) ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms, backend reads ${registry.metrics().localfs.read_count}, errors ${session.stats.readErrors}, peak RSS ${hwm.toFixed(0)} MiB`);
session.closeAll();
await registry.close();
await pool.close();
state.close();
fs.rmSync(work, { recursive: true, force: true });
