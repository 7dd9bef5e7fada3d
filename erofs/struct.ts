/**
 * A tiny declarative codec for fixed-size little-endian on-disk structures.
 *
 * Every structure of the format is declared once (see the other files of this module) as a list of
 * fields with their byte offsets; encode and decode are derived from that declaration, and the
 * declared size is checked against the fields when the module loads, like the kernel's
 * erofs_check_ondisk_layout_definitions().
 */
import { FormatError } from './errors.ts';

/** i64: a signed 64-bit field (the kernel reads i_mtime as time64_t: before 1970 is negative). */
export type FieldType = 'u8' | 'u16' | 'u32' | 'u64' | 'i64' | { bytes: number };

export interface FieldSpec {
  readonly offset: number;
  readonly type: FieldType;
}

type FieldValue<T extends FieldType> = T extends { bytes: number } ? Buffer : number;

export type Decoded<F extends Record<string, FieldSpec>> = { [K in keyof F]: FieldValue<F[K]['type']> };

/** The number fields of a structure (decodeNumbers): its byte-array fields left out. */
export type DecodedNumbers<F extends Record<string, FieldSpec>> = { [K in keyof F as F[K]['type'] extends { bytes: number } ? never : K]: number };

/** Values a number field takes as a JS number (64-bit fields: the safe integers; a bigint may use all 64 bits). */
const FIELD_RANGE: Record<Exclude<FieldType, { bytes: number }>, readonly [number, number]> = {
  u8: [0, 0xff], u16: [0, 0xffff], u32: [0, 0xffff_ffff], u64: [0, Number.MAX_SAFE_INTEGER],
  i64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
};

function fieldSize(t: FieldType): number {
  if (typeof t === 'object') return t.bytes;
  return { u8: 1, u16: 2, u32: 4, u64: 8, i64: 8 }[t];
}

/** Where a structure lies, for an error's message: a string, or a function that makes it. */
export type Where = string | (() => string);

/** The place a Where names. */
export function named(where: Where): string {
  return typeof where === 'function' ? where() : where;
}

/** `where: ` as an error message starts, or nothing. */
function prefix(where: Where): string {
  const w = named(where);
  return w ? `${w}: ` : '';
}

export class Struct<F extends Record<string, FieldSpec>> {
  /** The fields read into an object, in declaration order (readerOf); `readNumbers` the number fields only. */
  private readonly read: (buf: Buffer, offset: number, where: Where) => Record<string, number | Buffer>;
  private readonly readNumbers: (buf: Buffer, offset: number, where: Where) => Record<string, number | Buffer>;

  constructor(readonly name: string, readonly size: number, readonly fields: F) {
    const used = new Uint8Array(size);
    for (const [field, spec] of Object.entries(fields)) {
      const end = spec.offset + fieldSize(spec.type);
      if (end > size) throw new Error(`${name}.${field} ends at ${end}, beyond the size ${size}`);
      for (let i = spec.offset; i < end; i++) {
        if (used[i]) throw new Error(`${name}.${field} overlaps another field at byte ${i}`);
        used[i] = 1;
      }
    }
    this.read = readerOf(name, fields, true);
    this.readNumbers = readerOf(name, fields, false);
  }

  /**
   * Decodes the structure at `offset` of `buf`; a short buffer is a FormatError naming the structure.
   * `where` names the place for an error: a function when naming it costs (made only for the error).
   */
  decode(buf: Buffer, offset = 0, where: Where = ''): Decoded<F> {
    this.checkRoom(buf, offset, where);
    return this.read(buf, offset, where) as Decoded<F>;
  }

  /**
   * decode() without the byte-array fields: for a structure read once per inode of an image, where
   * each such field was a copy (a Buffer) that no reader looked at.
   */
  decodeNumbers(buf: Buffer, offset = 0, where: Where = ''): DecodedNumbers<F> {
    this.checkRoom(buf, offset, where);
    return this.readNumbers(buf, offset, where) as DecodedNumbers<F>;
  }

  /** A short buffer is a FormatError naming the structure. */
  private checkRoom(buf: Buffer, offset: number, where: Where): void {
    if (offset < 0 || offset + this.size > buf.length) {
      throw new FormatError(`${prefix(where)}truncated ${this.name} at offset ${offset} (needs ${this.size} bytes, ${Math.max(0, buf.length - offset)} present)`);
    }
  }

