/**
 * Registration plans kept by content (src/daemon/plan-cache.ts): a bootstrap registered again, in the
 * same daemon or after a restart, is not validated again; a bootstrap whose bytes changed is, and a
 * bad one is refused whatever was kept for its path; a kept plan that cannot be read back, another
 * build's or another prefetch option's is not used; the plans' own file, damaged or failing, costs
 * validations and nothing else.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { spawnSync } from 'node:child_process';
import Database from 'better-sqlite3';
import crypto from 'node:crypto';
import v8 from 'node:v8';
import { createImage } from '../src/builder/create.ts';
import { ImageRegistry } from '../src/daemon/daemon.ts';
import { DaemonState } from '../src/daemon/state.ts';
import { PlanCache, PLAN_MAX_BYTES, fileDigest } from '../src/daemon/plan-cache.ts';
import { PLAN_STORE_FILE, PlanStore } from '../src/daemon/plan-store.ts';
import { planRegistration } from '../src/daemon/registration.ts';
import { RegistrationPool } from '../src/daemon/registration-pool.ts';
import type { RegistrationPlan, RegistrationRequest } from '../src/daemon/registration.ts';
import type { ResolvedObject } from '../src/daemon/frontend/cachefiles.ts';
import { prand, tmpDir } from './helpers/fixtures.ts';
import { blobCacheEntry } from './helpers/api-client.ts';
import { repoRoot } from './helpers/cli.ts';

const work = tmpDir('plan-cache');
const silent = pino({ level: 'silent' });
after(() => fs.rmSync(work, { recursive: true, force: true }));

/** The registration pool, counting the plans it is asked for (each one a bootstrap read and validated). */
class CountingPool extends RegistrationPool {
  plans = 0;
  override plan(req: RegistrationRequest, firstImage = false): Promise<RegistrationPlan> {
    this.plans++;
    return super.plan(req, firstImage);
  }
}

/** An image of its own in `dir` (its bootstrap at `bootstrap` when given): its bootstrap, blob dir and blob id. */
function image(dir: string, seed: number, bootstrap = path.join(dir, 'img.boot')) {
  const src = path.join(dir, `src-${seed}`);
  fs.mkdirSync(src, { recursive: true });
  fs.writeFileSync(path.join(src, 'a'), prand(300000, seed));
  fs.writeFileSync(path.join(src, 'b'), Buffer.alloc(70000, 'b'));
  const blobDir = path.join(dir, 'blobs');
  const r = createImage({ source: src, bootstrap, blobDir, chunkSize: 0x10000, compressor: 'zstd', digester: 'blake3' });
  return { bootstrap, blobDir, blobId: r.blob!.blobId };
}

function blobOf(registry: ImageRegistry, id: string, blobId: string) {
  const r = registry.resolve(id, blobId);
  assert.ok(r && r.kind === 'blob', `image ${id} serves blob ${blobId}`);
  return (r as Extract<ResolvedObject, { kind: 'blob' }>).map;
}

/** A blob map's chunks as plain numbers, to compare two maps. */
const chunksOf = (map: ReturnType<typeof blobOf>) => Array.from({ length: map.chunkCount }, (_, i) => {
  const c = map.at(i);
  return [c.indexInBlob, c.compressedOffset, c.compressedSize, c.uncompressedOffset, c.uncompressedSize, Buffer.from(c.digest).toString('hex')];
});

