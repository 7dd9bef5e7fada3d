/**
 * Whiteouts, as nydus reads them (builder/src/core/overlay.rs). A layer records deletions of lower
 * layers' entries either the OCI way (`.wh.<name>` entries and the opaque marker `.wh..wh..opq`) or the
 * overlayfs way (a 0:0 character device named like the deleted entry, a directory with
 * `trusted.overlay.opaque=y`). nydus keeps them in a layer's bootstrap, whatever its source, so that
 * merging onto lower layers can apply them; only a directory built as the lowest layer (no parent
 * bootstrap) leaves them out, since there is nothing under it to delete.
 */
import type { TreeNode } from './tree.ts';

export const WHITEOUT_SPECS = ['oci', 'overlayfs', 'none'] as const;
export type WhiteoutSpec = (typeof WHITEOUT_SPECS)[number];

export const OCI_WHITEOUT_PREFIX = '.wh.';
export const OCI_WHITEOUT_OPAQUE = '.wh..wh..opq';
export const OVERLAYFS_OPAQUE_XATTR = 'trusted.overlay.opaque';

export type Whiteout =
  | { type: 'removal'; target: Buffer }
  | { type: 'opaque-marker' }
  | { type: 'opaque-dir' };

/** What `node` means to lower layers under `spec`, or null for an ordinary entry. */
export function whiteoutOf(node: TreeNode, spec: WhiteoutSpec): Whiteout | null {
  if (spec === 'oci') {
    const name = node.name.toString('latin1');
    if (name === OCI_WHITEOUT_OPAQUE) return { type: 'opaque-marker' };
    if (name.startsWith(OCI_WHITEOUT_PREFIX)) return { type: 'removal', target: node.name.subarray(OCI_WHITEOUT_PREFIX.length) };
  } else if (spec === 'overlayfs') {
    if (node.kind === 'chrdev' && node.rdev === 0) return { type: 'removal', target: node.name };
    if (node.kind === 'dir' && node.xattrs.get(OVERLAYFS_OPAQUE_XATTR)?.toString('latin1') === 'y') return { type: 'opaque-dir' };
  }
  return null;
}

/**
 * Whether a lowest-layer directory build leaves `node` (and what is under it) out: every whiteout but
 * an overlayfs opaque directory, which is an ordinary directory as well.
 */
export function droppedFromLowestLayer(node: TreeNode, spec: WhiteoutSpec): boolean {
  const w = whiteoutOf(node, spec);
  return w !== null && w.type !== 'opaque-dir';
}
