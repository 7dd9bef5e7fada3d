/**
 * A file tree as one line per path (type, mode, owner, size, mtime, content digest, link target,
 * xattrs, hardlink group), read from a bootstrap and its blobs through our image reader: what
 * `nydusify check` compares between the Nydus image and its OCI source.
 */
import { createHash } from 'node:crypto';
import { NydusError } from '../../erofs/errors.ts';
import { walkTree } from '../builder/tree.ts';
import { openImage } from '../image/open.ts';
import { treeFromImage } from '../image/tree-from-image.ts';
import type { ValidatedImage } from '../image/validate.ts';
import type { LocalBlobReader } from '../blob/blob-reader.ts';

export function summarizeImage(bootstrap: string, blobDir: string): Map<string, string> {
  const opened = openImage(bootstrap, { blobDir });
  try {
    return summarizeTree(opened.image, opened.blobs!, bootstrap);
  } finally {
    opened.close();
  }
}

function summarizeTree(image: ValidatedImage, blobs: LocalBlobReader[], bootstrap: string): Map<string, string> {
  const { root } = treeFromImage(image, blobs);
  const out = new Map<string, string>();
  const firstOfLink = new Map<string, string>();
  const buf = Buffer.allocUnsafe(1 << 20);
  for (const n of walkTree(root)) {
    const entry: Record<string, unknown> = {
      kind: n.kind, mode: (n.mode & 0o7777).toString(8), uid: n.uid, gid: n.gid,
      mtime: `${n.mtimeSec}.${String(n.mtimeNsec).padStart(9, '0')}`,
      xattrs: [...n.xattrs].map(([k, v]) => `${k}=${v.toString('hex')}`).sort(),
    };
    if (n.target) entry.target = n.target.toString('latin1');
    if (n.kind === 'chrdev' || n.kind === 'blkdev') entry.rdev = n.rdev;
    if (n.hardlinkKey) {
      const first = firstOfLink.get(n.hardlinkKey);
      if (first) entry.hardlinkOf = first;
      else firstOfLink.set(n.hardlinkKey, n.path);
    }
    if (n.kind === 'file' && !entry.hardlinkOf) {
      entry.size = n.size;
      const hash = createHash('sha256');
      for (let off = 0; off < n.size; off += buf.length) {
        const want = Math.min(buf.length, n.size - off);
        if (n.data!.read(buf, want, off) !== want) throw new NydusError(`${n.path}: short read from ${bootstrap}`);
        hash.update(buf.subarray(0, want));
      }
      entry.sha256 = hash.digest('hex');
    }
    out.set(n.path, JSON.stringify(entry));
  }
  return out;
}

/** Differences between two summaries, as lines naming the path. */
export function diffSummaries(want: Map<string, string>, got: Map<string, string>): string[] {
  const out: string[] = [];
  for (const [p, w] of want) {
    const g = got.get(p);
    if (g === undefined) out.push(`missing ${p}`);
    else if (g !== w) out.push(`differs ${p}: ${g} (want ${w})`);
  }
  for (const p of got.keys()) if (!want.has(p)) out.push(`extra ${p}`);
  return out;
}