test('a bootstrap registered again takes the kept plan, in the same daemon and in a restarted one; changed bytes are validated again', async () => {
  const dir = path.join(work, 'again');
  fs.mkdirSync(dir);
  const img = image(dir, 1);
  const workDir = path.join(dir, 'cache');
  const stateDir = path.join(dir, 'state');
  const pool = new CountingPool();
  let state = new DaemonState(stateDir);
  let registry = new ImageRegistry(state, silent, undefined, pool);
  try {
    await registry.add(blobCacheEntry('a', { ...img, workDir }));
    assert.equal(pool.plans, 1, 'the first registration validates the bootstrap');
    // A second container of the same image: registered under an id of its own.
    await registry.add(blobCacheEntry('b', { ...img, workDir }));
    assert.equal(pool.plans, 1, 'the same bytes again: the kept plan');
    assert.deepEqual(chunksOf(blobOf(registry, 'b', img.blobId)), chunksOf(blobOf(registry, 'a', img.blobId)));
    assert.ok(blobOf(registry, 'a', img.blobId).chunkCount >= 5);

    // A restarted worker registers what the last one had, from the same state database.
    await registry.close();
    state.close();
    state = new DaemonState(stateDir);
    registry = new ImageRegistry(state, silent, undefined, pool);
    await registry.restore();
    assert.deepEqual(registry.list().map((e) => e.id).sort(), ['a', 'b']);
    assert.equal(pool.plans, 1, 'a restart validates nothing it validated before');

    // The same path, other bytes: validated again, and the new image is what is served.
    const other = image(dir, 2, img.bootstrap);
    assert.notEqual(other.blobId, img.blobId);
    await registry.add(blobCacheEntry('c', { ...other, workDir }));
    assert.equal(pool.plans, 2);
    assert.equal(registry.resolve('c', img.blobId), null);
    assert.ok(blobOf(registry, 'c', other.blobId).chunkCount >= 5);

    // The same path, bytes that fail validation: refused, whatever was kept for that path before.
    const bytes = fs.readFileSync(img.bootstrap);
    fs.writeFileSync(img.bootstrap, bytes.subarray(0, bytes.length - 4096));
    await assert.rejects(registry.add(blobCacheEntry('d', { ...other, workDir })), /bootstrap|truncated|beyond|block/i);
    assert.equal(pool.plans, 3);
    assert.equal(registry.has('d'), false);
  } finally {
    await registry.close();
    state.close();
    await pool.close();
  }
});

test('registrations of one bootstrap at once (the replicas of a pod) wait for one validation', async () => {
  const dir = path.join(work, 'together');
  fs.mkdirSync(dir);
  const img = image(dir, 4);
  const state = new DaemonState(path.join(dir, 'state'));
  const pool = new CountingPool();
  const registry = new ImageRegistry(state, silent, undefined, pool);
  try {
    const ids = ['r1', 'r2', 'r3', 'r4'];
    await Promise.all(ids.map((id) => registry.add(blobCacheEntry(id, { ...img, workDir: path.join(dir, 'cache') }))));
    assert.equal(pool.plans, 1);
    for (const id of ids) assert.deepEqual(chunksOf(blobOf(registry, id, img.blobId)), chunksOf(blobOf(registry, 'r1', img.blobId)));
    // The same once plans are kept (the file is hashed before the lookup), with a validation that
    // takes a while (as on the registration thread): one validation for three registrations at once.
    const other = image(dir, 5, path.join(dir, 'other.boot'));
    const store = new PlanStore(state.dir, silent);
    const cache = new PlanCache(store, silent);
    const req: RegistrationRequest = { metadataPath: other.bootstrap, prefetch: { enable: false, all: false } };
    let made = 0;
    const slowMake = async () => {
      made++;
      await new Promise((r) => setTimeout(r, 200));
      return pool.plan(req, true);
    };
    const got = await Promise.all([1, 2, 3].map(() => cache.plan(req, slowMake)));
    assert.equal(made, 1);
    assert.deepEqual(got.map((g) => g.source).sort(), ['cached', 'cached', 'validated']);
    // A registration that waited for another's plan while the file was replaced: the plan made from
    // the old bytes is not its; it plans the new ones.
    const moving = path.join(dir, 'moving.boot');
    image(dir, 6, moving);
    const mreq: RegistrationRequest = { metadataPath: moving, prefetch: { enable: false, all: false } };
    // (The first planner reads the file, then waits until the file was replaced: no timers.)
    let planned!: () => void;
    const read = new Promise<void>((r) => (planned = r));
    let release!: () => void;
    const replaced = new Promise<void>((r) => (release = r));
    const readThenWait = async () => {
      const p = await pool.plan(mreq, true);
      planned();
      await replaced;
      return p;
    };
    const first = cache.plan(mreq, readThenWait);
    const second = cache.plan(mreq, () => pool.plan(mreq, true));
    await read;
    image(dir, 7, moving);
    release();
    const [a, b] = await Promise.all([first, second]);
    assert.equal(b.source, 'validated');
    assert.notEqual(a.plan.digest, b.plan.digest);
    assert.equal(b.plan.digest, await fileDigest(moving));
    store.close();
    // A FIFO where a bootstrap should be (registered while plans are kept, so the file is hashed
    // first): refused at once as the validation gate refuses it, never waiting for a writer.
    const fifo = path.join(dir, 'fifo.boot');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    assert.equal(await fileDigest(fifo), null);
    await assert.rejects(registry.add(blobCacheEntry('fifo', { ...img, bootstrap: fifo, workDir: path.join(dir, 'cache') })), /not a regular file/);
    // A bad bootstrap registered twice at once: both refused, each with the validation's error.
    const bad = path.join(dir, 'bad.boot');
    fs.writeFileSync(bad, Buffer.alloc(8192));
    const results = await Promise.allSettled(['x1', 'x2'].map((id) => registry.add(blobCacheEntry(id, { ...img, bootstrap: bad, workDir: path.join(dir, 'cache') }))));
    assert.deepEqual(results.map((r) => r.status), ['rejected', 'rejected']);
    for (const r of results) assert.match(String((r as PromiseRejectedResult).reason), /bad\.boot/);
  } finally {
    await registry.close();
    state.close();
    await pool.close();
  }
});

