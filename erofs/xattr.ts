/** Inline extended attributes (erofs_fs.h: erofs_xattr_ibody_header, erofs_xattr_entry). */
import { Struct } from './struct.ts';
import { FormatError } from './errors.ts';
import { xattrIbodySize } from './inode.ts';

export const erofsXattrIbodyHeader = new Struct('erofs_xattr_ibody_header', 12, {
  h_name_filter: { offset: 0, type: 'u32' }, // only meaningful with COMPAT_XATTR_FILTER
  h_shared_count: { offset: 4, type: 'u8' },
  h_reserved2: { offset: 5, type: { bytes: 7 } },
});

export const erofsXattrEntry = new Struct('erofs_xattr_entry', 4, {
  e_name_len: { offset: 0, type: 'u8' },
  e_name_index: { offset: 1, type: 'u8' },
  e_value_size: { offset: 2, type: 'u16' },
});

/** The name-prefix table: an entry stores its prefix as an index and the rest of the name. */
export const XATTR_PREFIXES: ReadonlyArray<readonly [number, string]> = [
  [1, 'user.'],
  [2, 'system.posix_acl_access'],
  [3, 'system.posix_acl_default'],
  [4, 'trusted.'],
  [5, 'lustre.'],
  [6, 'security.'],
];
export const EROFS_XATTR_LONG_PREFIX = 0x80;
export const EROFS_XATTR_INDEX_POSIX_ACL_ACCESS = 2;
export const EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT = 3;
export const XATTR_NAME_POSIX_ACL_ACCESS = 'system.posix_acl_access';
export const XATTR_NAME_POSIX_ACL_DEFAULT = 'system.posix_acl_default';

/** Longest name after its prefix: e_name_len is a u8 (and erofs_getxattr refuses longer, EROFS_NAME_LEN). */
export const EROFS_XATTR_NAME_LEN = 255;
/** Largest value: e_value_size is a __le16. */
export const EROFS_XATTR_VALUE_MAX = 0xffff;
/** i_xattr_icount is a __le16: the inline area of an inode is at most 12 + 4 * (0xffff - 1) bytes. */
export const EROFS_XATTR_ICOUNT_MAX = 0xffff;

export type Xattrs = Map<string, Buffer>;

