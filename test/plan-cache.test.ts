/**
 * Registration plans kept by content (src/daemon/plan-cache.ts): a bootstrap registered again, in the
 * same daemon or after a restart, is not validated again; a bootstrap whose bytes changed is, and a
 * bad one is refused whatever was kept for its path; a kept plan that cannot be read back, another
 * build's or another prefetch option's is not used.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { spawnSync } from 'node:child_process';
import Database from 'better-sqlite3';
import { createImage } from '../src/builder/create.ts';
import { ImageRegistry } from '../src/daemon/daemon.ts';
import { DaemonState } from '../src/daemon/state.ts';
import { PlanCache, fileDigest } from '../src/daemon/plan-cache.ts';
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
    const cache = new PlanCache(state, silent);
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

test('a kept plan is used only for its build and prefetch options, and one that cannot be read back is dropped and made again', async () => {
  const dir = path.join(work, 'keys');
  fs.mkdirSync(dir);
  const img = image(dir, 3);
  let state: DaemonState | null = new DaemonState(path.join(dir, 'state'));
  const pool = new CountingPool();
  try {
    const req = (prefetch: boolean): RegistrationRequest => ({ metadataPath: img.bootstrap, prefetch: { enable: prefetch, all: prefetch } });
    const cache = new PlanCache(state, silent, 'build-1');
    const made = async (r: RegistrationRequest) => (await cache.plan(r, () => pool.plan(r, true))).source;
    assert.equal(await made(req(false)), 'validated');
    assert.equal(await made(req(false)), 'cached');
    assert.equal(await made(req(true)), 'validated', 'another prefetch option: another plan');
    assert.equal(await made(req(true)), 'cached');
    const cached = await cache.plan(req(true), () => assert.fail('not made again'));
    assert.equal(cached.plan.digest, await fileDigest(img.bootstrap));
    assert.ok(cached.plan.blobs[0].prefetch !== null, 'the prefetch plan is the one made with prefetch on');

    const otherBuild = new PlanCache(state, silent, 'build-2');
    assert.equal((await otherBuild.plan(req(false), () => pool.plan(req(false), true))).source, 'validated', 'another build validates again');

    // Damage every kept plan: each is dropped at its next use, and made again.
    state.close();
    state = null;
    const db = new Database(path.join(dir, 'state', 'chunk-state.db'));
    assert.ok((db.prepare('SELECT COUNT(*) AS n FROM registration_plans').get() as { n: number }).n >= 3);
    db.prepare("UPDATE registration_plans SET plan = x'ff00ff'").run();
    db.close();
    const reopened = new DaemonState(path.join(dir, 'state'));
    try {
      const again = new PlanCache(reopened, silent, 'build-1');
      const before = pool.plans;
      assert.equal((await again.plan(req(false), () => pool.plan(req(false), true))).source, 'validated');
      assert.equal(pool.plans, before + 1);
      assert.equal((await again.plan(req(false), () => pool.plan(req(false), true))).source, 'cached', 'made again and kept');
    } finally {
      reopened.close();
    }
  } finally {
    state?.close();
    await pool.close();
  }
});

test('the kept plans stay within their byte bound, the least recently used dropped first', () => {
  const dir = path.join(work, 'bound');
  fs.mkdirSync(dir);
  const state = new DaemonState(path.join(dir, 'state'));
  try {
    const plan = (n: number) => new Uint8Array(1000).fill(n);
    state.savePlan('a', plan(1), 2500);
    state.savePlan('b', plan(2), 2500);
    assert.ok(state.loadPlan('a'), 'a used again: b is now the least recently used');
    state.savePlan('c', plan(3), 2500);
    assert.equal(state.loadPlan('b'), undefined);
    assert.deepEqual([...state.loadPlan('a')!.subarray(0, 2)], [1, 1]);
    assert.deepEqual([...state.loadPlan('c')!.subarray(0, 2)], [3, 3]);
  } finally {
    state.close();
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