test('a kept plan is used only for its build and prefetch options, is the plan validation makes, and one that cannot be read back is dropped and made again', async () => {
  const dir = path.join(work, 'keys');
  fs.mkdirSync(dir);
  const img = image(dir, 3);
  const stateDir = path.join(dir, 'state');
  fs.mkdirSync(stateDir);
  let store = new PlanStore(stateDir, silent);
  const pool = new CountingPool();
  try {
    const req = (prefetch: boolean): RegistrationRequest => ({ metadataPath: img.bootstrap, prefetch: { enable: prefetch, all: prefetch } });
    const cache = new PlanCache(store, silent, 'build-1');
    const made = async (r: RegistrationRequest) => (await cache.plan(r, () => pool.plan(r, true))).source;
    assert.equal(await made(req(false)), 'validated');
    assert.equal(await made(req(false)), 'cached');
    assert.equal(await made(req(true)), 'validated', 'another prefetch option: another plan');
    assert.equal(await made(req(true)), 'cached');
    const cached = await cache.plan(req(true), () => assert.fail('not made again'));
    // What is kept is what the validation makes: the chunk maps, the prefetch order, the super block's meta.
    const fresh = planRegistration(req(true));
    assert.equal(cached.plan.digest, await fileDigest(img.bootstrap));
    assert.ok(fresh.blobs[0].prefetch !== null && fresh.blobs[0].prefetch.order.length > 0);
    assert.deepEqual(cached.plan, fresh);

    const otherBuild = new PlanCache(store, silent, 'build-2');
    assert.equal((await otherBuild.plan(req(false), () => pool.plan(req(false), true))).source, 'validated', 'another build validates again');

    // Damaged plans, each dropped at its next use and made again: bytes that do not match their
    // checksum, and a row whose checksum matches but whose plan is not one (arrays of wrong lengths).
    store.close();
    const db = new Database(path.join(stateDir, PLAN_STORE_FILE));
    const keys = (db.prepare('SELECT key FROM plans ORDER BY key').all() as Array<{ key: string }>).map((r) => r.key);
    assert.equal(keys.length, 3);
    db.prepare("UPDATE plans SET plan = x'ff00ff' WHERE key LIKE 'build-1:%:prefetch=off'").run();
    const misshapen = { ...fresh, blobs: fresh.blobs.map((b) => ({ ...b, chunks: { numbers: b.chunks.numbers.subarray(1), digests: b.chunks.digests } })) };
    const bytes = v8.serialize(misshapen);
    db.prepare("UPDATE plans SET plan = ?, sha256 = ?, bytes = ? WHERE key LIKE 'build-1:%:prefetch=all'").run(bytes, crypto.createHash('sha256').update(bytes).digest(), bytes.length);
    db.close();
    store = new PlanStore(stateDir, silent);
    const again = new PlanCache(store, silent, 'build-1');
    for (const prefetch of [false, true]) {
      const before = pool.plans;
      assert.equal((await again.plan(req(prefetch), () => pool.plan(req(prefetch), true))).source, 'validated');
      assert.equal(pool.plans, before + 1);
      assert.equal((await again.plan(req(prefetch), () => pool.plan(req(prefetch), true))).source, 'cached', 'made again and kept');
    }

    // The file itself damaged (not a database any more): made anew when opened, and plans kept again.
    store.close();
    for (const f of fs.readdirSync(stateDir)) if (f.startsWith(PLAN_STORE_FILE + '-')) fs.rmSync(path.join(stateDir, f));
    fs.writeFileSync(path.join(stateDir, PLAN_STORE_FILE), Buffer.alloc(8192, 0x5a));
    store = new PlanStore(stateDir, silent);
    assert.equal(store.usable, true);
    const anew = new PlanCache(store, silent, 'build-1');
    assert.equal((await anew.plan(req(false), () => pool.plan(req(false), true))).source, 'validated');
    assert.equal((await anew.plan(req(false), () => pool.plan(req(false), true))).source, 'cached');
  } finally {
    store.close();
    await pool.close();
  }
});

