/**
 * Image layers as directories, written from one description in either whiteout form:
 * - oci: deletions are empty files `.wh.<name>`, an opaque directory holds an empty `.wh..wh..opq`
 *   (what an OCI layer tar unpacked by a plain tar looks like);
 * - overlayfs: deletions are character devices 0:0, an opaque directory has trusted.overlay.opaque=y
 *   (what the kernel's overlayfs takes as a lower layer).
 * Every entry gets a fixed mtime derived from its path, so both forms agree on what survives.
 */
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { setXattr } from '../../native/xattr/index.ts';

export type LayerEntry =
  | { path: string; type: 'file'; data: Buffer | string; mode?: number; owner?: [number, number]; xattrs?: Record<string, string> }
  | { path: string; type: 'dir'; mode?: number; owner?: [number, number]; xattrs?: Record<string, string>; opaque?: boolean }
  | { path: string; type: 'symlink'; target: string }
  | { path: string; type: 'hardlink'; target: string }
  | { path: string; type: 'chrdev'; major: number; minor: number }
  | { path: string; type: 'fifo' }
  | { path: string; type: 'whiteout' };

export type WhiteoutForm = 'oci' | 'overlayfs';

function sh(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
}

/** A time in 2001..2033 with nanoseconds, fixed per path. */
function timeOf(rel: string): string {
  const h = crypto.createHash('sha256').update(rel).digest();
  return `@${1e9 + (h.readUInt32LE(0) % 1e9)}.${String(h.readUInt32LE(4) % 1e9).padStart(9, '0')}`;
}

export function writeLayer(root: string, entries: LayerEntry[], form: WhiteoutForm): string {
  fs.mkdirSync(root, { recursive: true });
  fs.chmodSync(root, 0o755);
  const abs = (rel: string) => path.join(root, rel);
  const parents = (rel: string) => fs.mkdirSync(path.dirname(abs(rel)), { recursive: true });
  const attrs = (p: string, e: { mode?: number; owner?: [number, number]; xattrs?: Record<string, string> }) => {
    if (e.mode !== undefined) fs.chmodSync(p, e.mode);
    if (e.owner) fs.lchownSync(p, e.owner[0], e.owner[1]);
    for (const [k, v] of Object.entries(e.xattrs ?? {})) setXattr(p, k, Buffer.from(v));
  };
  for (const e of entries) {
    parents(e.path);
    const p = abs(e.path);
    switch (e.type) {
      case 'file':
        fs.writeFileSync(p, e.data);
        attrs(p, e);
        break;
      case 'dir':
        fs.mkdirSync(p, { recursive: true });
        attrs(p, e);
        if (e.opaque && form === 'oci') fs.writeFileSync(path.join(p, '.wh..wh..opq'), '');
        if (e.opaque && form === 'overlayfs') setXattr(p, 'trusted.overlay.opaque', Buffer.from('y'));
        break;
      case 'symlink':
        fs.symlinkSync(e.target, p);
        break;
      case 'hardlink':
        fs.linkSync(abs(e.target), p);
        break;
      case 'chrdev':
        sh('mknod', [p, 'c', String(e.major), String(e.minor)]);
        break;
      case 'fifo':
        sh('mkfifo', [p]);
        break;
      case 'whiteout':
        if (form === 'oci') fs.writeFileSync(path.join(path.dirname(p), `.wh.${path.basename(p)}`), '');
        else sh('mknod', [p, 'c', '0', '0']);
        break;
    }
  }
  // Times last, deepest first, so creating entries does not move a directory's mtime again.
  const all: string[] = [];
  const walk = (rel: string) => {
    for (const n of fs.readdirSync(abs(rel)).sort()) {
      const r = path.join(rel, n);
      if (fs.lstatSync(abs(r)).isDirectory()) walk(r);
      all.push(r);
    }
  };
  walk('');
  for (const r of [...all, '']) sh('touch', ['-h', '-d', timeOf(`/${r}`), abs(r) || root]);
  return root;
}