/** Splits a full attribute name into (prefix index, suffix), or null if no prefix fits. */
export function splitXattrName(name: Buffer): { index: number; suffix: Buffer } | null {
  let best: { index: number; suffix: Buffer } | null = null;
  let bestLen = -1;
  for (const [index, prefix] of XATTR_PREFIXES) {
    const p = Buffer.from(prefix, 'latin1');
    if (name.length >= p.length && name.subarray(0, p.length).equals(p) && p.length > bestLen) {
      // posix ACL names are whole names, nothing may follow them.
      if ((index === EROFS_XATTR_INDEX_POSIX_ACL_ACCESS || index === EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT) && name.length !== p.length) continue;
      best = { index, suffix: name.subarray(p.length) };
      bestLen = p.length;
    }
  }
  return best;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

/**
 * Why the format cannot hold an attribute of this name, or null if it can: a known prefix; after a
 * namespace prefix (user., trusted., ...) a non-empty rest, as the kernel's xattr_resolve_name wants;
 * no NUL (names are C strings to the kernel); a rest of at most 255 bytes (e_name_len is a u8, and
 * erofs_getxattr refuses longer names).
 */
export function xattrNameProblem(name: Buffer): string | null {
  if (name.includes(0)) return 'the name holds a NUL byte';
  const split = splitXattrName(name);
  if (!split) return 'the name has no EROFS prefix (user., trusted., security., lustre., or system.posix_acl_access/default)';
  if (split.index !== EROFS_XATTR_INDEX_POSIX_ACL_ACCESS && split.index !== EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT && split.suffix.length === 0) {
    return 'the name is only a prefix';
  }
  if (split.suffix.length > EROFS_XATTR_NAME_LEN) return `the name is longer than ${EROFS_XATTR_NAME_LEN} bytes after its prefix`;
  return null;
}

/** The inline xattr area's i_xattr_icount for these attributes (names must have a prefix). */
export function inlineXattrIcount(xattrs: Xattrs): number {
  if (xattrs.size === 0) return 0;
  let bytes = 0;
  for (const [name, value] of xattrs) {
    const split = splitXattrName(Buffer.from(name, 'latin1'));
    bytes += align4(erofsXattrEntry.size + (split?.suffix.length ?? name.length) + value.length);
  }
  return bytes / 4 + 1;
}

/**
 * POSIX ACL xattr values (system.posix_acl_access / _default), as the kernel reads them: the header's
 * a_version, entries of {e_tag, e_perm, e_id} (include/uapi/linux/posix_acl_xattr.h).
 */
export const POSIX_ACL_XATTR_VERSION = 0x0002;
const POSIX_ACL_XATTR_HEADER_SIZE = 4;
const POSIX_ACL_XATTR_ENTRY_SIZE = 8;
const ACL_USER_OBJ = 0x01;
const ACL_USER = 0x02;
const ACL_GROUP_OBJ = 0x04;
const ACL_GROUP = 0x08;
const ACL_MASK = 0x10;
const ACL_OTHER = 0x20;
const ACL_PERMS = 0x07; // ACL_READ | ACL_WRITE | ACL_EXECUTE
const ACL_UNDEFINED_ID = 0xffff_ffff;

/**
 * Why the kernel would refuse this ACL value, or null if it is a valid ACL: posix_acl_from_xattr
 * (fs/posix_acl.c) wants the version, a length of 4 + 8n and known tags with valid ids (getting the
 * attribute, and every permission check of a non-owner, fails with EINVAL otherwise); setxattr's
 * posix_acl_valid adds the order user::, user:*, group::, group:*, mask::, other:: with exactly one of
 * each ::, a mask where named entries are, and only rwx bits. An ACL of no entries reads as none at
 * all though listed as an attribute: refused as well.
 */
export function posixAclProblem(value: Buffer): string | null {
  if (value.length < POSIX_ACL_XATTR_HEADER_SIZE) return `the ACL is ${value.length} bytes, shorter than its header`;
  const version = value.readUInt32LE(0);
  if (version !== POSIX_ACL_XATTR_VERSION) return `the ACL has version ${version}, not ${POSIX_ACL_XATTR_VERSION}`;
  if ((value.length - POSIX_ACL_XATTR_HEADER_SIZE) % POSIX_ACL_XATTR_ENTRY_SIZE) {
    return `the ACL is ${value.length} bytes, not a ${POSIX_ACL_XATTR_HEADER_SIZE}-byte header and ${POSIX_ACL_XATTR_ENTRY_SIZE}-byte entries`;
  }
  const count = (value.length - POSIX_ACL_XATTR_HEADER_SIZE) / POSIX_ACL_XATTR_ENTRY_SIZE;
  if (count === 0) return 'the ACL has no entries';
  // posix_acl_valid's state: the tag expected next; 0 once other:: is seen.
  let state = ACL_USER_OBJ;
  let needsMask = false;
  for (let i = 0; i < count; i++) {
    const at = POSIX_ACL_XATTR_HEADER_SIZE + i * POSIX_ACL_XATTR_ENTRY_SIZE;
    const tag = value.readUInt16LE(at);
    const perm = value.readUInt16LE(at + 2);
    const id = value.readUInt32LE(at + 4);
    const bad = (what: string) => `ACL entry ${i} (tag 0x${tag.toString(16)}) ${what}`;
    const outOfOrder = () => bad('is out of order (user::, user:*, group::, group:*, mask::, other:: expected)');
    switch (tag) {
      case ACL_USER_OBJ:
        if (state !== ACL_USER_OBJ) return outOfOrder();
        state = ACL_USER;
        break;
      case ACL_USER:
      case ACL_GROUP:
        if (state !== tag) return outOfOrder();
        if (id === ACL_UNDEFINED_ID) return bad(`names ${tag === ACL_USER ? 'uid' : 'gid'} ${id}, which is no id`);
        needsMask = true;
        break;
      case ACL_GROUP_OBJ:
        if (state !== ACL_USER) return outOfOrder();
        state = ACL_GROUP;
        break;
      case ACL_MASK:
        if (state !== ACL_GROUP) return outOfOrder();
        state = ACL_OTHER;
        break;
      case ACL_OTHER:
        if (state === ACL_GROUP && needsMask) return bad('follows named entries without a mask:: entry');
        if (state !== ACL_OTHER && state !== ACL_GROUP) return outOfOrder();
        state = 0;
        break;
      default:
        return bad('has an unknown tag');
    }
    if (perm & ~ACL_PERMS) return bad(`has permission bits 0x${perm.toString(16)} beyond rwx`);
  }
  if (state !== 0) return 'the ACL lacks a required entry (user::, group:: and other:: are needed)';
  return null;
}

/**
 * Why the format cannot hold these attributes of one inode, or null: each name (xattrNameProblem),
 * each value (e_value_size is a __le16), and all of them inline (i_xattr_icount is a __le16). With
 * `values`, what the kernel makes of a value too (POSIX ACLs, posixAclProblem).
 */
export function xattrsProblem(xattrs: Xattrs, values = true): string | null {
  for (const [name, value] of xattrs) {
    const shown = JSON.stringify(name);
    const nameProblem = xattrNameProblem(Buffer.from(name, 'latin1'));
    if (nameProblem) return `xattr ${shown}: ${nameProblem}`;
    if (value.length > EROFS_XATTR_VALUE_MAX) return `xattr ${shown}: a value of ${value.length} bytes is larger than ${EROFS_XATTR_VALUE_MAX}`;
    if (values && (name === XATTR_NAME_POSIX_ACL_ACCESS || name === XATTR_NAME_POSIX_ACL_DEFAULT)) {
      const aclProblem = posixAclProblem(value);
      if (aclProblem) return `xattr ${shown}: ${aclProblem}`;
    }
  }
  const icount = inlineXattrIcount(xattrs);
  if (icount > EROFS_XATTR_ICOUNT_MAX) {
    return `${xattrs.size} xattrs take ${xattrIbodySize(icount)} bytes, more than the ${xattrIbodySize(EROFS_XATTR_ICOUNT_MAX)} an inode can hold (i_xattr_icount ${icount} > ${EROFS_XATTR_ICOUNT_MAX})`;
  }
  return null;
}

/**
 * Encodes the inline xattr body of an inode; names are raw bytes (latin1-keyed strings in the Map).
 * Returns the body and its i_xattr_icount; an empty map gives an empty body and icount 0. Attributes
 * the format cannot hold (xattrsProblem; values are the builder's to check) are an error.
 */
export function encodeInlineXattrs(xattrs: Xattrs): { body: Buffer; icount: number } {
  if (xattrs.size === 0) return { body: Buffer.alloc(0), icount: 0 };
  const problem = xattrsProblem(xattrs, false);
  if (problem) throw new Error(problem);
  const parts: Buffer[] = [erofsXattrIbodyHeader.encode({ h_name_filter: 0, h_shared_count: 0 })];
  const names = [...xattrs.keys()].sort();
  for (const name of names) {
    const value = xattrs.get(name)!;
    const split = splitXattrName(Buffer.from(name, 'latin1'))!;
    const size = align4(4 + split.suffix.length + value.length);
    const entry = Buffer.alloc(size);
    erofsXattrEntry.encodeInto(entry, 0, { e_name_len: split.suffix.length, e_name_index: split.index, e_value_size: value.length });
    split.suffix.copy(entry, 4);
    value.copy(entry, 4 + split.suffix.length);
    parts.push(entry);
  }
  const body = Buffer.concat(parts);
  return { body, icount: (body.length - 12) / 4 + 1 };
}

/** Decodes an inline xattr body (no shared xattrs are written by us; shared ones are refused). */
export function decodeInlineXattrs(body: Buffer, where: string, longPrefixes: Buffer[] = []): Xattrs {
  const out: Xattrs = new Map();
  if (body.length === 0) return out;
  const h = erofsXattrIbodyHeader.decode(body, 0, where);
  let off = 12 + 4 * h.h_shared_count;
  if (h.h_shared_count > 0) throw new FormatError(`${where}: shared xattrs are not supported`);
  while (off + 4 <= body.length) {
    const e = erofsXattrEntry.decode(body, off, where);
    const end = off + 4 + e.e_name_len + e.e_value_size;
    if (end > body.length) throw new FormatError(`${where}: xattr entry at ${off} runs past the xattr area`);
    let prefix: Buffer;
    if (e.e_name_index & EROFS_XATTR_LONG_PREFIX) {
      const p = longPrefixes[e.e_name_index & 0x7f];
      if (!p) throw new FormatError(`${where}: xattr entry at ${off} names unknown long prefix ${e.e_name_index & 0x7f}`);
      prefix = p;
    } else {
      const known = XATTR_PREFIXES.find(([i]) => i === e.e_name_index);
      if (!known) throw new FormatError(`${where}: xattr entry at ${off} has unknown name index ${e.e_name_index}`);
      prefix = Buffer.from(known[1], 'latin1');
    }
    const name = Buffer.concat([prefix, body.subarray(off + 4, off + 4 + e.e_name_len)]).toString('latin1');
    out.set(name, Buffer.from(body.subarray(off + 4 + e.e_name_len, end)));
    off = align4(end);
  }
  return out;
}
