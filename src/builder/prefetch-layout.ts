/**
 * Blob layout for a prefetch list (`--prefetch-policy fs`), as nydus-image lays out a directory build
 * (builder/src/core/layout.rs, BlobLayout::layout_blob_simple): the listed files' data first, in list
 * order, then the rest in the order it was stored. What a container reads first then sits at the
 * start of the blob, back to back: the daemon's prefetch and amplification read it in few backend reads.
 */
import type { ChunkRef, TreeNode } from './tree.ts';
import { walkTree } from './tree.ts';

/** A prefetch path as the prefetch table matches it: from the root, without empty, `.` or trailing parts (as Rust's Path compares them). */
export function normalizePrefetchPath(p: string): string {
  return '/' + p.split('/').filter((part) => part && part !== '.').join('/');
}

/**
 * The prefetch list as nydus-image takes one (its generate_patterns), in list order: a path that is
 * not absolute is left out (`relative`), and so is one already listed or below a listed directory
 * (`covered`), whose files that directory's entry brings already.
 */
export function prefetchPatterns(lines: readonly string[]): { patterns: string[]; relative: string[]; covered: string[]; trimmed: string[] } {
  const patterns: string[] = [];
  const relative: string[] = [];
  const covered: string[] = [];
  const listed = new Set<string>();
  // As nydus-image, white space at a line's ends is not the path's: said, since a name may end so.
  const trimmed = lines.filter((l) => {
    const bare = l.replace(/\r$/, '');
    return bare.trim() !== bare && bare.trim() !== '';
  });
  for (const line of lines.map((l) => l.trim()).filter(Boolean)) {
    if (!line.startsWith('/')) {
      relative.push(line);
      continue;
    }
    const p = normalizePrefetchPath(line);
    const parts = p.split('/').filter(Boolean);
    let within = false;
    for (let n = parts.length; n >= 0 && !within; n--) within = listed.has('/' + parts.slice(0, n).join('/'));
    if (within) {
      covered.push(line);
      continue;
    }
    listed.add(p);
    patterns.push(line);
  }
  return { patterns, relative, covered, trimmed };
}

/** What a CLI warns of a prefetch list (prefetchPatterns): a line per path left out, and why. */
export function prefetchPatternWarnings(r: { relative: readonly string[]; covered: readonly string[]; trimmed: readonly string[] }): string[] {
  return [
    ...r.trimmed.map((l) => `prefetch path ${JSON.stringify(l)} has white space at an end; read as ${JSON.stringify(l.trim())}, as nydus-image reads it`),
    ...r.relative.map((p) => `prefetch path ${p} is not absolute; left out`),
    ...r.covered.map((p) => `prefetch path ${p} is covered by an earlier one; left out`),
  ];
}

/**
 * The regular files a prefetch list names, in list order: a directory stands for every file below
 * it in directory order (depth first, names sorted: the order a directory is chunked in). Each file
 * comes once (hardlinks once, at their first name). Paths the tree does not hold are left out here;
 * the prefetch table checks every path against the finished image.
 */
export function prefetchFiles(root: TreeNode, paths: readonly string[]): TreeNode[] {
  if (paths.length === 0) return [];
  const byPath = new Map<string, TreeNode>();
  for (const n of walkTree(root)) byPath.set(n.path, n);
  const out: TreeNode[] = [];
  const taken = new Set<TreeNode | string>();
  for (const p of paths) {
    const start = byPath.get(normalizePrefetchPath(p));
    if (!start) continue;
    for (const n of walkTree(start)) {
      if (n.kind !== 'file') continue;
      const key = n.hardlinkKey ?? n;
      if (taken.has(key)) continue;
      taken.add(key);
      out.push(n);
    }
  }
  return out;
}

/** The chunks of those files in the order they are read: each chunk once, holes left out. */
export function prefetchChunks(files: readonly TreeNode[]): ChunkRef[] {
  const seen = new Set<ChunkRef>();
  const out: ChunkRef[] = [];
  for (const f of files) {
    for (const c of f.chunks ?? []) {
      if (!c || seen.has(c)) continue;
      seen.add(c);
      out.push(c);
    }
  }
  return out;
}
