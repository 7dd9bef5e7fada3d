/**
 * PlanCache: registration plans kept by the bytes they were made from, so that a bootstrap is read
 * and validated once per build of the daemon, not at every registration of it. A shared daemon
 * registers an image once per container (the snapshotter names each registration after its snapshot),
 * a worker restarted after a crash registers every image again before it serves the kernel, and a
 * fanotify remount registers its bootstrap anew: each of these takes the plan from here.
 *
 * The key is the SHA-256 of the bootstrap as the planner read and validated it (RegistrationPlan.digest),
 * the prefetch options the plan was made for, and the code that made it (PLAN_CODE_ID). A lookup
 * hashes the file as it is now, so only those very bytes find the plan; a file
 * that changed is planned, and so validated, again. Plans live in a file of their own (PlanStore), the
 * least recently used dropped beyond PLAN_CACHE_MAX_BYTES. A plan that cannot be read back (its
 * checksum, its shape) is dropped and made again; a failing store costs the cache, never the
 * registration.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import v8 from 'node:v8';
import type { Logger } from 'pino';
import { BOOTSTRAP_MAX_BYTES } from '../image/open.ts';
import { BUILD_INFO } from '../version.ts';
import type { RegistrationPlan, RegistrationRequest } from './registration.ts';
import { DamagedPlanError, type PlanStore } from './plan-store.ts';
import { packedChunkCount } from './blob-map.ts';
import { RepeatedFailures, heldBack } from './repeated-failure.ts';

declare const __NYDUS_TS_PLAN_SOURCE_ID__: string | undefined;

/**
 * The code that makes plans, which a kept plan is only good for: in the bundles, a digest of the
 * planner's and the validation's sources (scripts/plan-id.ts), so that an upgrade that left them
 * as they were keeps the plans; run from the TypeScript sources, the digest of them all.
 */
export const PLAN_CODE_ID = typeof __NYDUS_TS_PLAN_SOURCE_ID__ === 'string' ? __NYDUS_TS_PLAN_SOURCE_ID__ : BUILD_INFO.git_commit;

/**
 * The plans kept at most, in bytes: a plan is about 100 bytes per chunk (the Debian rootfs image's,
 * 5,168 chunks, is 0.5 MiB), so this holds those of some hundred images.
 */
export const PLAN_CACHE_MAX_BYTES = 64 << 20;

/**
 * The largest plan kept (~100,000 chunks: 80 bytes each): its write is a synchronous SQLite write on the daemon's
 * thread, which must stay short; a larger image is validated at each registration.
 */
export const PLAN_MAX_BYTES = 8 << 20;

/** How a registration got its plan. */
export type PlanSource = 'cached' | 'validated';

export class PlanCache {
  private readonly failures = new RepeatedFailures();
  /** Plans being made, by bootstrap path and prefetch options. */
  private readonly making = new Map<string, Promise<RegistrationPlan>>();

  constructor(private readonly store: PlanStore, private readonly log: Logger, private readonly code = PLAN_CODE_ID) {}

  /**
   * The plan of `req`'s bootstrap: the one kept for its bytes, or `make()`'s (whose errors are the
   * registration's), then kept for the bytes it was made from.
   */
  async plan(req: RegistrationRequest, make: () => Promise<RegistrationPlan>): Promise<{ plan: RegistrationPlan; source: PlanSource }> {
    const making = `${req.metadataPath}\0${prefetchKey(req)}`;
    // The same file being planned for another registration (the replicas of a pod starting at once):
    // its plan, once made, if the file still holds the bytes it was made from (plans are read only).
    const other = this.making.get(making);
    if (other) {
      const plan = await other.catch(() => null);
      if (plan && plan.digest === await fileDigest(req.metadataPath)) return { plan, source: 'cached' };
    }
    // Set before any wait: a registration of the file that comes meanwhile joins this one, whether
    // it ends in a kept plan or a validation.
    const mine = this.keptOrMade(req, make);
    const plan = mine.then((r) => r.plan);
    plan.catch(() => undefined);
    this.making.set(making, plan);
    try {
      return await mine;
    } finally {
      if (this.making.get(making) === plan) this.making.delete(making);
    }
  }

  /** The plan kept for the file's bytes, or `make()`'s, then kept. */
  private async keptOrMade(req: RegistrationRequest, make: () => Promise<RegistrationPlan>): Promise<{ plan: RegistrationPlan; source: PlanSource }> {
    // (With nothing kept, as in a new daemon's first registrations, the file is not read an extra time.)
    const digest = this.anyKept() ? await fileDigest(req.metadataPath) : null;
    const kept = digest === null ? null : this.load(this.key(digest, req), digest);
    if (kept) return { plan: kept, source: 'cached' };
    const plan = await make();
    this.save(this.key(plan.digest, req), plan);
    return { plan, source: 'validated' };
  }

  private key(digest: string, req: RegistrationRequest): string {
    return `${this.code}:${digest}:${prefetchKey(req)}`;
  }

