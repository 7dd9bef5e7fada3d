/** Inline extended attributes (erofs_fs.h: erofs_xattr_ibody_header, erofs_xattr_entry). */
import { Struct } from './struct.ts';
import { FormatError } from './errors.ts';

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

export type Xattrs = Map<string, Buffer>;

/** Splits a full attribute name into (prefix index, suffix), or null if no prefix fits. */
export function splitXattrName(name: Buffer): { index: number; suffix: Buffer } | null {
  let best: { index: number; suffix: Buffer } | null = null;
  let bestLen = -1;
  for (const [index, prefix] of XATTR_PREFIXES) {
    const p = Buffer.from(prefix, 'latin1');
    if (name.length >= p.length && name.subarray(0, p.length).equals(p) && p.length > bestLen) {
      // posix ACL names are whole names, nothing may follow them.
      if ((index === 2 || index === 3) && name.length !== p.length) continue;
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
 * Encodes the inline xattr body of an inode; names are raw bytes (latin1-keyed strings in the Map).
 * Returns the body and its i_xattr_icount; an empty map gives an empty body and icount 0.
 */
export function encodeInlineXattrs(xattrs: Xattrs): { body: Buffer; icount: number } {
  if (xattrs.size === 0) return { body: Buffer.alloc(0), icount: 0 };
  const parts: Buffer[] = [erofsXattrIbodyHeader.encode({ h_name_filter: 0, h_shared_count: 0 })];
  const names = [...xattrs.keys()].sort();
  for (const name of names) {
    const value = xattrs.get(name)!;
    const split = splitXattrName(Buffer.from(name, 'latin1'));
    if (!split) throw new Error(`xattr name ${JSON.stringify(name)} has no EROFS prefix`);
    if (split.suffix.length > 255) throw new Error(`xattr name ${JSON.stringify(name)} is too long`);
    if (value.length > 0xffff) throw new Error(`xattr ${JSON.stringify(name)} value of ${value.length} bytes is too large`);
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
