/**
 * The daemon's persistent state in SQLite (WAL) in the work dir: the images registered through the API
 * (so a restarted daemon serves them again) and which chunks each of the kernel's cache files holds.
 *
 * A cache file is what the kernel names by (volume key, cookie key): `erofs,<fsid or domain>` and the
 * blob id. Two images on one blob without a shared domain have two cache files for it, so chunk marks
 * belong to the cache file, never to the blob alone. A chunk is marked only after its bytes were
 * written; a crash at any moment leaves at worst an unmarked chunk that is fetched again, never a
 * marked chunk that is missing (and marks are checked against the cache file when it is opened).
 */
import Database from 'better-sqlite3';
import path from 'node:path';
import fs from 'node:fs';
import { createRequire } from 'node:module';

// The addon by its path: the bundles carry better-sqlite3's JavaScript, whose own lookup of the addon
// (the `bindings` package) starts from the calling file and would search dist/ for it.
const SQLITE_ADDON = createRequire(import.meta.url).resolve('better-sqlite3/build/Release/better_sqlite3.node');

/** The kernel's name of one cache file. */
export interface CacheFileKey {
  /** The volume key, e.g. `erofs,<fsid>` or `erofs,<domain_id>`. */
  readonly volume: string;
  /** The cookie key: the fsid for a bootstrap, the blob id for a blob. */
  readonly cookie: string;
}

/** Schema versions (PRAGMA user_version). 0: marks by blob id (could not tell cache files apart). */
const SCHEMA_VERSION = 1;

export class DaemonState {
  private readonly db: Database.Database;
  private readonly insert: Database.Statement;
  private readonly remove: Database.Statement;
  private readonly listFile: Database.Statement;
  private readonly filesOfCookie: Database.Statement;
  private readonly bumpFetch: Database.Statement;
  /**
   * Marks and fetch counts not yet written: the hot path adds them and one transaction per turn of the
   * event loop writes them (a crash loses at worst marks, whose chunks are fetched again).
   */
  private pendingMarks = new Map<string, { file: CacheFileKey; chunks: Set<number> }>();
  private pendingFetches = new Map<string, { blobId: string; chunkIndex: number; n: number }>();
  /**
   * The marks of cache files asked about, in memory (this process alone writes them): a READ asks
   * about every chunk of its amplification window, which must not cost a query each.
   */
  private readonly known = new Map<string, Set<number>>();
  private flushScheduled = false;

  constructor(workDir: string) {
    fs.mkdirSync(workDir, { recursive: true });
    const file = path.join(workDir, 'chunk-state.db');
    this.db = new Database(file, { nativeBinding: SQLITE_ADDON });
    // Registered entries may carry registry credentials: the owner alone reads the state (SQLite gives
    // its WAL and shared-memory files the database file's mode).
    fs.chmodSync(file, 0o600);
    this.db.pragma('journal_mode = WAL');
    // A marked chunk must survive a power cut only as far as the cache file does; NORMAL keeps WAL safe.
    this.db.pragma('synchronous = NORMAL');
    const version = this.db.pragma('user_version', { simple: true }) as number;
    if (version < 1) {
      // Marks keyed by blob id alone cannot be told apart per cache file: drop them (chunks are
      // fetched again when needed, nothing cached in the cache files themselves is lost).
      this.db.exec('DROP TABLE IF EXISTS cached_chunks');
    }
    this.db.exec(`CREATE TABLE IF NOT EXISTS cache_file_chunks (
      volume TEXT NOT NULL,
      cookie TEXT NOT NULL,
      chunk_index INTEGER NOT NULL,
      PRIMARY KEY (volume, cookie, chunk_index)
    ) WITHOUT ROWID`);
    // How often each chunk of a blob was fetched from a backend: the evidence that nothing is fetched twice.
    this.db.exec(`CREATE TABLE IF NOT EXISTS chunk_fetches (
      blob_id TEXT NOT NULL, chunk_index INTEGER NOT NULL, fetches INTEGER NOT NULL,
      PRIMARY KEY (blob_id, chunk_index)
    ) WITHOUT ROWID`);
    this.db.exec(`CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, entry TEXT NOT NULL)`);
    this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
    this.insert = this.db.prepare('INSERT OR IGNORE INTO cache_file_chunks (volume, cookie, chunk_index) VALUES (?, ?, ?)');
    this.remove = this.db.prepare('DELETE FROM cache_file_chunks WHERE volume = ? AND cookie = ? AND chunk_index = ?');
    this.listFile = this.db.prepare('SELECT chunk_index FROM cache_file_chunks WHERE volume = ? AND cookie = ?');
    this.filesOfCookie = this.db.prepare('SELECT volume, COUNT(*) AS n FROM cache_file_chunks WHERE cookie = ? GROUP BY volume ORDER BY volume');
    this.bumpFetch = this.db.prepare(`INSERT INTO chunk_fetches (blob_id, chunk_index, fetches) VALUES (?, ?, ?)
      ON CONFLICT (blob_id, chunk_index) DO UPDATE SET fetches = fetches + excluded.fetches`);
  }