  private anyKept(): boolean {
    try {
      return this.store.hasAny();
    } catch (e) {
      this.failed('read', e as Error);
      return false;
    }
  }

  /** The plan kept under `key`, which must be one made from bytes of `digest`. */
  private load(key: string, digest: string): RegistrationPlan | null {
    let plan: RegistrationPlan;
    try {
      const bytes = this.store.load(key);
      if (!bytes) return null;
      plan = v8.deserialize(bytes) as RegistrationPlan;
      if (!isPlan(plan)) throw new DamagedPlanError('not a registration plan');
      // (A row's checksum covers its own bytes: a plan under another bootstrap's key is not this one's.)
      if (plan.digest !== digest) throw new DamagedPlanError(`the kept plan is of bytes ${plan.digest}, not ${digest}`);
    } catch (e) {
      if (e instanceof DamagedPlanError || !(e as { code?: unknown }).code) return this.damaged(key, e as Error);
      this.failed('read', e as Error);
      return null;
    }
    // (The use order is for eviction alone: a failure to note it costs nothing else.)
    try {
      this.store.touch(key);
    } catch (e) {
      this.failed('write', e as Error);
    }
    return plan;
  }

  /** A kept plan that cannot be read back: dropped, and the bootstrap validated again. */
  private damaged(key: string, e: Error): null {
    this.log.warn({ key, err: e.message }, 'a kept registration plan cannot be read back; it is dropped and the bootstrap validated again');
    try {
      this.store.drop(key);
    } catch (err) {
      this.failed('drop', err as Error);
    }
    return null;
  }

  private save(key: string, plan: RegistrationPlan): void {
    try {
      const bytes = v8.serialize(plan);
      if (bytes.length > PLAN_MAX_BYTES) return;
      this.store.save(key, bytes, PLAN_CACHE_MAX_BYTES);
    } catch (e) {
      this.failed('write', e as Error);
    }
  }

  private failed(what: 'read' | 'write' | 'drop', e: Error): void {
    const told = this.failures.occur(`${what}\0${e.message}`);
    if (told) this.log.warn({ err: e.message, ...heldBack(told.held) }, `cannot ${what} a kept registration plan (${this.store.file}); the bootstrap is validated instead`);
  }
}

/** The prefetch options a plan is made for, in its key. */
const prefetchKey = (req: RegistrationRequest) => `prefetch=${req.prefetch.enable ? (req.prefetch.all ? 'all' : 'table') : 'off'}`;

/**
 * SHA-256 (hex) of a bootstrap's bytes, read in pieces (no buffer of its size, and the event loop
 * keeps turning); null for anything the planner would refuse to read (it says why).
 */
export async function fileDigest(file: string): Promise<string | null> {
  let fh: fs.promises.FileHandle | undefined;
  try {
    // A FIFO or a device is never opened (opening a FIFO waits for a writer): looked at first, then
    // opened without waiting, and looked at again through the fd (it may have been replaced between).
    if (!(await fs.promises.stat(file)).isFile()) return null;
    fh = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const st = await fh.stat();
    if (!st.isFile() || st.size > BOOTSTRAP_MAX_BYTES) return null;
    const h = crypto.createHash('sha256');
    const buf = Buffer.allocUnsafe(Math.min(st.size, 1 << 20) || 1);
    // (Up to the size it had when opened: a file that grows while read does not keep this reading.)
    for (let at = 0; at < st.size;) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, st.size - at), at);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      at += bytesRead;
    }
    return h.digest('hex');
  } catch {
    return null;
  } finally {
    await fh?.close().catch(() => undefined);
  }
}

/**
 * Whether a value read back has a plan's shape, down to its arrays' lengths and the prefetch order's
 * positions (a foreign or damaged row must not reach a BlobMap, whose lookups trust them).
 */
function isPlan(p: unknown): p is RegistrationPlan {
  if (typeof p !== 'object' || p === null) return false;
  const plan = p as RegistrationPlan;
  return isSize(plan.bootstrapSize) && typeof plan.digest === 'string' && /^[0-9a-f]{64}$/.test(plan.digest)
    && typeof plan.superMeta === 'object' && plan.superMeta !== null && Array.isArray(plan.blobs) && plan.blobs.every(isPlannedBlob);
}

const isSize = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0;

function isPlannedBlob(b: unknown): boolean {
  if (typeof b !== 'object' || b === null) return false;
  const blob = b as RegistrationPlan['blobs'][number];
  if (typeof blob.id !== 'string' || !isSize(blob.index) || !isSize(blob.uncompressedSize) || typeof blob.compressor !== 'string' || typeof blob.digester !== 'string') return false;
  if (!(blob.chunks?.numbers instanceof Float64Array) || !(blob.chunks.digests instanceof Uint8Array)) return false;
  const count = packedChunkCount(blob.chunks);
  if (count < 0) return false;
  if (blob.prefetch === null) return true;
  const { order, listed } = blob.prefetch ?? {};
  return order instanceof Uint32Array && isSize(listed) && listed <= order.length && order.every((pos) => pos < count);
}
