/**
 * The daemon's chunk state on a full disk, while the daemon runs (needs root: a small tmpfs holds
 * it): a write the database refuses is reported once, never thrown (a throw from the flush timer
 * ended the worker, and the supervisor's restarts met the same full disk); the marks stay in memory
 * and are written once the disk has room, so nothing cached is lost.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { DaemonState, type StateFailureReport } from '../src/daemon/state.ts';
import { tmpDir } from './helpers/fixtures.ts';

type Report = Parameters<StateFailureReport>[0];

test('state: on a full disk marks stay in memory, the failure is reported once, and they are written once there is room', async (t) => {
  assert.equal(process.getuid?.(), 0, 'this test mounts a tmpfs: run it as root');
  const dir = tmpDir('state-full-');
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir]);
  t.after(() => {
    execFileSync('umount', [dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const reports: Report[] = [];
  let state = new DaemonState(dir, (r) => reports.push(r));
  // The rest of the tmpfs taken by another file.
  const filler = path.join(dir, 'filler');
  const fd = fs.openSync(filler, 'w');
  const block = Buffer.alloc(16384, 1);
  for (;;) {
    try {
      fs.writeSync(fd, block);
    } catch (e) {
      assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
      break;
    }
  }
  fs.closeSync(fd);

  // Marks of 40 cache files, each a bitmap of 8 KiB: more than the database can take now.
  const files = Array.from({ length: 40 }, (_, i) => ({ volume: `erofs,img${i}`, cookie: 'blob' }));
  for (const f of files) state.mark(f, [0, 17, 65535]);
  state.countFetch('blob', 65535);
  assert.doesNotThrow(() => state.flush(), 'a flush on a full disk does not throw');
  assert.equal(reports.length, 1, 'the failure is reported');
  const first = reports[0];
  assert.equal(first.kind, 'write');
  assert.match(first.kind === 'write' ? `${first.error.message} ${(first.error as { code?: string }).code}` : '', /full|SQLITE_FULL|SQLITE_IOERR/i);
  assert.equal(first.kind === 'write' ? first.pending : 0, files.length + 1, 'every changed file and count is still to be written');
  for (const f of files) assert.ok(state.isCached(f, 65535), `${f.volume}: its marks stay in memory`);
  // The flush timer (its retry) meets the full disk as well: reported no more than once a minute, nothing thrown.
  state.mark(files[0], [3]);
  await new Promise((r) => setTimeout(r, 1300));
  state.flush();
  assert.equal(reports.length, 1, 'reported once');

  // Room again: the next flush writes everything, and says so.
  fs.rmSync(filler);
  state.flush();
  assert.deepEqual(reports.slice(1).map((r) => r.kind), ['recovered']);
  state.close();
  state = new DaemonState(dir);
  for (const f of files) assert.deepEqual([...state.cached(f)].sort((a, b) => a - b), f === files[0] ? [0, 3, 17, 65535] : [0, 17, 65535], `${f.volume}: its marks were written`);
  assert.deepEqual(state.fetches('blob'), { 65535: 1 });
  state.close();
});
