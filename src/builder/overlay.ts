/**
 * Overlay semantics for layered images: an upper layer's tree laid over a lower (already flattened)
 * tree, with whiteouts applied, as nydus's builder does it (builder/src/core/overlay.rs, tree.rs).
 *
 * Whiteout forms, by specification:
 * - oci: an entry named `.wh.<name>` removes `<name>` of the lower layers; an entry named
 *   `.wh..wh..opq` hides every lower entry of its directory. The markers themselves never show.
 * - overlayfs: a character device 0:0 removes the lower entry of the same name; a directory with
 *   `trusted.overlay.opaque=y` hides the lower directory's entries (the xattr is dropped).
 * - none: nothing is special, upper entries just shadow lower ones.
 * A whiteout applies to lower layers only: entries of its own layer stay.
 */
import { NydusError } from '../../erofs/errors.ts';
import { type TreeNode, walkTree } from './tree.ts';
import { OVERLAYFS_OPAQUE_XATTR, type WhiteoutSpec, whiteoutOf } from './whiteout.ts';

const key = (name: Buffer) => name.toString('latin1');

/**
 * The children of a directory after laying `upper` (entries of the upper layer's directory) over
 * `lower` (entries already in the flattened tree). Upper directories are merged recursively; the
 * nodes of `upper` are reused in the result.
 */
function mergeEntries(lower: TreeNode[], upper: TreeNode[], spec: WhiteoutSpec): TreeNode[] {
  const result = new Map<string, TreeNode>(lower.map((n) => [key(n.name), n]));
  const additions: Array<{ node: TreeNode; hidesLower: boolean }> = [];
  // Whiteouts first, so they only ever hide what lower layers brought.
  for (const u of upper) {
    const w = whiteoutOf(u, spec);
    if (w?.type === 'removal') result.delete(key(w.target));
    else if (w?.type === 'opaque-marker') result.clear();
    else {
      if (w?.type === 'opaque-dir') u.xattrs.delete(OVERLAYFS_OPAQUE_XATTR);
      additions.push({ node: u, hidesLower: w?.type === 'opaque-dir' });
    }
  }
  for (const { node: u, hidesLower } of additions) {
    const l = result.get(key(u.name));
    if (u.implied && l?.kind === 'dir') keepAttributes(u, l);
    if (u.kind === 'dir') {
      const below = l?.kind === 'dir' && !hidesLower ? l.children ?? [] : [];
      u.children = mergeEntries(below, u.children ?? [], spec);
    }
    result.set(key(u.name), u);
  }
  return [...result.values()].sort((a, b) => Buffer.compare(a.name, b.name));
}

/** An implied directory takes the attributes of the lower directory it lies over (TreeNode.implied). */
function keepAttributes(implied: TreeNode, lower: TreeNode): void {
  Object.assign(implied, { mode: lower.mode, uid: lower.uid, gid: lower.gid, mtimeSec: lower.mtimeSec, mtimeNsec: lower.mtimeNsec, xattrs: new Map(lower.xattrs) });
  if (!lower.implied) delete implied.implied;
}

/**
 * Lays `upper` (the root of one layer) over `lower` (a flattened tree, or null for the first layer) and
 * returns the new flattened root: the upper root's attributes (an implied root's: the lower's) over
 * the merged children (the root itself is never a whiteout, as in nydus). Whiteouts of the first
 * layer have nothing to hide and disappear too, as an OCI runtime unpacks them (nydus's merge keeps
 * them in its bottom layer).
 */
export function overlayLayer(lower: TreeNode | null, upper: TreeNode, spec: WhiteoutSpec): TreeNode {
  if (upper.kind !== 'dir') throw new NydusError(`the root of layer ${upper.path} is not a directory`);
  if (upper.implied && lower) keepAttributes(upper, lower);
  upper.children = mergeEntries(lower?.children ?? [], upper.children ?? [], spec);
  return upper;
}

/**
 * Hardlink identity is per layer: two layers' inodes never share one, even if their keys (inode
 * numbers of their own images) happen to collide.
 */
export function scopeHardlinks(root: TreeNode, layerTag: string): void {
  for (const n of walkTree(root)) if (n.hardlinkKey) n.hardlinkKey = `${layerTag}/${n.hardlinkKey}`;
}

/** Flattens layer trees, lowest first, into one tree. */
export function flattenLayers(layers: TreeNode[], spec: WhiteoutSpec): TreeNode {
  if (layers.length === 0) throw new NydusError('at least one layer is needed');
  let merged: TreeNode | null = null;
  layers.forEach((root, i) => {
    scopeHardlinks(root, `layer${i}`);
    merged = overlayLayer(merged, root, spec);
  });
  return merged!;
}
