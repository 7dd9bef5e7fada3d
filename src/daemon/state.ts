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
import { NydusError } from '../../erofs/errors.ts';
import { ensureDirectory } from './log.ts';
import { RepeatedFailure, RepeatedFailures } from './repeated-failure.ts';

// The addon by its path: the bundles carry better-sqlite3's JavaScript, whose own lookup of the addon
// (the `bindings` package) starts from the calling file and would search dist/ for it.
export const SQLITE_ADDON = createRequire(import.meta.url).resolve('better-sqlite3/build/Release/better_sqlite3.node');

/**
 * The state database cannot be opened or is damaged: fatal for the daemon (a restart would meet it
 * again), naming the file and what to do. The file is never deleted or replaced: it is the user's.
 */
export class StateDbError extends NydusError {
  constructor(message: string) {
    super(message);
    this.name = 'StateDbError';
  }

  static of(file: string, cause: Error): StateDbError {
    const code = (cause as { code?: unknown }).code;
    return new StateDbError(`state database ${file} cannot be used: ${cause.message}${typeof code === 'string' ? ` (${code})` : ''}. `
      + 'Stop every nydusd using its directory, then move it (with its -wal and -shm files) away or restore it from a backup, '
      + 'and start nydusd again: a new database is made, the cache files are kept, and chunks are fetched again when read');
  }
}

/** The kernel's name of one cache file. */
export interface CacheFileKey {
  /** The volume key, e.g. `erofs,<fsid>` or `erofs,<domain_id>`. */
  readonly volume: string;
  /** The cookie key: the fsid for a bootstrap, the blob id for a blob. */
  readonly cookie: string;
}

/**
 * Schema versions (PRAGMA user_version). 0: marks by blob id (could not tell cache files apart);
 * 1: a row per marked chunk and per fetched chunk; 2: a bitmap per cache file and a count array per
 * blob (a row per chunk cost the daemon more than the chunks' verification).
 */
const SCHEMA_VERSION = 2;

/**
 * How long marks and fetch counts wait to be written together (scheduleFlush). (500 ms took the
 * guest's main thread from 5.7 to 4.3 s in one run, but widened what a kill -9 loses: the marks of
 * chunks a reader already read, which it never asks for again.)
 */
const FLUSH_DELAY_MS = 100;
/** A flush that failed is tried again after this. */
const FLUSH_RETRY_MS = 1000;

/** What DaemonState tells of its database failing while the daemon runs (the daemon logs it). */
export type StateFailureReport = (f:
  | { kind: 'write'; file: string; error: Error; pending: number; held: number }
  | { kind: 'read'; file: string; error: Error; what: string; held: number }
  | { kind: 'recovered'; file: string }) => void;

/** A set of chunk indexes as a bitmap: what a cache file holds, stored as it is in memory. */
export class ChunkBits {
  private bits: Uint8Array;
  size = 0;

  constructor(bytes: Uint8Array = new Uint8Array(0)) {
    this.bits = new Uint8Array(bytes);
    for (const b of this.bits) this.size += POPCOUNT[b];
  }

  has(i: number): boolean {
    return (this.bits[i >>> 3] & (1 << (i & 7))) !== 0;
  }

  /** Whether it was not there. */
  add(i: number): boolean {
    const at = i >>> 3;
    this.bits = atLeast(this.bits, at + 1);
    if (this.bits[at] & (1 << (i & 7))) return false;
    this.bits[at] |= 1 << (i & 7);
    this.size++;
    return true;
  }

  delete(i: number): boolean {
    if (!this.has(i)) return false;
    this.bits[i >>> 3] &= ~(1 << (i & 7));
    this.size--;
    return true;
  }

  indexes(): number[] {
    const out: number[] = [];
    this.bits.forEach((b, at) => {
      for (let bit = 0; b; bit++, b >>= 1) if (b & 1) out.push(at * 8 + bit);
    });
    return out;
  }

  /** The bitmap without its trailing zero bytes (as stored). */
  bytes(): Buffer {
    let n = this.bits.length;
    while (n > 0 && this.bits[n - 1] === 0) n--;
    return Buffer.from(this.bits.subarray(0, n));
  }
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, b) => {
  let n = 0;
  for (; b; b >>= 1) n += b & 1;
  return n;
});

