/**
 * Bad input to check, inspect, export and unpack: corrupt, truncated and foreign bootstraps give a
 * NydusError naming the file (the CLI prints it in one line and exits 1), never another exception,
 * a hang or a crash.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { FormatError, NydusError } from '../erofs/errors.ts';
import { EROFS_INODE_LAYOUT_COMPACT, erofsInodeCompact, erofsInodeExtended, inodeFormat } from '../erofs/inode.ts';
import { EROFS_FEATURE_COMPAT_MTIME, EROFS_FEATURE_COMPAT_XATTR_FILTER, EROFS_SUPER_OFFSET, erofsSuperBlock } from '../erofs/super.ts';
import { erofsDirent } from '../erofs/dirent.ts';
import { erofsInodeChunkIndex } from '../erofs/chunk.ts';
import { ErofsImage } from '../erofs/image.ts';
import { validateImage } from '../src/image/validate.ts';
import { zeroChunkDigest } from '../src/blob/digest.ts';
import { createImage } from '../src/builder/create.ts';
import { checkImage } from '../src/image/check.ts';
import { inspectImage } from '../src/image/inspect.ts';
import { exportBlock } from '../src/image/export-block.ts';
import { unpackToTar } from '../src/image/unpack.ts';
import { prand, tmpDir } from './helpers/fixtures.ts';
import { runCli } from './helpers/cli.ts';
import { chunkIndexOffset, direntOffset, inodeAt, interestingValues } from './helpers/image-fields.ts';
import { buildSeeds, caseRunner } from './fuzz/cases.ts';

const work = tmpDir('corrupt');
const boot = path.join(work, 'good.boot');
const blobDir = path.join(work, 'blobs');
let good: Buffer;

before(() => {
  const src = path.join(work, 'src');
  fs.mkdirSync(path.join(src, 'dir/sub'), { recursive: true });
  fs.writeFileSync(path.join(src, 'a'), prand(300000, 1));
  fs.writeFileSync(path.join(src, 'dir/b'), 'bbb');
  fs.writeFileSync(path.join(src, 'dir/sub/c'), prand(5000, 2));
  fs.symlinkSync('dir/b', path.join(src, 'ln'));
  for (let i = 0; i < 40; i++) fs.writeFileSync(path.join(src, 'dir', `f${i}`), `file ${i}`);
  createImage({ source: src, bootstrap: boot, blobDir, chunkSize: 0x10000, compressor: 'zstd', digester: 'blake3' });
  good = fs.readFileSync(boot);
});

after(() => fs.rmSync(work, { recursive: true, force: true }));

/** Every operation on `file` either succeeds or throws a NydusError that names a file. */
async function exercise(file: string): Promise<number> {
  let failures = 0;
  const ops: Array<() => unknown> = [
    () => checkImage({ bootstrap: file, blobDir }),
    () => inspectImage(file, 'stats'),
    () => inspectImage(file, 'chunks'),
    () => {
      const out = path.join(work, 'out.img');
      fs.rmSync(out, { force: true });
      return exportBlock({ bootstrap: file, blobDir, output: out });
    },
    () => {
      const out = path.join(work, 'out.tar');
      fs.rmSync(out, { force: true });
      return unpackToTar({ bootstrap: file, blobDir, output: out });
    },
  ];
  for (const op of ops) {
    try {
      await op();
    } catch (e) {
      failures++;
      assert.ok(e instanceof NydusError, `${file}: expected a NydusError, got ${(e as Error)?.stack}`);
      assert.ok(e.message.includes(file) || e.message.includes(blobDir), `error does not name the file: ${e.message}`);
    }
  }
  return failures;
}

test('the good image passes every operation', async () => {
  assert.equal(await exercise(boot), 0);
});

test('1,000 random corruptions never crash, hang or escape as a foreign exception', { timeout: 600_000 }, async () => {
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const file = path.join(work, 'bad.boot');
  let detected = 0;
  for (let i = 0; i < 1000; i++) {
    const buf = Buffer.from(good);
    // Aim half of the hits at the first block (superblocks, tables, inodes) where it matters most.
    const at = i % 2 ? rnd(4096) : rnd(buf.length);
    const len = 1 + rnd(4);
    for (let k = 0; k < len && at + k < buf.length; k++) buf[at + k] = rnd(256);
    fs.writeFileSync(file, buf);
    if (await exercise(file) > 0) detected++;
  }
  assert.ok(detected > 100, `only ${detected} corruptions were detected`);
});