test('a failing plan store costs validations, never a registration; a plan too large is not kept', async () => {
  const dir = path.join(work, 'failing');
  fs.mkdirSync(dir);
  const img = image(dir, 8);
  const pool = new CountingPool();
  const req: RegistrationRequest = { metadataPath: img.bootstrap, prefetch: { enable: false, all: false } };
  try {
    // A store whose every call fails as a full or read-only disk's would.
    class FailingStore extends PlanStore {
      override hasAny(): boolean {
        return true;
      }
      override load(): Buffer | undefined {
        throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR' });
      }
      override save(): void {
        throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
      }
    }
    for (const d of ['state-failing', 'state-closed', 'state-big']) fs.mkdirSync(path.join(dir, d));
    const failing = new FailingStore(path.join(dir, 'state-failing'), silent);
    const cache = new PlanCache(failing, silent);
    for (let i = 0; i < 2; i++) assert.equal((await cache.plan(req, () => pool.plan(req, true))).source, 'validated');
    failing.close();
    // A closed store (the daemon stopping): the same.
    const closed = new PlanStore(path.join(dir, 'state-closed'), silent);
    closed.close();
    assert.equal((await new PlanCache(closed, silent).plan(req, () => pool.plan(req, true))).source, 'validated');
    assert.equal(pool.plans, 3);

    // A plan over PLAN_MAX_BYTES (an image of some 100,000 chunks) is made at each registration.
    const store = new PlanStore(path.join(dir, 'state-big'), silent);
    try {
      const real = planRegistration(req);
      const n = Math.ceil(PLAN_MAX_BYTES / (6 * 8 + 32)) + 1;
      const huge = { ...real, blobs: [{ ...real.blobs[0], chunks: { numbers: new Float64Array(6 * n), digests: new Uint8Array(32 * n) }, prefetch: null }] };
      let makes = 0;
      const big = new PlanCache(store, silent);
      for (let i = 0; i < 2; i++) {
        assert.equal((await big.plan(req, async () => (makes++, huge))).source, 'validated');
      }
      assert.equal(makes, 2);
      assert.equal(store.hasAny(), false);
    } finally {
      store.close();
    }
  } finally {
    await pool.close();
  }
});

test('the kept plans stay within their byte bound, the least recently used dropped first', () => {
  const dir = path.join(work, 'bound');
  fs.mkdirSync(dir);
  const store = new PlanStore(dir, silent);
  try {
    const plan = (n: number) => new Uint8Array(1000).fill(n);
    store.save('a', plan(1), 2500);
    store.save('b', plan(2), 2500);
    assert.ok(store.load('a'));
    store.touch('a');
    // a used again: b is now the least recently used, and goes when c comes.
    store.save('c', plan(3), 2500);
    assert.equal(store.load('b'), undefined);
    assert.deepEqual([...store.load('a')!.subarray(0, 2)], [1, 1]);
    assert.deepEqual([...store.load('c')!.subarray(0, 2)], [3, 3]);
  } finally {
    store.close();
  }
});

test('a registration that finishes after the registry closed is refused and never saved', async () => {
  const dir = path.join(work, 'closing');
  fs.mkdirSync(dir);
  const img = image(dir, 9);
  const state = new DaemonState(path.join(dir, 'state'));
  const pool = new CountingPool();
  const registry = new ImageRegistry(state, silent, undefined, pool);
  try {
    const adding = registry.add(blobCacheEntry('late', { ...img, workDir: path.join(dir, 'cache') }));
    const closing = registry.close();
    await assert.rejects(adding, /not registered: the daemon is stopping/);
    await closing;
    assert.equal(registry.has('late'), false);
    assert.deepEqual(state.images(), []);
  } finally {
    state.close();
    await pool.close();
  }
});

