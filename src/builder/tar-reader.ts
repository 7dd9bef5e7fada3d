/**
 * A streaming tar parser: ustar, GNU (long names and links, old sparse entries) and pax (local and
 * global records, sparse formats 0.0, 0.1 and 1.0), read once from front to back. Entry metadata is
 * returned as raw bytes where tar keeps bytes (paths, link targets, xattr values); a file's content
 * is pulled chunk by chunk with `readContent` while the stream is at it.
 */
import { NydusError } from '../../erofs/errors.ts';
import { ByteReader } from './byte-reader.ts';
import type { TreeNode } from './tree.ts';

const BLOCK = 512;
/** Bound on the metadata a single pax or GNU long-name record may hold in memory. */
const MAX_META_RECORD = 16 << 20;
/**
 * pax global records held at once (`g` headers; git archive writes one, a comment): each entry reads
 * them, so a hostile archive of millions would cost every entry that much.
 */
const MAX_GLOBAL_RECORDS = 1024;
/**
 * Segments of one sparse file's map. Each is an object here, and a map costs the archive a few bytes a
 * segment (a gzip of `0\n0\n` lines next to nothing): Go's archive/tar bounds it too (CVE-2022-2879).
 */
const MAX_SPARSE_SEGMENTS = 1 << 18;
/**
 * Records of one pax header. Each is held as a few objects (some 300 bytes) where the archive spends
 * 6 bytes on it (`5 a=\n`, and a gzip of them next to nothing): 16 MiB of such records held 1.1 GB.
 * A sparse 0.0 map takes two records a segment; xattrs one each, far fewer than this.
 */
const MAX_PAX_RECORDS = 2 * MAX_SPARSE_SEGMENTS + 1024;

export type TarEntryType = 'file' | 'hardlink' | 'symlink' | 'chrdev' | 'blkdev' | 'dir' | 'fifo';

/** An entry's metadata; owner, times and xattrs (SCHILY.xattr.* or LIBARCHIVE.xattr.* records) as a tree node has them. */
export interface TarEntry extends Pick<TreeNode, 'uid' | 'gid' | 'mtimeSec' | 'mtimeNsec' | 'xattrs'> {
  /** Path bytes as the archive has them (long name, pax path and sparse name applied). */
  path: Buffer;
  type: TarEntryType;
  /** Permission bits (07777). */
  mode: number;
  /** Files: size of the content, holes of a sparse file included. */
  size: number;
  /** Symlink target or hardlink target path. */
  linkname: Buffer;
  devmajor: number;
  devminor: number;
}

interface Segment { offset: number; size: number }

/** Type flags of entries that never have data (Go's isHeaderOnlyType). */
const HEADER_ONLY_TYPES = '123456';

/** A whole decimal number (digits only, no sign, no exponent), exact as a JS number; null otherwise. */
function decimal(s: string): number | null {
  if (!/^[0-9]+$/.test(s)) return null;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : null;
}

/** A pax record list: each key's last value, and every record in order (sparse 0.0 repeats keys). */
interface PaxRecords { last: Map<string, Buffer>; all: Array<[string, Buffer]> }

function cstring(h: Buffer, off: number, len: number): Buffer {
  const field = h.subarray(off, off + len);
  const nul = field.indexOf(0);
  return nul < 0 ? field : field.subarray(0, nul);
}

