/**
 * Whiteouts, as nydus reads them (builder/src/core/overlay.rs). A layer records deletions of lower
 * layers' entries either the OCI way (`.wh.<name>` entries and the opaque marker `.wh..wh..opq`) or the
 * overlayfs way (a 0:0 character device named like the deleted entry, a directory with
 * `trusted.overlay.opaque=y`). nydus keeps them in a layer's bootstrap, whatever its source, so that
 * merging onto lower layers can apply them; only a directory built as the lowest layer (no parent
 * bootstrap) leaves them out, since there is nothing under it to delete.
 */
import type { TreeNode } from './tree.ts';

export type WhiteoutSpec = 'oci' | 'overlayfs' | 'none';
export const WHITEOUT_SPECS: readonly WhiteoutSpec[] = ['oci', 'overlayfs', 'none'];

export const OCI_WHITEOUT_PREFIX = '.wh.';
export const OCI_WHITEOUT_OPAQUE = '.wh..wh..opq';
export const OVERLAYFS_OPAQUE_XATTR = 'trusted.overlay.opaque';

export type WhiteoutType = 'oci-removal' | 'oci-opaque' | 'overlayfs-removal' | 'overlayfs-opaque';

/** How `node` acts on lower layers under `spec`, or undefined for an ordinary entry. */
export function whiteoutType(node: TreeNode, spec: WhiteoutSpec): WhiteoutType | undefined {
  if (spec === 'oci') {
    const name = node.name.toString('latin1');
    if (name === OCI_WHITEOUT_OPAQUE) return 'oci-opaque';
    if (name.startsWith(OCI_WHITEOUT_PREFIX)) return 'oci-removal';
  } else if (spec === 'overlayfs') {
    if (node.kind === 'chrdev' && node.rdev === 0) return 'overlayfs-removal';
    if (node.kind === 'dir' && node.xattrs.get(OVERLAYFS_OPAQUE_XATTR)?.toString('latin1') === 'y') return 'overlayfs-opaque';
  }
  return undefined;
}

/**
 * Whether a lowest-layer directory build leaves `node` (and what is under it) out: every whiteout but
 * an overlayfs opaque directory, which is an ordinary directory as well.
 */
export function droppedFromLowestLayer(node: TreeNode, spec: WhiteoutSpec): boolean {
  const t = whiteoutType(node, spec);
  return t !== undefined && t !== 'overlayfs-opaque';
}
