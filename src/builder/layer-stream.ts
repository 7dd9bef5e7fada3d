/**
 * A layer's bytes as a stream of plain tar: from a file or stdin (`-`), gunzipped on the way when they
 * start with the gzip magic (nydus detects compression the same way for tar-rafs and targz-rafs).
 * Read errors and corrupt gzip data become errors naming the layer.
 */
import fs from 'node:fs';
import zlib from 'node:zlib';
import { Readable } from 'node:stream';
import { NydusError } from '../../erofs/errors.ts';

const READ_CHUNK = 1 << 20;

/** Names of stdin: `-`, and the paths nydus's callers pass (nydus-snapshotter uses /proc/self/fd/0). */
const STDIN_NAMES = new Set(['-', '/dev/stdin', '/dev/fd/0', '/proc/self/fd/0']);

export function isStdinSource(source: string): boolean {
  return STDIN_NAMES.has(source);
}

/** Opens `source` (a path, or stdin by one of its names) as a byte stream; `name` is what messages call it. */
export function openLayerSource(source: string): { stream: Readable; name: string } {
  // process.stdin, not open(/dev/stdin): that fails when stdin is a socket, as a parent's pipe may be.
  if (isStdinSource(source)) return { stream: process.stdin, name: 'from stdin' };
  let st: fs.Stats;
  try {
    st = fs.statSync(source);
  } catch (e) {
    throw new NydusError(`layer ${source}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : (e as Error).message}`);
  }
  if (st.isDirectory()) throw new NydusError(`layer ${source} is a directory, not a tar file`);
  return { stream: fs.createReadStream(source, { highWaterMark: READ_CHUNK }), name: source };
}

async function* prepend(first: Buffer, rest: AsyncIterator<Buffer>): AsyncGenerator<Buffer> {
  yield first;
  for (;;) {
    const r = await rest.next();
    if (r.done) return;
    yield r.value;
  }
}

async function* withLayerErrors(source: AsyncIterable<Buffer>, name: string, gzip: boolean): AsyncGenerator<Buffer> {
  try {
    yield* source;
  } catch (e) {
    if (e instanceof NydusError) throw e;
    const err = e as NodeJS.ErrnoException;
    if (gzip && err.code?.startsWith('Z_')) throw new NydusError(`layer ${name}: corrupt gzip data: ${err.message}`);
    throw new NydusError(`layer ${name}: cannot read: ${err.message}`);
  }
}

/** The plain tar bytes of a layer stream, gunzipped if it is gzip. */
export async function* tarBytes(stream: Readable, name: string): AsyncGenerator<Buffer> {
  const it = withLayerErrors(stream, name, false);
  // Sniff the first bytes: gzip starts 1f 8b 08.
  let head = Buffer.alloc(0);
  while (head.length < 3) {
    const r = await it.next();
    if (r.done) break;
    head = Buffer.concat([head, r.value]);
  }
  const isGzip = head.length >= 3 && head[0] === 0x1f && head[1] === 0x8b && head[2] === 0x08;
  if (!isGzip) {
    if (head.length) yield* prepend(head, it);
    return;
  }
  const gunzip = zlib.createGunzip({ chunkSize: 256 << 10 });
  const compressed = Readable.from(prepend(head, it), { objectMode: false });
  // Errors of the source reach the gunzip stream, whose iteration then throws them.
  compressed.on('error', (e) => gunzip.destroy(e));
  compressed.pipe(gunzip);
  yield* withLayerErrors(gunzip, name, true);
}
