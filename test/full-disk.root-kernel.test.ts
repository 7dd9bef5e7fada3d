/**
 * What the daemon keeps on disk, on a full disk while it runs (needs root: a small tmpfs holds it).
 * The chunk state: a write the database refuses is reported once, never thrown (a throw from the
 * flush timer ended the worker, and the supervisor's restarts met the same full disk); the marks stay
 * in memory and are written once the disk has room, so nothing cached is lost. The fanotify journal
 * of pending events: a record that cannot be written whole empties the journal, never leaves a
 * record cut short or an answer lost (a successor would answer an event it does not know). The log
 * file: a line that cannot be written is dropped and counted, never thrown to the code that logs
 * (pino writes from inside its call: a throw ended whatever was logging, the worker's start too).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { DaemonState, type StateFailureReport } from '../src/daemon/state.ts';
import { PendingEventJournal } from '../src/daemon/frontend/fanotify-journal.ts';
import { fillDisk, tmpDir } from './helpers/fixtures.ts';
import pino from 'pino';
import { RotatingLogFile } from '../src/daemon/log.ts';

type Report = Parameters<StateFailureReport>[0];

/** A tmpfs of `size` at a new directory, unmounted after the test. */
function smallDisk(t: { after: (fn: () => void) => void }, prefix: string, size: string): string {
  assert.equal(process.getuid?.(), 0, 'this test mounts a tmpfs: run it as root');
  const dir = tmpDir(prefix);
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
  t.after(() => {
    execFileSync('umount', [dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

test('fanotify journal: a record that does not fit whole empties the journal, reported once; records are written again once there is room', (t) => {
  const dir = smallDisk(t, 'journal-full-', '64k');
  const file = path.join(dir, 'pending-events');
  const reports: Error[] = [];
  const journal = new PendingEventJournal(file, [], (e) => reports.push(e));
  const ev = (fd: number) => ({ fd, dev: 2049, ino: 1234567, offset: fd * 1048576, count: 131072 });
  journal.add(ev(10));
  assert.deepEqual(PendingEventJournal.read(file), [ev(10)]);
  // The disk filled up to the journal's last page: its next records fit in part, then not at all.
  const filler = fillDisk(dir, 4096);
  for (let fd = 11; fd < 200; fd++) journal.add(ev(fd));
  assert.equal(reports.length, 1, 'reported once (emptied, it takes records again for a while, and fills up again)');
  const text = fs.readFileSync(file, 'latin1');
  assert.ok(text.split('\n').slice(0, -1).every((l) => /^\+ \d+ 2049 1234567 \d+ 131072$/.test(l)), `no record cut short: ${JSON.stringify(text.slice(-120))}`);
  for (const e of PendingEventJournal.read(file)) assert.deepEqual(e, ev(e.fd), 'every record read back is one written whole');
  // Answers that cannot be written empty it too: no record of an answered event is left behind.
  for (let fd = 10; fd < 200; fd++) journal.done(fd);
  assert.deepEqual(PendingEventJournal.read(file), [], 'nothing pending is left in it');
  fs.rmSync(filler);
  journal.add(ev(300));
  assert.deepEqual(PendingEventJournal.read(file), [ev(300)], 'written again');
  assert.equal(reports.length, 1);
  journal.close();
});

test('state: on a full disk marks stay in memory, the failure is reported once, and they are written once there is room', async (t) => {
  const dir = smallDisk(t, 'state-full-', '1m');
  const reports: Report[] = [];
  let state = new DaemonState(dir, (r) => reports.push(r));
  // The rest of the tmpfs taken by another file.
  const filler = fillDisk(dir);

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

test('log file: on a full disk lines are dropped, never thrown to the code that logs; once there is room a line says how many were lost', (t) => {
  const dir = smallDisk(t, 'log-full-', '64k');
  const file = path.join(dir, 'nydusd.log');
  const out = new RotatingLogFile(file, 0);
  const log = pino({ level: 'info' }, out);
  log.info('before');
  const filler = fillDisk(dir, 4096);
  for (let i = 0; i < 500; i++) assert.doesNotThrow(() => log.error({ i, err: 'x'.repeat(200) }, 'range cannot be served'), `line ${i}`);
  fs.rmSync(filler);
  log.info('after');
  out.close();
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; lost?: number });
  assert.equal(lines[0].msg, 'before');
  const written = lines.filter((l) => l.msg === 'range cannot be served').length;
  const lost = lines.reduce((n, l) => n + (l.lost ?? 0), 0);
  assert.ok(written < 100 && lost > 0, `the disk took ${written} of them`);
  assert.equal(lost, 500 - written, 'lines that tell of lost ones count every line not written whole');
  assert.equal(lines[lines.length - 1].msg, 'after');
});