/** `bytes`, or a copy grown (at least doubled) to hold `length` bytes, the new ones zero. */
function atLeast(bytes: Uint8Array, length: number): Uint8Array {
  if (length <= bytes.length) return bytes;
  const grown = new Uint8Array(Math.max(length, bytes.length * 2));
  grown.set(bytes);
  return grown;
}

/** Fetch counts: a byte per chunk of a blob, saturating at this. */
const MAX_COUNT = 255;

export class DaemonState {
  private readonly db: Database.Database;
  private readonly saveMarks: Database.Statement;
  private readonly loadMarks: Database.Statement;
  private readonly dropMarks: Database.Statement;
  private readonly marksOfCookie: Database.Statement;
  private readonly saveFetches: Database.Statement;
  private readonly loadFetches: Database.Statement;
  /**
   * The marks of cache files asked about, in memory (this process alone writes them): a READ asks
   * about every chunk of its amplification window, which must not cost a query each. Changed ones
   * are written a row per cache file, together (scheduleFlush).
   */
  private readonly known = new Map<string, { file: CacheFileKey; bits: ChunkBits }>();
  private readonly dirtyMarks = new Set<string>();
  /** Fetch counts per blob, loaded on the first fetch of this process; changed ones written with the marks. */
  private readonly fetchCounts = new Map<string, Uint8Array>();
  private readonly dirtyFetches = new Set<string>();
  private flushScheduled = false;
  /** Writes failing (flush, tried every FLUSH_RETRY_MS): reported now and then, not every flush. */
  private readonly writeFailures = new RepeatedFailure();
  /** Reads failing, by what was read. */
  private readonly readFailures = new RepeatedFailures();
  private readonly file: string;
  /** The directory of the state (the daemon's work dir): caches of the daemon's own keep their files beside it. */
  readonly dir: string;

  /**
   * `onFailure`: told when the database stops taking writes or giving marks while the daemon runs (a
   * full disk, damage), and once writes work again; nothing of it is thrown to the daemon's work.
   */
  constructor(workDir: string, private readonly onFailure: StateFailureReport = () => undefined) {
    try {
      ensureDirectory(workDir, 'state directory');
    } catch (e) {
      throw new StateDbError(`${(e as Error).message} (it holds the daemon's chunk-state.db)`);
    }
    this.dir = workDir;
    const file = (this.file = path.join(workDir, 'chunk-state.db'));
    let db: Database.Database | undefined;
    try {
      this.db = db = new Database(file, { nativeBinding: SQLITE_ADDON });
      // Registered entries may carry registry credentials: the owner alone reads the state (SQLite gives
      // its WAL and shared-memory files the database file's mode).
      fs.chmodSync(file, 0o600);
      this.db.pragma('journal_mode = WAL');
      // A marked chunk must survive a power cut only as far as the cache file does; NORMAL keeps WAL safe.
      this.db.pragma('synchronous = NORMAL');
      // Damage found now, in one clear error, not as a failed read of marks while the kernel waits.
      const check = this.db.pragma('quick_check(1)', { simple: true });
      if (check !== 'ok') throw new Error(`database disk image is malformed (${String(check)})`);
      const version = this.db.pragma('user_version', { simple: true }) as number;
      ({ saveMarks: this.saveMarks, loadMarks: this.loadMarks, dropMarks: this.dropMarks, marksOfCookie: this.marksOfCookie,
        saveFetches: this.saveFetches, loadFetches: this.loadFetches } = this.createSchema(version));
      if (version < 2) this.migrateRowsPerChunk();
      // Written when it changes: a restarted worker on a full disk takes over its state (writes that
      // fail later are kept in memory, see flush).
      if (version !== SCHEMA_VERSION) this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
    } catch (e) {
      if (db?.open) db.close();
      throw StateDbError.of(file, e as Error);
    }
  }