test('the plan code id covers the planner and validation sources, and only them', async () => {
  const { planSourceId } = await import('../scripts/plan-id.ts');
  const copy = path.join(work, 'sources');
  for (const d of ['src', 'erofs', 'native']) fs.cpSync(path.join(repoRoot, d), path.join(copy, d), { recursive: true, filter: (f) => !f.includes(`${path.sep}build`) });
  const id = await planSourceId(copy);
  assert.match(id, /^[0-9a-f]{12}$/);
  assert.equal(await planSourceId(repoRoot), id, 'the same sources, the same id');
  // The API has nothing to do with plans: an upgrade that changed only it keeps the kept plans.
  fs.appendFileSync(path.join(copy, 'src/daemon/api.ts'), '\n// changed\n');
  assert.equal(await planSourceId(copy), id);
  // Validation does: every file it imports counts, down to the on-disk format module.
  for (const f of ['erofs/super.ts', 'src/image/validate.ts', 'src/daemon/registration.ts']) {
    const before = fs.readFileSync(path.join(copy, f));
    fs.appendFileSync(path.join(copy, f), '\n// changed\n');
    assert.notEqual(await planSourceId(copy), id, `${f} changed`);
    fs.writeFileSync(path.join(copy, f), before);
  }
  assert.equal(await planSourceId(copy), id);
});

test('a plan kept under another bootstrap\'s digest is dropped and the bootstrap validated', async () => {
  const dir = path.join(work, 'swapped');
  fs.mkdirSync(dir);
  const one = image(path.join(dir, 'one'), 11);
  const two = image(path.join(dir, 'two'), 12);
  const stateDir = path.join(dir, 'state');
  fs.mkdirSync(stateDir);
  let store = new PlanStore(stateDir, silent);
  const pool = new CountingPool();
  try {
    const req = (bootstrap: string): RegistrationRequest => ({ metadataPath: bootstrap, prefetch: { enable: false, all: false } });
    const cache = new PlanCache(store, silent, 'build-1');
    for (const img of [one, two]) assert.equal((await cache.plan(req(img.bootstrap), () => pool.plan(req(img.bootstrap), true))).source, 'validated');
    store.close();
    // The second bootstrap's row given the first one's plan, with its own (right) checksum.
    const digestTwo = (await fileDigest(two.bootstrap))!;
    const db = new Database(path.join(stateDir, PLAN_STORE_FILE));
    const rowOne = db.prepare("SELECT plan, sha256, bytes FROM plans WHERE key LIKE ?").get(`build-1:${(await fileDigest(one.bootstrap))!}:%`) as { plan: Buffer; sha256: Buffer; bytes: number };
    assert.equal(db.prepare('UPDATE plans SET plan = ?, sha256 = ?, bytes = ? WHERE key LIKE ?').run(rowOne.plan, rowOne.sha256, rowOne.bytes, `build-1:${digestTwo}:%`).changes, 1);
    db.close();
    store = new PlanStore(stateDir, silent);
    const again = new PlanCache(store, silent, 'build-1');
    const before = pool.plans;
    const got = await again.plan(req(two.bootstrap), () => pool.plan(req(two.bootstrap), true));
    assert.equal(got.source, 'validated');
    assert.equal(pool.plans, before + 1);
    assert.equal(got.plan.digest, digestTwo);
    assert.equal(got.plan.blobs[0].id, two.blobId, 'the second image\'s own blob, not the first one\'s');
    assert.equal((await again.plan(req(two.bootstrap), () => assert.fail('kept again'))).source, 'cached');
  } finally {
    store.close();
    await pool.close();
  }
});

test('damage SQLite reports in use under an extended code makes the plans file anew', () => {
  const dir = path.join(work, 'extended');
  fs.mkdirSync(dir);
  const store = new PlanStore(dir, silent);
  try {
    store.save('a', new Uint8Array(100).fill(1), 1 << 20);
    // What better-sqlite3 throws for a damaged index met while reading (SQLITE_CORRUPT_INDEX, 779).
    const q = (store as unknown as { q: { load: { get: () => unknown } } }).q;
    q.load.get = () => {
      throw Object.assign(new Error('database disk image is malformed'), { code: 'SQLITE_CORRUPT_INDEX' });
    };
    assert.throws(() => store.load('a'), /malformed/);
    assert.equal(store.usable, true, 'a new file is open');
    assert.equal(store.hasAny(), false, 'the damaged file\'s plans are gone');
    store.save('b', new Uint8Array(100).fill(2), 1 << 20);
    assert.deepEqual([...store.load('b')!.subarray(0, 2)], [2, 2]);
  } finally {
    store.close();
  }
});