  mark(file: CacheFileKey, chunkIndexes: Iterable<number>): void {
    const k = fileId(file);
    let p = this.pendingMarks.get(k);
    if (!p) this.pendingMarks.set(k, (p = { file, chunks: new Set() }));
    const known = this.known.get(k);
    for (const i of chunkIndexes) {
      p.chunks.add(i);
      known?.add(i);
    }
    this.scheduleFlush();
  }

  unmark(file: CacheFileKey, chunkIndexes: Iterable<number>): void {
    const p = this.pendingMarks.get(fileId(file));
    const known = this.known.get(fileId(file));
    this.db.transaction(() => {
      for (const i of chunkIndexes) {
        p?.chunks.delete(i);
        known?.delete(i);
        this.remove.run(file.volume, file.cookie, i);
      }
    })();
  }

  /** Writes what is pending in one transaction. */
  flush(): void {
    this.flushScheduled = false;
    if (!this.pendingMarks.size && !this.pendingFetches.size) return;
    const marks = this.pendingMarks;
    const fetches = this.pendingFetches;
    this.pendingMarks = new Map();
    this.pendingFetches = new Map();
    this.db.transaction(() => {
      for (const { file, chunks } of marks.values()) for (const i of chunks) this.insert.run(file.volume, file.cookie, i);
      for (const f of fetches.values()) this.bumpFetch.run(f.blobId, f.chunkIndex, f.n);
    })();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      if (this.db.open) this.flush();
    });
  }

  /** Forgets every mark of a cache file (it was culled). */
  clear(file: CacheFileKey): void {
    this.pendingMarks.delete(fileId(file));
    this.known.delete(fileId(file));
    this.db.prepare('DELETE FROM cache_file_chunks WHERE volume = ? AND cookie = ?').run(file.volume, file.cookie);
  }

  isCached(file: CacheFileKey, chunkIndex: number): boolean {
    return this.marksOf(file).has(chunkIndex);
  }

  cached(file: CacheFileKey): Set<number> {
    return new Set(this.marksOf(file));
  }

  private marksOf(file: CacheFileKey): Set<number> {
    const k = fileId(file);
    let known = this.known.get(k);
    if (!known) {
      this.flush();
      known = new Set((this.listFile.all(file.volume, file.cookie) as Array<{ chunk_index: number }>).map((r) => r.chunk_index));
      this.known.set(k, known);
    }
    return known;
  }

  count(file: CacheFileKey): number {
    return this.marksOf(file).size;
  }

  /** Every cache file of a blob (one per volume that opened it) with its number of marked chunks. */
  cacheFilesOf(blobId: string): Array<{ volume: string; chunks: number }> {
    this.flush();
    return (this.filesOfCookie.all(blobId) as Array<{ volume: string; n: number }>).map((r) => ({ volume: r.volume, chunks: r.n }));
  }

  countFetch(blobId: string, chunkIndex: number): void {
    const k = `${blobId}:${chunkIndex}`;
    const f = this.pendingFetches.get(k);
    if (f) f.n++;
    else this.pendingFetches.set(k, { blobId, chunkIndex, n: 1 });
    this.scheduleFlush();
  }

  fetches(blobId: string): Record<number, number> {
    this.flush();
    const rows = this.db.prepare('SELECT chunk_index, fetches FROM chunk_fetches WHERE blob_id = ?').all(blobId) as Array<{ chunk_index: number; fetches: number }>;
    return Object.fromEntries(rows.map((r) => [r.chunk_index, r.fetches]));
  }

  saveImage(id: string, entry: unknown): void {
    this.db.prepare('INSERT OR REPLACE INTO images (id, entry) VALUES (?, ?)').run(id, JSON.stringify(entry));
  }

  deleteImage(id: string): void {
    this.db.prepare('DELETE FROM images WHERE id = ?').run(id);
  }

  images(): Array<{ id: string; entry: unknown }> {
    return (this.db.prepare('SELECT id, entry FROM images ORDER BY rowid').all() as Array<{ id: string; entry: string }>)
      .map((r) => ({ id: r.id, entry: JSON.parse(r.entry) }));
  }

  close(): void {
    if (this.db.open) this.flush();
    this.db.close();
  }
}

/** A cache file's key in the maps; made once per key object (a cache file asks with the same one for every chunk). */
const fileIds = new WeakMap<CacheFileKey, string>();
function fileId(f: CacheFileKey): string {
  let id = fileIds.get(f);
  if (id === undefined) fileIds.set(f, (id = `${f.volume}\u0000${f.cookie}`));
  return id;
}