test('truncated and foreign bootstraps are refused with a clear message', async () => {
  const file = path.join(work, 'trunc.boot');
  for (const len of [0, 100, 1024, 1100, 1200, 4095, 4096, 8000, good.length - 1]) {
    fs.writeFileSync(file, good.subarray(0, len));
    assert.ok(await exercise(file) > 0, `truncation to ${len} bytes went unnoticed`);
  }
  fs.writeFileSync(file, prand(16384, 9));
  assert.equal(await exercise(file), 5);
  assert.equal(await exercise(path.join(work, 'missing.boot')), 5);
});

test('CLI: a corrupt bootstrap is one line on stderr and exit status 1', () => {
  const file = path.join(work, 'cli.boot');
  const buf = Buffer.from(good);
  buf.writeUInt32LE(0xdeadbeef, 1024);
  fs.writeFileSync(file, buf);
  for (const args of [['check', '-B', file], ['inspect', '-B', file], ['export', '--block', '-B', file, '-D', blobDir, '-O', path.join(work, 'x.img')], ['unpack', '-B', file, '-D', blobDir, '-o', path.join(work, 'x.tar')]]) {
    const r = runCli('nydus-image', args, { timeoutMs: 60_000 });
    assert.equal(r.status, 1, `${args[0]}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^nydus-image: error: ${file.replace(/[.]/g, '\\.')}: not an EROFS/RAFS v6 image`));
    assert.equal(r.stderr.trim().split('\n').length, 1);
  }
  assert.ok(!fs.existsSync(path.join(work, 'x.img')) && !fs.existsSync(path.join(work, 'x.tar')), 'no partial output is left behind');
});

test('a corrupt chunk in the blob is an I/O error on read, not wrong bytes', () => {
  const blob = path.join(blobDir, fs.readdirSync(blobDir)[0]);
  const copyDir = path.join(work, 'badblob');
  fs.mkdirSync(copyDir, { recursive: true });
  const data = fs.readFileSync(blob);
  data[100] ^= 0xff;
  fs.writeFileSync(path.join(copyDir, path.basename(blob)), data);
  assert.throws(() => checkImage({ bootstrap: boot, blobDir: copyDir }), (e: Error) => e instanceof NydusError && /chunk 0/.test(e.message));
});

/**
 * The independent oracles for the images the readers accept: fsck.erofs on the export and GNU tar on
 * the unpacked tar. The outputs of accepted cases are queued as numbered files and checked in batches
 * by one xargs of shell loops (two at a time), since a spawn from this process costs ~30 ms and
 * thousands of them were most of the test's time. Outputs byte-identical to one already queued or
 * checked are not run again (the tools read nothing but the file), but are counted and named with it.
 * tar must list as many entries as the image's tree has: a tar cut at a member boundary (no
 * end-of-archive blocks) exits 0 in GNU tar and bsdtar alike.
 */
interface OracleRun {
  file: string;
  tool: string;
  cases: string[];
  /** For a tar: the entries it must list. */
  entries: number | null;
}

class Oracles {
  static readonly batch = 200;
  private readonly seen = new Map<string, OracleRun>();
  private pending: OracleRun[] = [];
  private next = 0;
  runs = { fsck: 0, tar: 0 };

