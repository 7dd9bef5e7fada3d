/**
 * The daemon's persistent state in SQLite (WAL) in the work dir: the images registered through the API
 * (so a restarted daemon serves them again) and which chunks of which blob are in the kernel's cache file and verified, kept in SQLite (WAL) in the
 * work dir. A chunk is marked only after its bytes were written; a crash at any moment leaves at
 * worst an unmarked chunk that is fetched again, never a marked chunk that is missing.
 */
import Database from 'better-sqlite3';
import path from 'node:path';
import fs from 'node:fs';

export class DaemonState {
  private readonly db: Database.Database;
  private readonly insert: Database.Statement;
  private readonly remove: Database.Statement;
  private readonly listBlob: Database.Statement;
  private readonly countBlob: Database.Statement;
  private readonly hasChunk: Database.Statement;

  constructor(workDir: string) {
    fs.mkdirSync(workDir, { recursive: true });
    this.db = new Database(path.join(workDir, 'chunk-state.db'));
    this.db.pragma('journal_mode = WAL');
    // A marked chunk must survive a power cut only as far as the cache file does; NORMAL keeps WAL safe.
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(`CREATE TABLE IF NOT EXISTS cached_chunks (
      blob_id TEXT NOT NULL,
      chunk_index INTEGER NOT NULL,
      PRIMARY KEY (blob_id, chunk_index)
    ) WITHOUT ROWID`);
    // How often each chunk was fetched from the backend: the evidence that a restart refetches nothing.
    this.db.exec(`CREATE TABLE IF NOT EXISTS chunk_fetches (
      blob_id TEXT NOT NULL, chunk_index INTEGER NOT NULL, fetches INTEGER NOT NULL,
      PRIMARY KEY (blob_id, chunk_index)
    ) WITHOUT ROWID`);
    this.db.exec(`CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, entry TEXT NOT NULL)`);
    this.insert = this.db.prepare('INSERT OR IGNORE INTO cached_chunks (blob_id, chunk_index) VALUES (?, ?)');
    this.remove = this.db.prepare('DELETE FROM cached_chunks WHERE blob_id = ? AND chunk_index = ?');
    this.listBlob = this.db.prepare('SELECT chunk_index FROM cached_chunks WHERE blob_id = ?');
    this.countBlob = this.db.prepare('SELECT COUNT(*) AS n FROM cached_chunks WHERE blob_id = ?');
    this.hasChunk = this.db.prepare('SELECT 1 FROM cached_chunks WHERE blob_id = ? AND chunk_index = ?');
  }

  mark(blobId: string, chunkIndexes: number[]): void {
    this.db.transaction(() => {
      for (const i of chunkIndexes) this.insert.run(blobId, i);
    })();
  }

  unmark(blobId: string, chunkIndexes: number[]): void {
    this.db.transaction(() => {
      for (const i of chunkIndexes) this.remove.run(blobId, i);
    })();
  }

  clear(blobId: string): void {
    this.db.prepare('DELETE FROM cached_chunks WHERE blob_id = ?').run(blobId);
  }

  isCached(blobId: string, chunkIndex: number): boolean {
    return this.hasChunk.get(blobId, chunkIndex) !== undefined;
  }

  cached(blobId: string): Set<number> {
    return new Set((this.listBlob.all(blobId) as Array<{ chunk_index: number }>).map((r) => r.chunk_index));
  }

  count(blobId: string): number {
    return (this.countBlob.get(blobId) as { n: number }).n;
  }

  countFetch(blobId: string, chunkIndex: number): void {
    this.db.prepare(`INSERT INTO chunk_fetches (blob_id, chunk_index, fetches) VALUES (?, ?, 1)
      ON CONFLICT (blob_id, chunk_index) DO UPDATE SET fetches = fetches + 1`).run(blobId, chunkIndex);
  }

  fetches(blobId: string): Record<number, number> {
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
    this.db.close();
  }
}