  /** Encodes into `buf` at `offset` (fields not given are left as they are: zero in a fresh buffer). */
  encodeInto(buf: Buffer, offset: number, value: Partial<Decoded<F>>): void {
    for (const [field, v] of Object.entries(value)) {
      const spec = this.fields[field];
      if (!spec) throw new Error(`${this.name} has no field ${field}`);
      const at = offset + spec.offset;
      const t = spec.type;
      if (typeof t === 'object') {
        const b = v as Buffer;
        if (b.length > t.bytes) throw new Error(`${this.name}.${field}: ${b.length} bytes do not fit in ${t.bytes}`);
        buf.fill(0, at, at + t.bytes);
        b.copy(buf, at);
      } else {
        // The builder checks what goes into the format before it gets here: a value that does not
        // fit is a bug, named by its field rather than left to Node's anonymous RangeError.
        const n = v as number | bigint;
        const [min, max] = FIELD_RANGE[t];
        const fits = typeof n === 'bigint'
          ? n >= (t === 'i64' ? -(1n << 63n) : 0n) && n < 1n << BigInt(t === 'i64' ? 63 : 8 * fieldSize(t))
          : Number.isSafeInteger(n) && n >= min && n <= max;
        if (!fits) throw new RangeError(`${this.name}.${field}: ${String(v)} does not fit ${t}`);
        if (t === 'u8') buf.writeUInt8(Number(n), at);
        else if (t === 'u16') buf.writeUInt16LE(Number(n), at);
        else if (t === 'u32') buf.writeUInt32LE(Number(n), at);
        else if (t === 'i64') buf.writeBigInt64LE(BigInt(n), at);
        else buf.writeBigUInt64LE(BigInt(n), at);
      }
    }
  }

  encode(value: Partial<Decoded<F>>): Buffer {
    const buf = Buffer.alloc(this.size);
    this.encodeInto(buf, 0, value);
    return buf;
  }

  /** Byte offset of a field inside the structure (for the rare in-place patch, e.g. a checksum). */
  offsetOf(field: keyof F): number {
    return this.fields[field].offset;
  }
}

/** 2^32: the high word's weight in a 64-bit field. */
const HIGH = 0x1_0000_0000;

/**
 * A 64-bit field as a JS number, read as two 32-bit words (no BigInt on the way): a FormatError
 * naming the field when it is beyond the safe integers.
 */
function read64(at: number, low: number, highWord: number, signed: boolean, name: string, where: Where): number {
  const high = signed ? highWord | 0 : highWord;
  // Exact while |high| < 2^21 (the safe range's edge); beyond it rounding cannot bring it back in.
  // (Most are below 2^32: `low` as it is, no double arithmetic, which the interpreter boxes.)
  const v = high === 0 ? low : high * HIGH + low;
  if (v > Number.MAX_SAFE_INTEGER || v < Number.MIN_SAFE_INTEGER) {
    const big = (BigInt(high) << 32n) | BigInt(low);
    throw new FormatError(`${prefix(where)}${name} at offset ${at} is out of range (${big})`);
  }
  return v;
}

/**
 * Little-endian reads as the readers' source text: the bytes indexed in place (checkRoom bounded the
 * structure), where buf.readUInt32LE() and its kind are JavaScript functions of node's, each a call
 * with its own argument and bounds checks, run by V8's interpreter while the code is cold, as a
 * bootstrap's one validation runs (a daemon's first image: its first mount waits for it).
 */
const u16 = (offset: number) => `(b[o + ${offset}] | b[o + ${offset + 1}] << 8)`;
/** (The top byte multiplied, not shifted: a shift would make values of 2^31 and more negative.) */
const u32 = (offset: number) => `((b[o + ${offset}] | b[o + ${offset + 1}] << 8 | b[o + ${offset + 2}] << 16) + b[o + ${offset + 3}] * 0x1000000)`;

/**
 * The reader of a structure's fields: one function, made from the declaration when the module loads,
 * that reads each field at its offset into an object literal of the fields in order. The loop over
 * the fields it replaces (a new array of them per call, a property added at a time, BigInts for the
 * 64-bit ones) was the largest item of a bootstrap's validation (a sixth of the Debian rootfs
 * bootstrap's). Field names and types come from this module's own declarations, never from an image.
 */
function readerOf(name: string, fields: Record<string, FieldSpec>, withBytes: boolean): (buf: Buffer, offset: number, where: Where) => Record<string, number | Buffer> {
  const props = Object.entries(fields).filter(([, { type }]) => withBytes || typeof type !== 'object').map(([field, { offset, type }]) => {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(field)) throw new Error(`${name}: field name ${JSON.stringify(field)} is not an identifier`);
    const at = `o + ${offset}`;
    const value = typeof type === 'object' ? `Buffer.from(b.subarray(${at}, ${at} + ${type.bytes}))`
      : type === 'u8' ? `b[o + ${offset}]`
        : type === 'u16' ? u16(offset)
          : type === 'u32' ? u32(offset)
            : `read64(${at}, ${u32(offset)}, ${u32(offset + 4)}, ${type === 'i64'}, ${JSON.stringify(`${name}.${field}`)}, w)`;
    return `${field}: ${value}`;
  });
  return new Function('Buffer', 'read64', `return function read_${name.replace(/\W/g, '_')}(b, o, w) { return { ${props.join(', ')} }; };`)(Buffer, read64);
}
