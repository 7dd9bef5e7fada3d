/**
 * Tar archives written byte by byte, as no well-behaved writer makes them (the tar parser's and the
 * tar source's tests of hostile layers): ustar headers, pax records, whole blocks.
 */
export const BLOCK = 512;

export interface Header {
  name: string;
  size?: number;
  typeflag?: string;
  linkname?: string;
  /** Raw bytes for the 8-byte uid field (e.g. GNU base-256). */
  uid?: Buffer;
  /** Raw bytes for the 12-byte mtime field. */
  mtime?: Buffer;
}

/** One ustar header block, checksum computed. */
export function header(h: Header): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.write(h.name, 0, 100, 'latin1');
  b.write('0000644\0', 100, 'latin1');
  (h.uid ?? Buffer.from('0000000\0')).copy(b, 108);
  b.write('0000000\0', 116, 'latin1');
  b.write(`${(h.size ?? 0).toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  (h.mtime ?? Buffer.from('14000000000\0')).copy(b, 136);
  b.write(h.typeflag ?? '0', 156, 'latin1');
  if (h.linkname) b.write(h.linkname, 157, 100, 'latin1');
  b.write('ustar\0' + '00', 257, 'latin1');
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return b;
}

/** `data` padded to whole blocks. */
export function blocks(data: Buffer | string): Buffer {
  const d = Buffer.from(data);
  return Buffer.concat([d, Buffer.alloc((BLOCK - (d.length % BLOCK)) % BLOCK)]);
}

/** A file entry with its data. */
export function file(name: string, data: string): Buffer {
  return Buffer.concat([header({ name, size: data.length }), blocks(data)]);
}

/** A pax extended header ('x') with these records. */
export function pax(records: Array<[string, string | Buffer]>): Buffer {
  const body = Buffer.concat(records.map(([k, v]) => {
    const rec = Buffer.concat([Buffer.from(` ${k}=`), Buffer.from(v), Buffer.from('\n')]);
    let len = rec.length + 1;
    while (String(len).length + rec.length !== len) len++;
    return Buffer.concat([Buffer.from(String(len)), rec]);
  }));
  return Buffer.concat([header({ name: 'PaxHeader', size: body.length, typeflag: 'x' }), blocks(body)]);
}

export const END = Buffer.alloc(2 * BLOCK);
