/**
 * A manifest of a tree: every entry's type, mode, owner, mtime (ns), size, content digest, link target,
 * device number, xattrs and hardlink identity, keyed by raw path bytes. Two trees are equal when their
 * manifests are.
 */
import fs from 'node:fs';
import crypto from 'node:crypto';
import { readXattrs } from '../../native/xattr/index.ts';
import { dataRangesOf, inHole } from '../../native/fscache/index.ts';

/**
 * A file's content digest: its SHA-256 (`sha256`, what the guest tests compare with their own hash of
 * the mounted file); above SPARSE_DIGEST_MIN bytes, `blocks256` instead: SHA-256 over the SHA-256 of
 * each 1 MiB block, a block of zeros not hashed again (the builder tests' 4 GiB sparse file took 15 s
 * to hash whole, once per manifest).
 */
const SPARSE_DIGEST_MIN = 1 << 30;
const DIGEST_BLOCK = 1 << 20;
const zeroBlock = Buffer.alloc(DIGEST_BLOCK);
const zeroDigests = new Map<number, Buffer>();

function fileDigest(p: Buffer, size: bigint): { sha256: string } | { blocks256: string } {
  const blockwise = size > BigInt(SPARSE_DIGEST_MIN);
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(p, 'r');
  const buf = Buffer.allocUnsafe(DIGEST_BLOCK);
  const zeroDigest = (n: number): Buffer => {
    let z = zeroDigests.get(n);
    if (!z) zeroDigests.set(n, (z = crypto.createHash('sha256').update(zeroBlock.subarray(0, n)).digest()));
    return z;
  };
  try {
    // A big file's holes (SEEK_HOLE, where the file system tells them) are zero blocks without
    // reading them: ext4 reads a hole by filling page cache with zeros (the builder tests' 4 GiB
    // sparse source took 13 s to hash that way).
    const total = Number(size);
    const ranges = blockwise ? dataRangesOf(fd, 0, total) : [];
    for (let pos = 0; ; pos += DIGEST_BLOCK) {
      if (blockwise && pos < total && inHole(ranges, pos, Math.min(total, pos + DIGEST_BLOCK))) {
        const n = Math.min(DIGEST_BLOCK, total - pos);
        h.update(zeroDigest(n));
        if (n < DIGEST_BLOCK) break;
        continue;
      }
      let n = 0;
      while (n < DIGEST_BLOCK) {
        const got = fs.readSync(fd, buf, n, DIGEST_BLOCK - n, pos + n);
        if (got === 0) break;
        n += got;
      }
      if (n === 0) break;
      const block = buf.subarray(0, n);
      if (!blockwise) h.update(block);
      else if (block.equals(zeroBlock.subarray(0, n))) h.update(zeroDigest(n));
      else h.update(crypto.createHash('sha256').update(block).digest());
      if (n < DIGEST_BLOCK) break;
    }
  } finally {
    fs.closeSync(fd);
  }
  return blockwise ? { blocks256: h.digest('hex') } : { sha256: h.digest('hex') };
}

export function manifest(root: string, opts: { skipRootTimes?: boolean } = {}): Map<string, string> {
  const out = new Map<string, string>();
  const firstPathOfInode = new Map<string, string>();
  const walk = (abs: Buffer, rel: string) => {
    const st = fs.lstatSync(abs, { bigint: true });
    const xattrs = [...readXattrs(abs)].sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => `${k}=${v.toString('hex')}`);
    const e: Record<string, unknown> = {
      mode: st.mode.toString(8), uid: String(st.uid), gid: String(st.gid), xattrs,
    };
    if (!(opts.skipRootTimes && rel === '')) e.mtime = st.mtimeNs.toString();
    if (!st.isDirectory()) e.nlink = String(st.nlink);
    if (st.isFile()) {
      e.size = String(st.size);
      Object.assign(e, fileDigest(abs, st.size));
      const key = `${st.dev}:${st.ino}`;
      if (st.nlink > 1n) {
        if (!firstPathOfInode.has(key)) firstPathOfInode.set(key, rel);
        e.hardlinkOf = firstPathOfInode.get(key);
      }
    }
    if (st.isSymbolicLink()) e.target = fs.readlinkSync(abs, { encoding: 'buffer' }).toString('hex');
    if (st.isCharacterDevice() || st.isBlockDevice()) e.rdev = String(st.rdev);
    out.set(rel, JSON.stringify(e));
    if (st.isDirectory()) {
      const names = fs.readdirSync(abs, { encoding: 'buffer' }).sort(Buffer.compare);
      for (const n of names) walk(Buffer.concat([abs, Buffer.from('/'), n]), `${rel}/${n.toString('hex')}`);
    }
  };
  walk(Buffer.from(root), '');
  return out;
}

/** Differences between two manifests, as readable lines (empty when equal). */
export function diffManifests(a: Map<string, string>, b: Map<string, string>): string[] {
  const lines: string[] = [];
  const show = (k: string) => k.split('/').map((h) => Buffer.from(h, 'hex').toString('latin1')).join('/') || '/';
  for (const [k, v] of a) {
    if (!b.has(k)) lines.push(`missing ${show(k)}`);
    else if (b.get(k) !== v) lines.push(`differs ${show(k)}: ${v} != ${b.get(k)}`);
  }
  for (const k of b.keys()) if (!a.has(k)) lines.push(`extra ${show(k)}`);
  return lines;
}
