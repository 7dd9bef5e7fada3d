/**
 * The daemon's chunk state (src/daemon/state.ts): marks per cache file as bitmaps, fetch counts per
 * blob, kept across a restart, and a state written by the previous schema (a row per chunk) taken
 * over without losing a mark; a database damaged under the running daemon; and the guard that closes a
 * cache file's fd once its work drained.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { ChunkBits, DaemonState } from '../src/daemon/state.ts';
import { WorkGuard } from '../src/daemon/blob-cache.ts';
import { tmpDir } from './helpers/fixtures.ts';

test('ChunkBits: add, delete, has, size and indexes agree with a Set, across growth', () => {
  const bits = new ChunkBits();
  const set = new Set<number>();
  let seed = 7;
  for (let n = 0; n < 5000; n++) {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    const i = seed % 20000;
    if (seed % 3 === 0) assert.equal(bits.delete(i), set.delete(i));
    else {
      assert.equal(bits.add(i), !set.has(i));
      set.add(i);
    }
  }
  assert.equal(bits.size, set.size);
  assert.deepEqual(bits.indexes(), [...set].sort((a, b) => a - b));
  for (let i = 0; i < 20008; i++) assert.equal(bits.has(i), set.has(i), `chunk ${i}`);
  const again = new ChunkBits(bits.bytes());
  assert.equal(again.size, set.size);
  assert.deepEqual(again.indexes(), bits.indexes());
});

test('state: marks and fetch counts outlive the process; unmark and clear are written at once', () => {
  const dir = tmpDir('state-');
  const a = { volume: 'erofs,img1', cookie: 'blob1' };
  const b = { volume: 'erofs,img2', cookie: 'blob1' };
  let state = new DaemonState(dir);
  state.mark(a, [0, 3, 9, 200]);
  state.mark(b, [1]);
  state.countFetch('blob1', 3);
  state.countFetch('blob1', 3);
  state.countFetch('blob1', 9);
  state.unmark(a, [9]);
  state.close();
  state = new DaemonState(dir);
  assert.deepEqual([...state.cached(a)].sort((x, y) => x - y), [0, 3, 200]);
  assert.equal(state.count(b), 1);
  assert.deepEqual(state.fetches('blob1'), { 3: 2, 9: 1 });
  assert.deepEqual(state.cacheFilesOf('blob1'), [{ volume: 'erofs,img1', chunks: 3 }, { volume: 'erofs,img2', chunks: 1 }]);
  state.clear(b);
  assert.deepEqual(state.cacheFilesOf('blob1'), [{ volume: 'erofs,img1', chunks: 3 }]);
  state.close();
});

test('state: a state of the previous schema (a row per chunk) is taken over, every mark and count kept', () => {
  const dir = tmpDir('state-v1-');
  const db = new Database(path.join(dir, 'chunk-state.db'));
  db.exec(`CREATE TABLE cache_file_chunks (volume TEXT NOT NULL, cookie TEXT NOT NULL, chunk_index INTEGER NOT NULL,
    PRIMARY KEY (volume, cookie, chunk_index)) WITHOUT ROWID`);
  db.exec(`CREATE TABLE chunk_fetches (blob_id TEXT NOT NULL, chunk_index INTEGER NOT NULL, fetches INTEGER NOT NULL,
    PRIMARY KEY (blob_id, chunk_index)) WITHOUT ROWID`);
  db.exec(`CREATE TABLE images (id TEXT PRIMARY KEY, entry TEXT NOT NULL)`);
  const insert = db.prepare('INSERT INTO cache_file_chunks VALUES (?, ?, ?)');
  for (const i of [0, 1, 2, 77, 4095]) insert.run('erofs,old', 'blobX', i);
  insert.run('erofs,other', 'blobX', 5);
  db.prepare('INSERT INTO chunk_fetches VALUES (?, ?, ?)').run('blobX', 77, 1);
  db.prepare('INSERT INTO chunk_fetches VALUES (?, ?, ?)').run('blobX', 4095, 3);
  db.prepare('INSERT INTO images VALUES (?, ?)').run('img', JSON.stringify({ id: 'img' }));
  db.pragma('user_version = 1');
  db.close();

  const state = new DaemonState(dir);
  assert.deepEqual([...state.cached({ volume: 'erofs,old', cookie: 'blobX' })].sort((x, y) => x - y), [0, 1, 2, 77, 4095]);
  assert.ok(state.isCached({ volume: 'erofs,other', cookie: 'blobX' }, 5));
  assert.ok(!state.isCached({ volume: 'erofs,other', cookie: 'blobX' }, 0));
  assert.deepEqual(state.fetches('blobX'), { 77: 1, 4095: 3 });
  assert.deepEqual(state.images(), [{ id: 'img', entry: { id: 'img' } }]);
  state.close();
  const check = new Database(path.join(dir, 'chunk-state.db'), { readonly: true });
  assert.equal(check.pragma('user_version', { simple: true }), 2);
  assert.equal((check.prepare("SELECT COUNT(*) AS n FROM sqlite_master WHERE name IN ('cache_file_chunks', 'chunk_fetches')").get() as { n: number }).n, 0);
  check.close();
});

test('WorkGuard: drains once when the last user is done after close, never again for work started after it', async () => {
  let drains = 0;
  const guard = new WorkGuard(() => drains++);
  let release!: () => void;
  const running = guard.use(() => new Promise<void>((r) => (release = r)));
  guard.close();
  assert.equal(drains, 0, 'work in flight keeps it open');
  release();
  await running;
  assert.equal(drains, 1);
  await guard.use(async () => undefined);
  guard.close();
  assert.equal(drains, 1, 'the fd is closed once, whatever uses the guard after close');
});

test('state: a damaged database, or a directory in its place, is one error naming the file and what to do; nothing of it is deleted', () => {
  const dir = tmpDir('state-damaged');
  try {
    const cases: Array<[string, (db: string) => void, RegExp]> = [
      ['random bytes', (db) => fs.writeFileSync(db, Buffer.alloc(65536, 0x5a)), /file is not a database \(SQLITE_NOTADB\)/],
      ['truncated', (db) => {
        const good = new DaemonState(path.join(dir, 'good'));
        good.mark({ volume: 'v', cookie: 'c' }, [1, 2]);
        good.close();
        fs.writeFileSync(db, fs.readFileSync(path.join(dir, 'good', 'chunk-state.db')).subarray(0, 100));
      }, /database disk image is malformed \(SQLITE_CORRUPT\)/],
      ['a directory', (db) => fs.mkdirSync(db), /unable to open database file \(SQLITE_CANTOPEN\)/],
    ];
    for (const [what, make, cause] of cases) {
      const stateDir = path.join(dir, what.replace(/ /g, '-'));
      fs.mkdirSync(stateDir);
      const db = path.join(stateDir, 'chunk-state.db');
      make(db);
      const before = fs.statSync(db).isFile() ? fs.readFileSync(db) : null;
      assert.throws(() => new DaemonState(stateDir), (e: Error) => {
        assert.equal(e.name, 'StateDbError', `${what}: ${e}`);
        assert.ok(e.message.startsWith(`state database ${db} cannot be used: `), e.message);
        assert.match(e.message, cause, what);
        assert.match(e.message, /move it \(with its -wal and -shm files\) away or restore it/);
        return true;
      }, what);
      if (before) assert.deepEqual(fs.readFileSync(db), before, `${what}: the file is kept as it was`);
      else assert.ok(fs.statSync(db).isDirectory(), `${what}: kept`);
    }
    // A file where the state directory should be.
    fs.writeFileSync(path.join(dir, 'a-file'), 'x');
    assert.throws(() => new DaemonState(path.join(dir, 'a-file')), /^StateDbError: state directory .*a-file is not a directory/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('state: a database damaged under the running daemon is reported; reads it cannot answer are taken as no marks, nothing thrown', () => {
  const dir = tmpDir('state-damaged-live');
  try {
    const reports: Array<{ kind: string; what?: string }> = [];
    const state = new DaemonState(dir, (r) => reports.push(r));
    const a = { volume: 'erofs,a', cookie: 'blob' };
    const c = { volume: 'erofs,c', cookie: 'blob' };
    state.mark(a, [1, 2]);
    state.flush();
    // Another process writes marks of c (this connection's page cache is dropped at its next read),
    // moves them into the database file, and then the file's pages past the first are overwritten.
    const file = path.join(dir, 'chunk-state.db');
    const other = new Database(file);
    other.prepare('INSERT INTO cache_file_marks (volume, cookie, bitmap) VALUES (?, ?, ?)').run(c.volume, c.cookie, Buffer.from([0xff]));
    other.pragma('wal_checkpoint(TRUNCATE)');
    other.close();
    const bytes = fs.readFileSync(file);
    bytes.fill(0x5a, 4096);
    fs.writeFileSync(file, bytes);

    assert.equal(state.isCached(c, 0), false, 'marks it cannot read are taken as none');
    assert.equal(state.isCached(a, 1), true, 'marks it holds in memory stay');
    assert.doesNotThrow(() => state.countFetch('blob', 3));
    assert.deepEqual(reports.map((r) => r.kind), ['read', 'read'], JSON.stringify(reports));
    assert.match(reports[0].what ?? '', /chunk marks of erofs,c blob/);
    state.mark(a, [3]);
    assert.doesNotThrow(() => state.close(), 'closing flushes what it can, and throws nothing');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
