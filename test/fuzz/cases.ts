/**
 * The fuzzer's cases, shared by `npm run fuzz` and the regression test that replays every case that
 * ever failed: seed images built by our own builder, structure-aware mutations of their bootstrap
 * and blob, and one run of every reader over a mutated image (validation, tree walk, check, export,
 * unpack and the daemon's registration). A run either succeeds or ends in a NydusError; anything
 * else is a failure of ours.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import pino from 'pino';
import { NydusError } from '../../erofs/errors.ts';
import { EROFS_NULL_ADDR } from '../../erofs/chunk.ts';
import { createImage } from '../../src/builder/create.ts';
import { walkTree } from '../../src/builder/tree.ts';
import { checkImage } from '../../src/image/check.ts';
import { exportBlock } from '../../src/image/export-block.ts';
import { inspectImage } from '../../src/image/inspect.ts';
import { openImage } from '../../src/image/open.ts';
import { treeFromImage } from '../../src/image/tree-from-image.ts';
import { unpackToTar } from '../../src/image/unpack.ts';
import { ImageRegistry } from '../../src/daemon/daemon.ts';
import { DaemonState } from '../../src/daemon/state.ts';
import { prand } from '../helpers/fixtures.ts';
import { setXattr } from '../../native/xattr/index.ts';
import { type FieldSite, chunkIndexOffset, fieldSites, interestingValues } from '../helpers/image-fields.ts';

export interface Seed {
  name: string;
  boot: Buffer;
  blob: Buffer;
  blobId: string;
  sites: FieldSite[];
}

/** One mutation: bytes written at an offset of the bootstrap or the blob, or a truncation. */
export interface Mutation {
  target: 'boot' | 'blob';
  offset: number;
  /** Hex bytes to write; absent for a truncation at `offset`. */
  hex?: string;
}

export interface FuzzCase {
  seed: string;
  mutations: Mutation[];
  /** What the case aims at, for reports. */
  note?: string;
}

/** Small seed images: every inode kind, hardlinks, xattrs, a prefetch table, both compressors, holes. */
export function buildSeeds(work: string): Seed[] {
  const src = path.join(work, 'seed-src');
  fs.mkdirSync(path.join(src, 'dir/sub'), { recursive: true });
  fs.writeFileSync(path.join(src, 'big'), prand(3 * 4096 + 100, 1));
  fs.writeFileSync(path.join(src, 'zeros'), Buffer.alloc(3 * 4096));
  fs.writeFileSync(path.join(src, 'dir/small'), 'small file\n');
  fs.writeFileSync(path.join(src, 'empty'), '');
  fs.linkSync(path.join(src, 'dir/small'), path.join(src, 'dir/sub/hard'));
  fs.symlinkSync('dir/small', path.join(src, 'ln'));
  setXattr(path.join(src, 'dir/small'), 'user.fuzz', Buffer.from('value'));
  setXattr(path.join(src, 'dir'), 'trusted.overlay.opaque', Buffer.from('y'));
  execFileSync('mkfifo', [path.join(src, 'fifo')]);
  const seeds: Seed[] = [];
  const make = (name: string, compressor: 'zstd' | 'none', patch?: (boot: Buffer) => void) => {
    const dir = path.join(work, `seed-${name}`);
    const boot = path.join(dir, 'seed.boot');
    const r = createImage({
      source: src, bootstrap: boot, blobDir: dir, chunkSize: 0x1000, compressor, digester: 'blake3', repeatable: true,
      prefetchPaths: ['/dir', '/big'],
    });
    const b = fs.readFileSync(boot);
    patch?.(b);
    seeds.push({ name, boot: b, blob: fs.readFileSync(r.blob!.path), blobId: r.blob!.blobId, sites: fieldSites(b) });
  };
  make('zstd', 'zstd');
  make('raw', 'none');
  // A file with a hole: the middle chunk of /big becomes EROFS_NULL_ADDR.
  make('hole', 'zstd', (b) => b.writeUInt32LE(EROFS_NULL_ADDR, chunkIndexOffset(b, '/big', 1) + 4));
  return seeds;
}

/** Deterministic pseudo-random numbers (xorshift32), so a case number reproduces its case. */
export function rng(seed: number): (n: number) => number {
  let x = (seed ^ 0x9e3779b9) >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x % n;
  };
}