  constructor(private readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true });
  }

  /** Queues `what`'s export and tar (of a tree of `entries` entries); checks the queue when it is full. */
  add(what: string, image: string, tar: string, entries: number): void {
    for (const [tool, src, ext] of [['fsck.erofs of the export', image, 'img'], ['tar -tf of the unpacked tar', tar, 'tar']]) {
      const bytes = fs.readFileSync(src);
      const key = `${ext}:${createHash('sha256').update(bytes).digest('hex')}`;
      const known = this.seen.get(key);
      if (known) {
        known.cases.push(what);
        continue;
      }
      const entry: OracleRun = { file: path.join(this.dir, `${this.next++}.${ext}`), tool, cases: [what], entries: ext === 'tar' ? entries : null };
      fs.writeFileSync(entry.file, bytes);
      this.seen.set(key, entry);
      this.pending.push(entry);
      if (ext === 'img') this.runs.fsck++; else this.runs.tar++;
    }
    if (this.pending.length >= Oracles.batch) this.flush();
  }

  /** Runs the oracles on every queued file; fails naming each case whose output an oracle refused. */
  flush(): void {
    const batch = this.pending;
    this.pending = [];
    if (!batch.length) return;
    const script = 'for f; do case $f in *.img) fsck.erofs "$f" ;; *) tar -tf "$f" ;; esac >"$f.out" 2>"$f.err" </dev/null; echo $? >"$f.rc"; done';
    const r = spawnSync('xargs', ['-0', '-n', String(Math.ceil(batch.length / 2)), '-P', '2', 'sh', '-c', script, 'sh'], {
      input: batch.map((e) => e.file).join('\0'), encoding: 'utf8', timeout: 300_000,
    });
    assert.ok(r.status === 0, `xargs of the oracles: status ${r.status} ${r.signal ?? ''} ${r.error ?? ''} ${r.stderr}`);
    const failures: string[] = [];
    const head = (f: string) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8').split('\n').slice(0, 12).join('\n').trim() : '');
    for (const e of batch) {
      const rc = head(`${e.file}.rc`);
      const others = e.cases.length > 1 ? ` (and ${e.cases.length - 1} more cases with the same bytes: ${e.cases.slice(1, 4).join('; ')}${e.cases.length > 4 ? '; ...' : ''})` : '';
      const listed = rc === '0' && e.entries !== null ? fs.readFileSync(`${e.file}.out`, 'utf8').split('\n').filter(Boolean).length : null;
      if (rc !== '0') {
        failures.push(`${e.cases[0]}: ${e.tool}: ${rc === '' ? 'no result' : `exit status ${rc}`}: ${[head(`${e.file}.out`), head(`${e.file}.err`)].filter(Boolean).join('\n')}${others}`);
      } else if (listed !== null && listed !== e.entries) {
        failures.push(`${e.cases[0]}: ${e.tool}: ${listed} entries listed, the image's tree has ${e.entries}${others}`);
      }
      for (const f of [e.file, `${e.file}.out`, `${e.file}.err`, `${e.file}.rc`]) fs.rmSync(f, { force: true });
    }
    assert.ok(failures.length === 0, `${failures.length} accepted images the oracles refused:\n${failures.join('\n')}`);
  }
}

/**
 * Targeted mutations: every field of every structure of a small image (superblocks, device slots,
 * blob table, chunk table, inodes, xattrs, chunk indexes, dirents) set to 0, max, max - 1, half,
 * a value past the end of the image, the structure's own position and more. Each must be refused
 * with a NydusError or give an image every reader accepts, which fsck.erofs passes after export and
 * GNU tar reads after unpack, within a time and memory bound.
 */
test('targeted mutations of every field: a NydusError or a correct image, never anything else', { timeout: 900_000 }, async () => {
  const fuzzWork = path.join(work, 'targeted');
  fs.mkdirSync(fuzzWork);
  const seeds = buildSeeds(fuzzWork);
  const runner = caseRunner(fuzzWork, seeds);
  const oracles = new Oracles(path.join(fuzzWork, 'oracles'));
  const rssBefore = process.memoryUsage().rss;
  let accepted = 0;
  let refused = 0;
  let slowest = 0;
  try {
    for (const seed of seeds.filter((s) => s.name !== 'raw')) {
      for (const site of seed.sites) {
        for (const value of interestingValues(site, seed.boot.length)) {
          const what = `seed ${seed.name}: ${site.label} = ${value.toString('hex')}`;
          const c = { seed: seed.name, mutations: [{ target: 'boot' as const, offset: site.offset, hex: value.toString('hex') }] };
          const t0 = Date.now();
          const outcome = await runner.run(c);
          slowest = Math.max(slowest, Date.now() - t0);
          assert.ok(Date.now() - t0 < 5000, `${what}: ${Date.now() - t0} ms`);
          if (outcome === 'refused') {
            refused++;
            continue;
          }
          accepted++;
          oracles.add(what, runner.outputs.image, runner.outputs.tar, runner.outputs.entries);
        }
      }
    }
    oracles.flush();
  } finally {
    runner.close();
  }
  const grown = (process.memoryUsage().rss - rssBefore) / 2 ** 20;
  assert.ok(grown < 512, `memory grew by ${grown.toFixed(0)} MiB`);
  assert.ok(refused > accepted, `${refused} refused, ${accepted} accepted`);
  process.stderr.write(`targeted mutations: ${accepted + refused} cases, ${refused} refused, ${accepted} accepted (fsck.erofs and tar agree; `
    + `${oracles.runs.fsck} distinct exports and ${oracles.runs.tar} distinct tars), slowest ${slowest} ms\n`);
});

/**
 * Fields our readers did not look at where a kernel or nydusd does (found by a fuzzer whose oracle
 * was the host kernel's own mount of the mutant bootstrap and blob): each is refused by check,
 * inspect, export and unpack alike, so no reader of ours shows what a mount of the image would not.
 */