function isZeroBlock(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** Checksum of a header: the sum of its bytes with the checksum field read as spaces (unsigned or signed). */
function checksumOk(h: Buffer, stored: number): boolean {
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : h[i];
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

export class TarReader {
  private readonly bytes: ByteReader;
  /** Records of pax global headers, in force until changed. */
  /** Records of pax global headers, in force until changed. */
  private readonly globals = new Map<string, Buffer>();
  /** Stored bytes of the current entry not read yet, and the padding after them. */
  private dataLeft = 0;
  private padding = 0;
  private current: TarEntry | null = null;
  private segments: Segment[] = [];
  private segIndex = 0;
  private pos = 0;
  private finished = false;

  /** `layer` names the archive in error messages. */
  constructor(source: AsyncIterable<Buffer>, readonly layer: string) {
    this.bytes = new ByteReader(source);
  }

  private fail(what: string): NydusError {
    return new NydusError(`layer ${this.layer}: ${what}`);
  }

  private entryName(): string {
    return this.current ? ` (entry ${JSON.stringify(this.current.path.toString('utf8'))})` : '';
  }

  private truncated(where: string): NydusError {
    return this.fail(`tar ends early ${where} at byte ${this.bytes.position}`);
  }

  /** A numeric header field: octal, or GNU base-256; negative only where `signed` (mtime). */
  private num(h: Buffer, off: number, len: number, field: string, at: number, signed = false): number {
    if (h[off] & 0x80) {
      // GNU base-256: big-endian two's complement in the remaining bits.
      let v = BigInt(h[off] & 0x7f);
      const negative = h[off] === 0xff;
      for (let i = 1; i < len; i++) v = (v << 8n) | BigInt(h[off + i]);
      if (negative) v -= 1n << BigInt(8 * len - 1);
      if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < (signed ? BigInt(Number.MIN_SAFE_INTEGER) : 0n)) {
        throw this.fail(`tar header at byte ${at}: ${field} ${v} out of range`);
      }
      return Number(v);
    }
    const s = cstring(h, off, len).toString('latin1').trim();
    if (s === '') return 0;
    if (!/^[0-7]+$/.test(s)) throw this.fail(`tar header at byte ${at}: ${field} ${JSON.stringify(s)} is not an octal number`);
    return parseInt(s, 8);
  }

  private paxNumber(recs: Map<string, Buffer>, key: string, entry: string): number | undefined {
    const v = recs.get(key);
    if (v === undefined) return undefined;
    const n = decimal(v.toString('latin1'));
    if (n === null) throw this.fail(`entry ${entry}: pax record ${key}=${JSON.stringify(v.toString('latin1'))} is not a number`);
    return n;
  }

  /** Reads a metadata record's data (pax, long name) whole, padding included. */
  private async readRecordData(size: number, what: string): Promise<Buffer> {
    if (size > MAX_META_RECORD) throw this.fail(`${what} of ${size} bytes is larger than ${MAX_META_RECORD}`);
    const data = await this.bytes.read(size);
    if (!data || !(await this.bytes.skip((BLOCK - (size % BLOCK)) % BLOCK))) throw this.truncated(`inside a ${what}`);
    return data;
  }

  private parsePax(data: Buffer, at: number): PaxRecords {
    const out: PaxRecords = { last: new Map(), all: [] };
    let off = 0;
    while (off < data.length) {
      if (data[off] === 0) break; // NUL padding some writers leave
      const sp = data.indexOf(0x20, off);
      const len = sp > off ? Number(data.toString('latin1', off, sp)) : NaN;
      if (!Number.isSafeInteger(len) || len <= sp - off || off + len > data.length || data[off + len - 1] !== 0x0a) {
        throw this.fail(`malformed pax record at byte ${at + BLOCK + off}`);
      }
      const rec = data.subarray(sp + 1, off + len - 1);
      const eq = rec.indexOf(0x3d);
      if (eq < 0) throw this.fail(`malformed pax record at byte ${at + BLOCK + off}: no '='`);
      // Keys are UTF-8 text but xattr names in them may be any bytes: latin1 keeps them.
      const key = rec.toString('latin1', 0, eq);
      const value = Buffer.from(rec.subarray(eq + 1));
      out.last.set(key, value);
      if (out.all.push([key, value]) > MAX_PAX_RECORDS) throw this.fail(`pax header at byte ${at} holds more than ${MAX_PAX_RECORDS} records`);
      off += len;
    }
    return out;
  }

  /** The next entry, or null at the end of the archive. Skips what was not read of the previous one. */
  async next(): Promise<TarEntry | null> {
    if (this.finished) return null;
    if (this.current && !(await this.bytes.skip(this.dataLeft + this.padding))) throw this.truncated(`inside the data of an entry${this.entryName()}`);
    this.current = null;
    this.dataLeft = 0;
    this.padding = 0;
    let local: PaxRecords | null = null;
    let longName: Buffer | null = null;
    let longLink: Buffer | null = null;
    for (;;) {
      const at = this.bytes.position;
      if (at > 0 && !local && !longName && !longLink && (await this.bytes.atEnd())) {
        // The stream ends where a header would start: GNU tar, libarchive, Go's archive/tar (what
        // container runtimes unpack with) and nydus's tar-rs all take that as the end of the archive,
        // and real layers (umoci's) are written without the two zero blocks.
        this.finished = true;
        return null;
      }
      const h = await this.bytes.read(BLOCK);
      if (!h) throw this.truncated(at === 0 ? 'before its first header' : local || longName || longLink ? 'after an extended header' : 'inside a header');
      if (isZeroBlock(h)) {
        if (local || longName || longLink) throw this.fail(`archive ends right after an extended header at byte ${at}`);
        // End of archive. Read the rest (zero blocks, a gzip trailer) so a corrupt tail is noticed.
        await this.bytes.drain();
        this.finished = true;
        return null;
      }
      const stored = cstring(h, 148, 8).toString('latin1').trim();
      if (!/^[0-7]+$/.test(stored) || !checksumOk(h, parseInt(stored, 8))) throw this.fail(`bad tar header checksum at byte ${at} (not a tar, or corrupt)`);
      const typeflag = String.fromCharCode(h[156] || 0x30);
      const size = this.num(h, 124, 12, 'size', at);
      switch (typeflag) {
        case 'x': local = this.parsePax(await this.readRecordData(size, 'pax header'), at); continue;
        case 'g': {
          const g = this.parsePax(await this.readRecordData(size, 'pax global header'), at);
          for (const [k, v] of g.last) {
            if (v.length === 0) this.globals.delete(k);
            else this.globals.set(k, v);
          }
          if (this.globals.size > MAX_GLOBAL_RECORDS) throw this.fail(`pax global headers at byte ${at} hold more than ${MAX_GLOBAL_RECORDS} records`);
          continue;
        }
        case 'L': longName = cstring(await this.readRecordData(size, 'GNU long name'), 0, size); continue;
        case 'K': longLink = cstring(await this.readRecordData(size, 'GNU long link name'), 0, size); continue;
        case 'V': await this.readRecordData(size, 'volume label'); continue;
        default: break;
      }
      return this.entry(h, typeflag, size, at, local, longName, longLink);
    }
  }

  private async entry(h: Buffer, typeflag: string, storedSize: number, at: number, local: PaxRecords | null,
    longName: Buffer | null, longLink: Buffer | null): Promise<TarEntry> {
    const pax = new Map([...this.globals, ...(local?.last ?? [])]);
    const ustar = h.toString('latin1', 257, 263) === 'ustar\0';
    let path: Buffer = pax.get('path') ?? longName ?? (() => {
      const name = cstring(h, 0, 100);
      const prefix = ustar ? cstring(h, 345, 155) : Buffer.alloc(0);
      return prefix.length ? Buffer.concat([prefix, Buffer.from('/'), name]) : name;
    })();
    path = Buffer.from(path);
    const shown = JSON.stringify(path.toString('utf8'));
    let type: TarEntryType;
    switch (typeflag) {
      case '0': case '7': type = path[path.length - 1] === 0x2f ? 'dir' : 'file'; break;
      case 'S': type = 'file'; break;
      case '1': type = 'hardlink'; break;
      case '2': type = 'symlink'; break;
      case '3': type = 'chrdev'; break;
      case '4': type = 'blkdev'; break;
      case '5': case 'D': type = 'dir'; break;
      case '6': type = 'fifo'; break;
      default: throw this.fail(`entry ${shown}: unsupported tar entry type '${typeflag}'`);
    }
    const mtime = pax.get('mtime');
    let mtimeSec: number;
    let mtimeNsec = 0;
    if (mtime) {
      const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(mtime.toString('latin1'));
      if (!m) throw this.fail(`entry ${shown}: pax mtime ${JSON.stringify(mtime.toString('latin1'))} is not a time`);
      mtimeSec = Number(m[2]);
      if (!Number.isSafeInteger(mtimeSec)) throw this.fail(`entry ${shown}: pax mtime ${JSON.stringify(mtime.toString('latin1'))} is out of range`);
      mtimeNsec = Number((m[3] ?? '').slice(0, 9).padEnd(9, '0'));
      if (m[1]) {
        mtimeSec = -mtimeSec;
        if (mtimeNsec) {
          mtimeSec -= 1;
          mtimeNsec = 1_000_000_000 - mtimeNsec;
        }
      }
    } else {
      mtimeSec = this.num(h, 136, 12, 'mtime', at, true);
    }
    const xattrs = new Map<string, Buffer>();
    for (const [k, v] of [...this.globals, ...(local?.all ?? [])]) {
      if (k.startsWith('LIBARCHIVE.xattr.')) {
        let name: string;
        try {
          name = decodeURIComponent(k.slice(17));
        } catch {
          throw this.fail(`entry ${shown}: pax record ${JSON.stringify(k)}: the xattr name is not URI-encoded text`);
        }
        xattrs.set(Buffer.from(name, 'utf8').toString('latin1'), Buffer.from(v.toString('latin1'), 'base64'));
      }
    }
    // SCHILY records carry the raw bytes and win over libarchive's base64 copies.
    for (const [k, v] of [...this.globals, ...(local?.last ?? [])]) if (k.startsWith('SCHILY.xattr.')) xattrs.set(k.slice(13), v);
    const entry: TarEntry = {
      path, type,
      mode: this.num(h, 100, 8, 'mode', at) & 0o7777,
      uid: this.paxNumber(pax, 'uid', shown) ?? this.num(h, 108, 8, 'uid', at),
      gid: this.paxNumber(pax, 'gid', shown) ?? this.num(h, 116, 8, 'gid', at),
      mtimeSec, mtimeNsec, size: 0,
      linkname: Buffer.from(pax.get('linkpath') ?? longLink ?? cstring(h, 157, 100)),
      devmajor: type === 'chrdev' || type === 'blkdev' ? this.num(h, 329, 8, 'devmajor', at) : 0,
      devminor: type === 'chrdev' || type === 'blkdev' ? this.num(h, 337, 8, 'devminor', at) : 0,
      xattrs,
    };
    // Links, devices, directories and FIFOs have no data whatever their size field says, as Go's
    // archive/tar (what container runtimes unpack with), GNU tar and Python's tarfile read them: the
    // blocks after such a header are the next header, so no entry can hide behind one.
    const stored = HEADER_ONLY_TYPES.includes(typeflag) ? 0 : this.paxNumber(pax, 'size', shown) ?? storedSize;
    this.current = entry;
    this.dataLeft = stored;
    this.padding = (BLOCK - (stored % BLOCK)) % BLOCK;
    this.pos = 0;
    this.segIndex = 0;
    this.segments = [{ offset: 0, size: stored }];
    entry.size = type === 'file' ? stored : 0;
    if (type === 'file') {
      if (typeflag === 'S') await this.oldGnuSparse(h, at, entry);
      else if (pax.has('GNU.sparse.major') || pax.has('GNU.sparse.map') || pax.has('GNU.sparse.offset')) await this.paxSparse(pax, local, entry);
    }
    return entry;
  }

  private checkSegments(entry: TarEntry, stored: number): void {
    let end = 0;
    let sum = 0;
    for (const s of this.segments) {
      if (s.offset < end || s.offset + s.size > entry.size) throw this.fail(`entry ${JSON.stringify(entry.path.toString('utf8'))}: sparse map is out of order or beyond the file size`);
      end = s.offset + s.size;
      sum += s.size;
    }
    if (sum !== stored) throw this.fail(`entry ${JSON.stringify(entry.path.toString('utf8'))}: sparse map holds ${sum} bytes, the archive ${stored}`);
    // Segments of no bytes (GNU's end marker, or a hostile map of millions) store nothing: dropped,
    // so that looking ahead for holes never walks over them chunk after chunk.
    this.segments = this.segments.filter((seg) => seg.size > 0);
  }

  /** The error of a sparse map of more segments than MAX_SPARSE_SEGMENTS. */
  private tooManySegments(entry: TarEntry | string, count: number): NydusError {
    const shown = typeof entry === 'string' ? entry : JSON.stringify(entry.path.toString('utf8'));
    return this.fail(`entry ${shown}: sparse map of ${count} segments, more than the ${MAX_SPARSE_SEGMENTS} taken`);
  }

  /** GNU's old sparse entries ('S'): the map in the header and in extension blocks after it. */
  private async oldGnuSparse(h: Buffer, at: number, entry: TarEntry): Promise<void> {
    const segs: Segment[] = [];
    const addFrom = (b: Buffer, off: number, count: number) => {
      for (let i = 0; i < count; i++) {
        const o = off + i * 24;
        if (b[o] === 0) break;
        if (segs.length >= MAX_SPARSE_SEGMENTS) throw this.tooManySegments(entry, segs.length + 1);
        segs.push({ offset: this.num(b, o, 12, 'sparse offset', at), size: this.num(b, o + 12, 12, 'sparse size', at) });
      }
    };
    addFrom(h, 386, 4);
    let extended = h[482] !== 0;
    while (extended) {
      const ext = await this.bytes.read(BLOCK);
      if (!ext) throw this.truncated('inside a sparse header');
      addFrom(ext, 0, 21);
      extended = ext[504] !== 0;
    }
    entry.size = this.num(h, 483, 12, 'sparse real size', at);
    this.segments = segs;
    this.checkSegments(entry, this.dataLeft);
  }

  /** pax sparse files (GNU formats 0.0, 0.1 and 1.0). */
  private async paxSparse(pax: Map<string, Buffer>, local: PaxRecords | null, entry: TarEntry): Promise<void> {
    const shown = JSON.stringify(entry.path.toString('utf8'));
    const name = pax.get('GNU.sparse.name');
    if (name) entry.path = Buffer.from(name);
    entry.size = this.paxNumber(pax, 'GNU.sparse.realsize', shown) ?? this.paxNumber(pax, 'GNU.sparse.size', shown) ?? entry.size;
    const major = pax.get('GNU.sparse.major')?.toString('latin1');
    const segs: Segment[] = [];
    const bad = () => this.fail(`entry ${shown}: malformed sparse map`);
    if (major === '1') {
      // The map heads the data, as decimal lines: count, then offset and size pairs; block-padded.
      const numbers: number[] = [];
      // The unfinished line a block ends with; a number has at most 16 digits, so a longer line is
      // malformed (and each block is looked at once).
      let carry = '';
      let need = 1;
      while (numbers.length < need) {
        if (this.dataLeft < BLOCK) throw bad();
        const b = await this.bytes.read(BLOCK);
        if (!b) throw this.truncated(`inside the sparse map of entry ${shown}`);
        this.dataLeft -= BLOCK;
        const lines = (carry + b.toString('latin1')).split('\n');
        carry = lines.pop()!;
        for (const line of lines) {
          if (numbers.length === need) break;
          const n = decimal(line);
          if (n === null) throw bad();
          numbers.push(n);
          if (numbers.length === 1) {
            if (n > MAX_SPARSE_SEGMENTS) throw this.tooManySegments(shown, n);
            need = 1 + 2 * n;
          }
        }
        if (numbers.length < need && carry.length > 16) throw bad();
      }
      for (let i = 1; i < numbers.length; i += 2) segs.push({ offset: numbers[i], size: numbers[i + 1] });
    } else if (pax.has('GNU.sparse.map')) {
      const text = pax.get('GNU.sparse.map')!.toString('latin1');
      // (Counted before split: a 16 MiB record is millions of numbers.)
      const commas = text.split(',', 2 * MAX_SPARSE_SEGMENTS + 1).length;
      if (commas > 2 * MAX_SPARSE_SEGMENTS) throw this.tooManySegments(shown, Math.ceil(commas / 2));
      const parts = text.split(',').map(decimal);
      if (parts.length % 2 || parts.some((p) => p === null)) throw bad();
      for (let i = 0; i < parts.length; i += 2) segs.push({ offset: parts[i]!, size: parts[i + 1]! });
    } else {
      let offset: number | null = null;
      for (const [k, v] of local?.all ?? []) {
        const n = k === 'GNU.sparse.offset' || k === 'GNU.sparse.numbytes' ? decimal(v.toString('latin1')) : 0;
        if (n === null) throw bad();
        if (k === 'GNU.sparse.offset') offset = n;
        else if (k === 'GNU.sparse.numbytes') {
          if (offset === null) throw bad();
          if (segs.length >= MAX_SPARSE_SEGMENTS) throw this.tooManySegments(shown, segs.length + 1);
          segs.push({ offset, size: n });
          offset = null;
        }
      }
    }
    this.segments = segs;
    this.checkSegments(entry, this.dataLeft);
  }

  /** Whether the next `n` bytes of the current file lie wholly in holes of its sparse map (none is stored). */
  holeAhead(n: number): boolean {
    const end = this.pos + n;
    for (let i = this.segIndex; i < this.segments.length; i++) {
      const s = this.segments[i];
      if (s.size === 0 || s.offset + s.size <= this.pos) continue;
      return s.offset >= end;
    }
    return true;
  }

  /** Passes over the next `n` bytes of the current file, which must be holes (holeAhead), writing nothing. */
  skipHole(n: number): void {
    if (this.pos + n > this.current!.size || !this.holeAhead(n)) throw new Error('skipHole over stored bytes or beyond the end of a tar entry');
    this.pos += n;
  }

  /** The next `n` bytes of the current file's content into `dst` (holes as zeros). */
  async readContent(dst: Buffer, n: number): Promise<void> {
    const entry = this.current!;
    if (this.pos + n > entry.size) throw new Error('read beyond the end of a tar entry');
    let done = 0;
    while (done < n) {
      const seg = this.segments[this.segIndex];
      if (seg && seg.size === 0 && this.pos >= seg.offset) {
        this.segIndex++;
        continue;
      }
      let k: number;
      if (!seg || this.pos < seg.offset) {
        k = Math.min(n - done, (seg ? seg.offset : entry.size) - this.pos);
        dst.fill(0, done, done + k);
      } else {
        k = Math.min(n - done, seg.offset + seg.size - this.pos);
        if (!(await this.bytes.readInto(done ? dst.subarray(done) : dst, k))) throw this.truncated(`inside the data of an entry${this.entryName()}`);
        this.dataLeft -= k;
        if (this.pos + k === seg.offset + seg.size) this.segIndex++;
      }
      this.pos += k;
      done += k;
    }
  }
}
