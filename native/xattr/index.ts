/** Typed face of the xattr addon: extended attributes without following symlinks, names as bytes. */
import { loadAddon } from '../load.ts';

interface XattrBinding {
  llist(path: Buffer): Buffer[];
  lget(path: Buffer, name: Buffer): Buffer;
  lset(path: Buffer, name: Buffer, value: Buffer): void;
}

const binding = loadAddon<XattrBinding>('xattr');

/** All xattrs of `path` (a Buffer path), keyed by the name as a latin1 string (bytes preserved). */
export function readXattrs(path: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const name of binding.llist(path)) out.set(name.toString('latin1'), binding.lget(path, name));
  return out;
}

export function setXattr(path: Buffer | string, name: string, value: Buffer): void {
  binding.lset(Buffer.isBuffer(path) ? path : Buffer.from(path), Buffer.from(name, 'latin1'), value);
}
