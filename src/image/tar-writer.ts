/**
 * A streaming POSIX (pax) tar writer: ustar headers, pax records for long names, big ids,
 * nanosecond mtimes and xattrs (SCHILY.xattr.*, values kept as raw bytes), and sparse files in
 * GNU tar's pax sparse format 1.0 (GNU tar restores their holes as holes).
 */
import fs from 'node:fs';

const BLOCK = 512;

function octal(buf: Buffer, off: number, len: number, v: number): boolean {
  const s = v.toString(8);
  if (s.length > len - 1) return false;
  buf.write(s.padStart(len - 1, '0') + '\0', off, len, 'latin1');
  return true;
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'latin1'), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len), 'latin1'), body]);
}

/** A pax time as a decimal number: before 1970, (-2 s, 0.5e9 ns) is -1.5. */
export function paxTime(sec: number, nsec: number): string {
  if (sec < 0 && nsec > 0) return `-${-(sec + 1)}.${String(1e9 - nsec).padStart(9, '0')}`;
  return `${sec}.${String(nsec).padStart(9, '0')}`;
}

export interface TarEntry {
  path: Buffer;
  /** '0' file, '1' hardlink, '2' symlink, '3' char, '4' block, '5' dir, '6' fifo. */
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  linkname?: Buffer;
  devmajor?: number;
  devminor?: number;
  xattrs?: Map<string, Buffer>;
  /**
   * Regular files with holes: the [offset, length] runs that hold data, in order. Only their bytes
   * follow (data() with the runs back to back); the rest of `size` reads as zeros.
   */
  sparse?: Array<[number, number]>;
}

/**
 * GNU tar's sparse map (format 1.0), at the head of the member's data: the number of entries, then
 * offset and length of each data run, decimal, one a line, padded with NULs to a block. A file that
 * ends in a hole gets a last, empty run at its end, as GNU tar writes it, so it extracts at full size.
 */
function sparseMap(runs: Array<[number, number]>, size: number): Buffer {
  const all = [...runs];
  const last = all[all.length - 1];
  if (!last || last[0] + last[1] < size) all.push([size, 0]);
  const text = Buffer.from(`${all.length}\n${all.map(([o, l]) => `${o}\n${l}\n`).join('')}`, 'latin1');
  const out = Buffer.alloc(Math.ceil(text.length / BLOCK) * BLOCK);
  text.copy(out);
  return out;
}

export class TarWriter {
  private fd: number;
  /** `into`: `file` is written into (a FIFO, a device, /dev/stdout: nothing to sync); otherwise a new file is made there. */
  constructor(file: string, private readonly into = false) {
    this.fd = fs.openSync(file, into ? 'w' : 'wx');
  }

  private write(buf: Buffer): void {
    let done = 0;
    while (done < buf.length) done += fs.writeSync(this.fd, buf, done, buf.length - done);
  }

  private header(e: TarEntry, type: string, name: Buffer, size: number, link?: Buffer): Buffer {
    const h = Buffer.alloc(BLOCK);
    name.copy(h, 0, 0, Math.min(100, name.length));
    octal(h, 100, 8, e.mode & 0o7777);
    octal(h, 108, 8, Math.min(e.uid, 0o7777777));
    octal(h, 116, 8, Math.min(e.gid, 0o7777777));
    octal(h, 124, 12, size);
    octal(h, 136, 12, Math.max(0, Math.min(e.mtimeSec, 0o77777777777)));
    h.write(type, 156, 1, 'latin1');
    if (link) link.copy(h, 157, 0, Math.min(100, link.length));
    h.write('ustar\x0000', 257, 8, 'latin1');
    octal(h, 329, 8, e.devmajor ?? 0);
    octal(h, 337, 8, e.devminor ?? 0);
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    octal(h, 148, 7, sum);
    h[155] = 0x20;
    return h;
  }

  private pad(size: number): void {
    const rest = size % BLOCK;
    if (rest) this.write(Buffer.alloc(BLOCK - rest));
  }

  /**
   * Writes an entry's headers; for regular files the caller then streams `size` bytes with data()
   * (a sparse file: the bytes of its data runs) and ends with endFile().
   */
  add(e: TarEntry): void {
    const records: Buffer[] = [];
    let name = e.path;
    let stored = e.type === '0' ? e.size : 0;
    let map: Buffer | null = null;
    if (e.sparse) {
      // The ustar name is GNU's %d/GNUSparseFile.%p/%f: a tar without sparse support extracts the
      // condensed file (map first) apart from the real one.
      const base = e.path.subarray(e.path.lastIndexOf(0x2f, e.path.length - 1) + 1);
      name = Buffer.concat([Buffer.from('./GNUSparseFile.0/'), base]);
      map = sparseMap(e.sparse, e.size);
      stored = map.length + e.sparse.reduce((n, [, l]) => n + l, 0);
      records.push(paxRecord('GNU.sparse.major', Buffer.from('1')), paxRecord('GNU.sparse.minor', Buffer.from('0')),
        paxRecord('GNU.sparse.name', e.path), paxRecord('GNU.sparse.realsize', Buffer.from(String(e.size))));
    } else if (e.path.length > 100) records.push(paxRecord('path', e.path));
    if (e.linkname && e.linkname.length > 100) records.push(paxRecord('linkpath', e.linkname));
    if (e.uid > 0o7777777) records.push(paxRecord('uid', Buffer.from(String(e.uid))));
    if (e.gid > 0o7777777) records.push(paxRecord('gid', Buffer.from(String(e.gid))));
    if (stored > 0o77777777777) records.push(paxRecord('size', Buffer.from(String(stored))));
    records.push(paxRecord('mtime', Buffer.from(paxTime(e.mtimeSec, e.mtimeNsec))));
    for (const [k, v] of e.xattrs ?? []) records.push(paxRecord(`SCHILY.xattr.${k}`, v));
    const pax = Buffer.concat(records);
    this.write(this.header({ ...e, mode: 0o644 }, 'x', Buffer.from('././@PaxHeader'), pax.length));
    this.write(pax);
    this.pad(pax.length);
    this.write(this.header(e, e.type, name, stored, e.linkname));
    if (map) this.write(map);
  }

  data(buf: Buffer): void {
    this.write(buf);
  }

  /** After a file's `size` bytes (a sparse file: the bytes of its data runs). */
  endFile(size: number): void {
    this.pad(size);
  }

  close(): void {
    this.write(Buffer.alloc(BLOCK * 2));
    if (!this.into) fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
  }

  abort(): void {
    try { fs.closeSync(this.fd); } catch { /* closed */ }
  }
}