  private createSchema(version: number) {
    if (version < 1) {
      // Marks keyed by blob id alone cannot be told apart per cache file: drop them (chunks are
      // fetched again when needed, nothing cached in the cache files themselves is lost).
      this.db.exec('DROP TABLE IF EXISTS cached_chunks');
    }
    this.db.exec(`CREATE TABLE IF NOT EXISTS cache_file_marks (
      volume TEXT NOT NULL,
      cookie TEXT NOT NULL,
      bitmap BLOB NOT NULL,
      PRIMARY KEY (volume, cookie)
    ) WITHOUT ROWID`);
    // How often each chunk of a blob was fetched from a backend: the evidence that nothing is fetched twice.
    this.db.exec('CREATE TABLE IF NOT EXISTS blob_fetches (blob_id TEXT PRIMARY KEY, counts BLOB NOT NULL) WITHOUT ROWID');
    this.db.exec(`CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, entry TEXT NOT NULL)`);
    // Registration plans were kept here for a while; they live in a file of their own now (plan-store.ts).
    this.db.exec('DROP TABLE IF EXISTS registration_plans');
    return {
      saveMarks: this.db.prepare(`INSERT INTO cache_file_marks (volume, cookie, bitmap) VALUES (?, ?, ?)
      ON CONFLICT (volume, cookie) DO UPDATE SET bitmap = excluded.bitmap`),
      loadMarks: this.db.prepare('SELECT bitmap FROM cache_file_marks WHERE volume = ? AND cookie = ?'),
      dropMarks: this.db.prepare('DELETE FROM cache_file_marks WHERE volume = ? AND cookie = ?'),
      marksOfCookie: this.db.prepare('SELECT volume, bitmap FROM cache_file_marks WHERE cookie = ? ORDER BY volume'),
      saveFetches: this.db.prepare(`INSERT INTO blob_fetches (blob_id, counts) VALUES (?, ?)
      ON CONFLICT (blob_id) DO UPDATE SET counts = excluded.counts`),
      loadFetches: this.db.prepare('SELECT counts FROM blob_fetches WHERE blob_id = ?'),
    };
  }

  /** Version 1's rows per chunk, as bitmaps and count arrays: an upgraded daemon fetches nothing again. */
  private migrateRowsPerChunk(): void {
    const has = (t: string) => this.db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(t) !== undefined;
    this.db.transaction(() => {
      if (has('cache_file_chunks')) {
        const files = new Map<string, { volume: string; cookie: string; bits: ChunkBits }>();
        for (const r of this.db.prepare('SELECT volume, cookie, chunk_index FROM cache_file_chunks').iterate() as Iterable<{ volume: string; cookie: string; chunk_index: number }>) {
          const k = fileId(r);
          let f = files.get(k);
          if (!f) files.set(k, (f = { volume: r.volume, cookie: r.cookie, bits: new ChunkBits() }));
          f.bits.add(r.chunk_index);
        }
        for (const f of files.values()) this.saveMarks.run(f.volume, f.cookie, f.bits.bytes());
        this.db.exec('DROP TABLE cache_file_chunks');
      }
      if (has('chunk_fetches')) {
        const blobs = new Map<string, Uint8Array>();
        for (const r of this.db.prepare('SELECT blob_id, chunk_index, fetches FROM chunk_fetches').iterate() as Iterable<{ blob_id: string; chunk_index: number; fetches: number }>) {
          const counts = atLeast(blobs.get(r.blob_id) ?? new Uint8Array(0), r.chunk_index + 1);
          counts[r.chunk_index] = Math.min(r.fetches, MAX_COUNT);
          blobs.set(r.blob_id, counts);
        }
        for (const [blobId, counts] of blobs) this.saveFetches.run(blobId, Buffer.from(counts));
        this.db.exec('DROP TABLE chunk_fetches');
      }
    })();
  }

  mark(file: CacheFileKey, chunkIndexes: Iterable<number>): void {
    const bits = this.marksOf(file);
    for (const i of chunkIndexes) bits.add(i);
    this.dirtyMarks.add(fileId(file));
    this.scheduleFlush();
  }

  /** Written at once: a mark of a chunk the file does not hold must not outlive this call. */
  unmark(file: CacheFileKey, chunkIndexes: Iterable<number>): void {
    const bits = this.marksOf(file);
    for (const i of chunkIndexes) bits.delete(i);
    this.dirtyMarks.add(fileId(file));
    this.flush();
  }

