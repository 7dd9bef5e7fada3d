/**
 * PlanStore: the bytes of kept registration plans (plan-cache.ts) in a SQLite file of their own
 * beside the state database, `registration-plans.db`. It is a cache: losing it costs validations,
 * nothing else. So it never shares the state database, whose damage is fatal (marks, registered
 * images): a plans file that cannot be opened, fails its check or is found damaged while in use is
 * deleted and made anew, and when even that fails nothing is kept (every registration validates).
 *
 * Each row carries the SHA-256 of its plan bytes, checked at every load: a row damaged in a way
 * SQLite does not notice is never handed on. Rows are small beside their plan (key, use order,
 * size, checksum before the plan's bytes, the use order indexed): finding the least recently used
 * or the total size reads no plan.
 */
import Database from 'better-sqlite3';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { SQLITE_ADDON } from './state.ts';

export const PLAN_STORE_FILE = 'registration-plans.db';

/**
 * The write-ahead log is cut back to this after a checkpoint: a large plan written once does not
 * leave a log of its size behind.
 */
const JOURNAL_SIZE_LIMIT = 4 << 20;

/** A kept plan's bytes do not match the checksum kept with them. */
export class DamagedPlanError extends Error {}

interface Statements {
  any: Database.Statement;
  load: Database.Statement;
  touch: Database.Statement;
  save: Database.Statement;
  total: Database.Statement;
  byUse: Database.Statement;
  drop: Database.Statement;
}

/** SQLite's words for a file that is not (or no longer) a sound database (with its extended codes: SQLITE_CORRUPT_INDEX...). */
const isDamage = (code: string) => code === 'SQLITE_NOTADB' || code.startsWith('SQLITE_CORRUPT');

export class PlanStore {
  readonly file: string;
  private db: Database.Database | null = null;
  private q: Statements | null = null;
  private closed = false;

  constructor(dir: string, private readonly log: Logger) {
    this.file = path.join(dir, PLAN_STORE_FILE);
    this.open();
  }

  /** Whether the store keeps plans at all (false once it could not be opened nor made anew). */
  get usable(): boolean {
    return this.q !== null;
  }

  /** Whether any plan is kept. */
  hasAny(): boolean {
    return this.run((q) => q.any.get() !== undefined, false);
  }

  /**
   * The plan bytes kept under `key`; undefined when none are. Throws DamagedPlanError for bytes that
   * do not match their checksum (the caller drops them).
   */
  load(key: string): Buffer | undefined {
    const row = this.run((q) => q.load.get(key) as { sha256: Buffer; plan: Buffer } | undefined, undefined);
    if (!row) return undefined;
    if (!crypto.createHash('sha256').update(row.plan).digest().equals(row.sha256)) throw new DamagedPlanError(`the kept plan ${key} does not match its checksum`);
    return row.plan;
  }

  /** `key` is now the most recently used. */
  touch(key: string): void {
    this.run((q) => q.touch.run(key), undefined);
  }

  /** Keeps a plan under `key` as the most recently used, then drops the least recently used beyond `maxBytes` in all. */
  save(key: string, plan: Uint8Array, maxBytes: number): void {
    const sha256 = crypto.createHash('sha256').update(plan).digest();
    this.run((q) => this.db!.transaction(() => {
      q.save.run(key, plan.length, sha256, plan);
      let total = (q.total.get() as { total: number }).total;
      if (total <= maxBytes) return;
      for (const r of q.byUse.all() as Array<{ key: string; bytes: number }>) {
        if (total <= maxBytes) break;
        q.drop.run(r.key);
        total -= r.bytes;
      }
    })(), undefined);
  }

  drop(key: string): void {
    this.run((q) => q.drop.run(key), undefined);
  }

  close(): void {
    this.closed = true;
    this.shut();
  }

  /**
   * `fn` on the open store; `none` when there is none. A failure is thrown to the caller (who logs
   * it); one that says the file is damaged makes the store anew first.
   */
  private run<T>(fn: (q: Statements) => T, none: T): T {
    if (!this.q) return none;
    try {
      return fn(this.q);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      if (typeof code === 'string' && isDamage(code)) {
        this.log.warn({ file: this.file, err: (e as Error).message }, 'the kept registration plans are damaged; they are dropped');
        this.shut();
        this.remove();
        this.open();
      }
      throw e;
    }
  }

  private open(): void {
    if (this.closed) return;
    try {
      this.openFile();
      return;
    } catch (e) {
      this.shut();
      this.log.warn({ file: this.file, err: (e as Error).message }, 'the kept registration plans cannot be used; the file is made anew');
    }
    try {
      this.remove();
      this.openFile();
    } catch (e) {
      this.shut();
      this.log.warn({ file: this.file, err: (e as Error).message }, 'no registration plan can be kept: every registration validates its bootstrap');
    }
  }

  private openFile(): void {
    const db = (this.db = new Database(this.file, { nativeBinding: SQLITE_ADDON }));
    fs.chmodSync(this.file, 0o600);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma(`journal_size_limit = ${JOURNAL_SIZE_LIMIT}`);
    const check = db.pragma('quick_check(1)', { simple: true });
    if (check !== 'ok') throw new Error(`database disk image is malformed (${String(check)})`);
    db.exec('CREATE TABLE IF NOT EXISTS plans (key TEXT PRIMARY KEY, used INTEGER NOT NULL, bytes INTEGER NOT NULL, sha256 BLOB NOT NULL, plan BLOB NOT NULL)');
    db.exec('CREATE INDEX IF NOT EXISTS plans_by_use ON plans (used)');
    this.q = {
      any: db.prepare('SELECT 1 FROM plans LIMIT 1'),
      load: db.prepare('SELECT sha256, plan FROM plans WHERE key = ?'),
      touch: db.prepare('UPDATE plans SET used = (SELECT MAX(used) FROM plans) + 1 WHERE key = ?'),
      save: db.prepare(`INSERT INTO plans (key, used, bytes, sha256, plan) VALUES (?, (SELECT COALESCE(MAX(used), 0) + 1 FROM plans), ?, ?, ?)
        ON CONFLICT (key) DO UPDATE SET used = excluded.used, bytes = excluded.bytes, sha256 = excluded.sha256, plan = excluded.plan`),
      total: db.prepare('SELECT COALESCE(SUM(bytes), 0) AS total FROM plans'),
      byUse: db.prepare('SELECT key, bytes FROM plans ORDER BY used'),
      drop: db.prepare('DELETE FROM plans WHERE key = ?'),
    };
  }

  private shut(): void {
    this.q = null;
    try {
      if (this.db?.open) this.db.close();
    } catch {
      // (A database that cannot even be closed is dropped all the same.)
    }
    this.db = null;
  }

  private remove(): void {
    for (const f of [this.file, `${this.file}-wal`, `${this.file}-shm`]) fs.rmSync(f, { force: true });
  }
}
