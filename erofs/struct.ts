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

/** Values a number field takes as a JS number (64-bit fields: the safe integers; a bigint may use all 64 bits). */
const FIELD_RANGE: Record<Exclude<FieldType, { bytes: number }>, readonly [number, number]> = {
  u8: [0, 0xff], u16: [0, 0xffff], u32: [0, 0xffff_ffff], u64: [0, Number.MAX_SAFE_INTEGER],
  i64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
};

function fieldSize(t: FieldType): number {
  if (typeof t === 'object') return t.bytes;
  return { u8: 1, u16: 2, u32: 4, u64: 8, i64: 8 }[t];
}

export class Struct<F extends Record<string, FieldSpec>> {
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
  }

  /** Decodes the structure at `offset` of `buf`; a short buffer is a FormatError naming the structure. */
  decode(buf: Buffer, offset = 0, where = ''): Decoded<F> {
    if (offset < 0 || offset + this.size > buf.length) {
      throw new FormatError(`${where ? where + ': ' : ''}truncated ${this.name} at offset ${offset} (needs ${this.size} bytes, ${Math.max(0, buf.length - offset)} present)`);
    }
    const out: Record<string, number | Buffer> = {};
    for (const [field, spec] of Object.entries(this.fields)) {
      const at = offset + spec.offset;
      const t = spec.type;
      if (typeof t === 'object') out[field] = Buffer.from(buf.subarray(at, at + t.bytes));
      else if (t === 'u8') out[field] = buf.readUInt8(at);
      else if (t === 'u16') out[field] = buf.readUInt16LE(at);
      else if (t === 'u32') out[field] = buf.readUInt32LE(at);
      else {
        const v = t === 'i64' ? buf.readBigInt64LE(at) : buf.readBigUInt64LE(at);
        if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
          throw new FormatError(`${where ? where + ': ' : ''}${this.name}.${field} at offset ${at} is out of range (${v})`);
        }
        out[field] = Number(v);
      }
    }
    return out as Decoded<F>;
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