  /**
   * Writes what changed in one transaction. When the database takes no writes (a full disk, damage)
   * the changes stay in memory, the daemon goes on with them, and they are written by a later flush
   * (tried again every FLUSH_RETRY_MS): the marks are what the daemon knows of its cache files, whose
   * bytes are not touched. Never throws.
   */
  flush(): void {
    this.flushScheduled = false;
    if (!this.dirtyMarks.size && !this.dirtyFetches.size) return;
    try {
      this.db.transaction(() => {
        for (const k of this.dirtyMarks) {
          const m = this.known.get(k);
          if (m) this.saveMarks.run(m.file.volume, m.file.cookie, m.bits.bytes());
        }
        for (const blobId of this.dirtyFetches) this.saveFetches.run(blobId, Buffer.from(this.fetchCounts.get(blobId)!));
      })();
    } catch (e) {
      const told = this.writeFailures.occur();
      if (told) this.onFailure({ kind: 'write', file: this.file, error: e as Error, pending: this.dirtyMarks.size + this.dirtyFetches.size, held: told.held });
      this.scheduleFlush(FLUSH_RETRY_MS);
      return;
    }
    this.dirtyMarks.clear();
    this.dirtyFetches.clear();
    if (this.writeFailures.recover()) this.onFailure({ kind: 'recovered', file: this.file });
  }

  /**
   * Changes are written FLUSH_DELAY_MS after the first one: a transaction per turn of the event loop
   * cost the guest's daemon seconds per rootfs. A crash loses at worst the marks of that while (their
   * chunks are fetched again); whatever the API reported as cached was written first (cacheFilesOf).
   */
  private scheduleFlush(delayMs = FLUSH_DELAY_MS): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setTimeout(() => {
      if (this.db.open) this.flush();
    }, delayMs).unref();
  }

  /** Forgets every mark of a cache file (it was culled). */
  clear(file: CacheFileKey): void {
    this.dirtyMarks.delete(fileId(file));
    this.known.delete(fileId(file));
    this.dropMarks.run(file.volume, file.cookie);
  }

  isCached(file: CacheFileKey, chunkIndex: number): boolean {
    return this.marksOf(file).has(chunkIndex);
  }

  cached(file: CacheFileKey): Set<number> {
    return new Set(this.marksOf(file).indexes());
  }

  private marksOf(file: CacheFileKey): ChunkBits {
    const k = fileId(file);
    let known = this.known.get(k);
    if (!known) {
      const row = this.read('chunk marks', `${file.volume} ${file.cookie}`, () => this.loadMarks.get(file.volume, file.cookie) as { bitmap: Buffer } | undefined);
      known = { file: { volume: file.volume, cookie: file.cookie }, bits: new ChunkBits(row?.bitmap) };
      this.known.set(k, known);
    }
    return known.bits;
  }

  count(file: CacheFileKey): number {
    return this.marksOf(file).size;
  }

  /** Every cache file of a blob (one per volume that opened it) with its number of marked chunks. */
  cacheFilesOf(blobId: string): Array<{ volume: string; chunks: number }> {
    this.flush();
    return (this.marksOfCookie.all(blobId) as Array<{ volume: string; bitmap: Buffer }>)
      .map((r) => ({ volume: r.volume, chunks: new ChunkBits(r.bitmap).size }))
      .filter((f) => f.chunks > 0);
  }

  countFetch(blobId: string, chunkIndex: number): void {
    let counts = this.fetchCounts.get(blobId);
    if (!counts) counts = new Uint8Array(this.read('fetch counts', blobId, () => (this.loadFetches.get(blobId) as { counts: Buffer } | undefined)?.counts) ?? new Uint8Array(0));
    counts = atLeast(counts, chunkIndex + 1);
    if (counts[chunkIndex] < MAX_COUNT) counts[chunkIndex]++;
    this.fetchCounts.set(blobId, counts);
    this.dirtyFetches.add(blobId);
    this.scheduleFlush();
  }

  /** How often each chunk of a blob was fetched, by chunk index (chunks never fetched left out). */
  fetches(blobId: string): Record<number, number> {
    this.flush();
    const counts = (this.loadFetches.get(blobId) as { counts: Buffer } | undefined)?.counts ?? Buffer.alloc(0);
    const out: Record<number, number> = {};
    counts.forEach((n, i) => {
      if (n) out[i] = n;
    });
    return out;
  }

  /**
   * A read of marks or counts the daemon's work needs: one the database cannot give (damage found
   * while running) is reported and taken as none, so the chunks are fetched again when read.
   */
  private read<T>(what: string, of: string, query: () => T | undefined): T | undefined {
    try {
      return query();
    } catch (e) {
      const told = this.readFailures.occur(`${what}\0${(e as Error).message}`);
      if (told) this.onFailure({ kind: 'read', file: this.file, error: e as Error, what: `${what} of ${of}`, held: told.held });
      return undefined;
    }
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