test('fields a kernel or nydusd reads otherwise are refused: compat bits, dirblkbits, a compact i_reserved, the file type of . and .., chunk index fields', async () => {
  const cases: Array<[string, (b: Buffer) => void, RegExp]> = [];
  const sb = (values: Parameters<typeof erofsSuperBlock.encodeInto>[2]) => (b: Buffer) => erofsSuperBlock.encodeInto(b, EROFS_SUPER_OFFSET, values);
  const compat = erofsSuperBlock.decode(good, EROFS_SUPER_OFFSET).feature_compat;
  // The kernel (6.18) then takes names the filter rules out for absent: getxattr says ENODATA.
  cases.push(['XATTR_FILTER', sb({ feature_compat: compat | EROFS_FEATURE_COMPAT_XATTR_FILTER }), /feature_compat has bits 0x4 set/]);
  // The kernel (6.18) then fails listxattr with EUCLEAN on every inode with xattrs.
  cases.push(['compat bit 0x8', sb({ feature_compat: compat | 0x8 }), /feature_compat has bits 0x8 set/]);
  cases.push(['MTIME', sb({ feature_compat: compat | EROFS_FEATURE_COMPAT_MTIME }), /feature_compat has bits 0x2 set/]);
  // The kernel refuses to mount it ("dirblkbits 1 isn't supported").
  cases.push(['dirblkbits 1', sb({ dirblkbits: 1 }), /dirblkbits 1 is not 0/]);
  const dotType = (dir: string, name: string) => (b: Buffer) => b.writeUInt8(127, direntOffset(good, dir, name) + erofsDirent.offsetOf('file_type'));
  cases.push(['".." of the root of file type 127', dotType('/', '..'), /"\.\." has file type 127, not a directory's/]);
  cases.push(['"." of /dir of file type 127', dotType('/dir', '.'), /"\." has file type 127, not a directory's/]);
  // nydusd finds a chunk by the blob and chunk index kept in the u16s the kernel ignores or masks.
  const chunkField = (field: 'advise' | 'device_id', value: (old: number) => number) => (b: Buffer) => {
    const at = chunkIndexOffset(good, '/a', 1) + erofsInodeChunkIndex.offsetOf(field);
    b.writeUInt16LE(value(b.readUInt16LE(at)), at);
  };
  cases.push(['a chunk index naming another chunk (advise)', chunkField('advise', (v) => v + 1), /chunk 1: its index fields .* do not name chunk 1 of blob 0/]);
  cases.push(['a chunk index naming another chunk (device_id bits 8..15)', chunkField('device_id', (v) => v | 0x100), /chunk 1: its index fields .* do not name chunk 1 of blob 0/]);
  const file = path.join(work, 'otherwise.boot');
  for (const [what, patch, re] of cases) {
    const b = Buffer.from(good);
    patch(b);
    fs.writeFileSync(file, b);
    for (const op of readersOf(file)) await assert.rejects(async () => op(), (e: Error) => e instanceof FormatError && re.test(e.message), what);
  }

  // A compact inode's i_reserved: kernels since about 6.13 read it as the inode's mtime past build_time,
  // older ones ignore it. The empty file's extended inode rewritten as a compact one in place.
  const src = path.join(work, 'compact-src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'empty'), '');
  const cboot = path.join(work, 'compact.boot');
  createImage({ source: src, bootstrap: cboot, blobDir, chunkSize: 0x10000, compressor: 'zstd', digester: 'blake3' });
  const c = fs.readFileSync(cboot);
  const empty = inodeAt(c, '/empty');
  const asCompact = (reserved: number) => {
    const b = Buffer.from(c);
    b.fill(0, empty.offset, empty.offset + erofsInodeExtended.size);
    erofsInodeCompact.encodeInto(b, empty.offset, {
      i_format: inodeFormat(EROFS_INODE_LAYOUT_COMPACT, empty.datalayout), i_mode: empty.mode, i_nlink: empty.nlink,
      i_size: 0, i_reserved: reserved, i_u: empty.iu, i_ino: empty.ino, i_uid: empty.uid, i_gid: empty.gid,
    });
    fs.writeFileSync(file, b);
  };
  asCompact(0);
  for (const op of readersOf(file)) await op();
  asCompact(100000);
  for (const op of readersOf(file)) await assert.rejects(async () => op(), (e: Error) => e instanceof FormatError && /\/empty \(inode \d+\): erofs_inode_compact.i_reserved is not zero/.test(e.message));
});

/** check, inspect, export and unpack of `file` over the test's blobs. */
function readersOf(file: string): Array<() => unknown> {
  return [
    () => checkImage({ bootstrap: file, blobDir }),
    () => inspectImage(file, 'stats'),
    () => exportBlock({ bootstrap: file, blobDir, output: path.join(work, 'otherwise.img') }),
    () => unpackToTar({ bootstrap: file, blobDir, output: path.join(work, 'otherwise.tar') }),
  ];
}

/**
 * unpack writes a chunk of zeros as a hole without its bytes, but still reads the stored chunk its
 * digest names once and verifies it: a bootstrap that calls a chunk of data zeros, or a blob whose
 * zero chunk is damaged, fails the unpack as it fails check, export and the daemon (was exit 0 and
 * zeros in the tar).
 */
test('unpack verifies the stored chunk behind every run of zeros once', async () => {
  const src = path.join(work, 'zeros-src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'data'), prand(0x10000, 7));
  fs.writeFileSync(path.join(src, 'zeros'), Buffer.alloc(3 * 0x10000));
  const zBlobs = path.join(work, 'zeros-blobs');
  const zboot = path.join(work, 'zeros.boot');
  createImage({ source: src, bootstrap: zboot, blobDir: zBlobs, chunkSize: 0x10000, compressor: 'none', digester: 'blake3' });
  const tar = path.join(work, 'zeros.tar');
  unpackToTar({ bootstrap: zboot, blobDir: zBlobs, output: tar });
  const img = validateImage(new ErofsImage(fs.readFileSync(zboot), zboot));
  const table = img.blobs[0].chunks;
  const zero = table.find((ch) => ch.digest.equals(zeroChunkDigest('blake3', 0x10000)))!;
  const data = table.find((ch) => ch !== zero)!;
  assert.ok(zero && data, 'the image has a chunk of zeros and one of data');
  // (1) the data chunk's table entry given the zero digest: the bytes at its place are not zeros.
  const b = fs.readFileSync(zboot);
  const at = b.indexOf(data.digest);
  assert.ok(at > 0);
  zeroChunkDigest('blake3', 0x10000).copy(b, at);
  const lying = path.join(work, 'zeros-lying.boot');
  fs.writeFileSync(lying, b);
  assert.throws(() => unpackToTar({ bootstrap: lying, blobDir: zBlobs, output: tar }), /digest mismatch/);
  assert.throws(() => checkImage({ bootstrap: lying, blobDir: zBlobs }), /digest mismatch/);
  // (2) a byte of the stored zero chunk flipped.
  const blobFile = path.join(zBlobs, fs.readdirSync(zBlobs)[0]);
  const blob = fs.readFileSync(blobFile);
  blob[zero.compressedOffset + 5] ^= 1;
  fs.writeFileSync(blobFile, blob);
  assert.throws(() => unpackToTar({ bootstrap: zboot, blobDir: zBlobs, output: tar }), /digest mismatch/);
});

test('directory cycles, nlink lies and size lies are FormatErrors', () => {
  const cases: Array<[string, (b: Buffer) => void, RegExp]> = [];
  const nidOf = (p: string) => inodeAt(good, p).nid;
  const direntNid = (dir: string, name: string, nid: number) => (b: Buffer) => b.writeBigUInt64LE(BigInt(nid), direntOffset(good, dir, name));
  cases.push(['a directory entry pointing at the root', direntNid('/dir', 'sub', nidOf('/')), /reachable twice|"\.\." points|file type/]);
  cases.push(['a directory entry pointing at its own directory', direntNid('/dir', 'sub', nidOf('/dir')), /reachable twice/]);
  cases.push(['a directory entry pointing at its parent', direntNid('/dir/sub', 'c', nidOf('/dir')), /reachable twice|file type/]);
  const ext = (p: string, v: Parameters<typeof erofsInodeExtended.encodeInto>[2]) => (b: Buffer) => erofsInodeExtended.encodeInto(b, inodeAt(good, p).offset, v);
  cases.push(['nlink 0', ext('/a', { i_nlink: 0 }), /i_nlink is 0/]);
  cases.push(['a file one byte longer', ext('/a', { i_size: 300001 }), /holds \d+ bytes, the file needs|chunk/]);
  cases.push(['a file one byte shorter', ext('/a', { i_size: 299999 }), /holds 37856 bytes, the file needs 37855/]);
  cases.push(['a file of 2^40 bytes', ext('/a', { i_size: 2 ** 40 }), /chunk indexes|beyond the end/]);
  cases.push(['a directory of 2^40 bytes', ext('/dir', { i_size: 2 ** 40 }), /beyond the end|data/]);
  const file = path.join(work, 'lie.boot');
  for (const [what, patch, re] of cases) {
    const b = Buffer.from(good);
    patch(b);
    fs.writeFileSync(file, b);
    for (const op of [() => checkImage({ bootstrap: file, blobDir }), () => inspectImage(file, 'stats')]) {
      assert.throws(op, (e: Error) => e instanceof FormatError && re.test(e.message), what);
    }
  }
});