/** A structure-aware case: field values that matter, byte flips in structures, blob damage, truncation. */
export function makeCase(seeds: Seed[], caseNo: number): FuzzCase {
  const r = rng(caseNo + 1);
  const seed = seeds[r(seeds.length)];
  const mutations: Mutation[] = [];
  const n = 1 + r(3);
  for (let k = 0; k < n; k++) {
    const kind = r(10);
    if (kind < 6) {
      const site = seed.sites[r(seed.sites.length)];
      const values = interestingValues(site, seed.boot.length);
      const v = r(4) === 0 ? Buffer.from(Array.from({ length: site.size }, () => r(256))) : values[r(values.length)];
      mutations.push({ target: 'boot', offset: site.offset, hex: v.toString('hex') });
    } else if (kind < 8) {
      const at = r(3) ? r(Math.min(seed.boot.length, 8192)) : r(seed.boot.length);
      mutations.push({ target: 'boot', offset: at, hex: Buffer.from([r(256)]).toString('hex') });
    } else if (kind < 9) {
      const tail = r(2) === 0;
      const at = tail ? seed.blob.length - 4096 - r(256) : r(seed.blob.length);
      mutations.push({ target: 'blob', offset: Math.max(0, at), hex: Buffer.from([r(256), r(256)]).toString('hex') });
    } else {
      const target = r(2) ? 'boot' : 'blob';
      const len = target === 'boot' ? seed.boot.length : seed.blob.length;
      mutations.push({ target, offset: r(len) });
    }
  }
  return { seed: seed.name, mutations };
}

export function applyCase(seed: Seed, c: FuzzCase): { boot: Buffer; blob: Buffer } {
  let boot = Buffer.from(seed.boot);
  let blob = Buffer.from(seed.blob);
  for (const m of c.mutations) {
    const buf = m.target === 'boot' ? boot : blob;
    if (m.hex === undefined) {
      if (m.target === 'boot') boot = buf.subarray(0, m.offset); else blob = buf.subarray(0, m.offset);
      continue;
    }
    Buffer.from(m.hex, 'hex').copy(buf, m.offset);
  }
  return { boot, blob };
}

/** A reader's failure that is not a NydusError: the bug the fuzzer hunts. */
export class ForeignError extends Error {}

export interface CaseRunner {
  /** 'accepted' when check passed with the blobs (then export and unpack wrote `outputs`). */
  run(c: FuzzCase): Promise<'accepted' | 'refused'>;
  /** The last accepted case's export and tar, and how many entries its tree has (walked, root included). */
  outputs: { image: string; tar: string; entries: number };
  close(): void;
}

/** Runs cases in `work`: files written once per case, every reader run on them. */
export function caseRunner(work: string, seeds: Seed[]): CaseRunner {
  const dir = path.join(work, 'case');
  const out = path.join(work, 'out');
  fs.mkdirSync(out, { recursive: true });
  const state = new DaemonState(path.join(work, 'state'));
  const registry = new ImageRegistry(state, pino({ level: 'silent' }));
  let n = 0;
  const guard = async (what: string, op: () => unknown): Promise<boolean> => {
    try {
      await op();
      return true;
    } catch (e) {
      if (e instanceof NydusError) return false;
      throw new ForeignError(`${what}: ${(e as Error)?.stack ?? String(e)}`);
    }
  };
  const outputs = { image: path.join(out, 'x.img'), tar: path.join(out, 'x.tar'), entries: 0 };
  return {
    outputs,
    async run(c) {
      const seed = seeds.find((s) => s.name === c.seed)!;
      const { boot, blob } = applyCase(seed, c);
      fs.rmSync(dir, { recursive: true, force: true });
      fs.mkdirSync(dir);
      const bootPath = path.join(dir, 'case.boot');
      fs.writeFileSync(bootPath, boot);
      fs.writeFileSync(path.join(dir, seed.blobId), blob);
      const results = [
        await guard('validate+walk', () => {
          const o = openImage(bootPath, { blobDir: dir });
          try {
            let entries = 0;
            for (const node of walkTree(treeFromImage(o.image, o.blobs).root)) {
              void node.path;
              entries++;
            }
            outputs.entries = entries;
          } finally {
            o.close();
          }
        }),
        await guard('inspect', () => inspectImage(bootPath, 'stats')),
        await guard('check', () => checkImage({ bootstrap: bootPath, blobDir: dir })),
        await guard('export', () => {
          fs.rmSync(path.join(out, 'x.img'), { force: true });
          return exportBlock({ bootstrap: bootPath, blobDir: dir, output: path.join(out, 'x.img') });
        }),
        await guard('unpack', () => {
          fs.rmSync(path.join(out, 'x.tar'), { force: true });
          return unpackToTar({ bootstrap: bootPath, blobDir: dir, output: path.join(out, 'x.tar') });
        }),
        await guard('daemon registration', async () => {
          const id = `case${n++}`;
          await registry.add({
            type: 'bootstrap', id, domain_id: '',
            config_v2: {
              version: 2, id, backend: { type: 'localfs', localfs: { dir } }, cache: { type: 'fscache', fscache: { work_dir: work } },
              metadata_path: bootPath, rafs: { prefetch: { enable: true } },
            },
          }, false);
          await registry.remove({ domainId: '', id });
        }),
      ];
      // Both read the bootstrap alone through the same gate: they must agree. An image check accepts
      // is one every reader given the same blobs can use.
      if (results[1] !== results[5]) throw new ForeignError(`inspect ${results[1] ? 'accepted' : 'refused'} the image, daemon registration did not`);
      if (results[2] && !(results[0] && results[3] && results[4])) throw new ForeignError(`check accepted the image, another reader with its blobs refused it: ${results}`);
      return results[2] ? 'accepted' : 'refused';
    },
    close() {
      state.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
