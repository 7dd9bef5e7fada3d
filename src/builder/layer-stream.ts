/**
 * A layer's bytes as a stream of plain tar: from a file or stdin (`-`), gunzipped on the way when they
 * start with the gzip magic (nydus detects compression the same way for tar-rafs and targz-rafs), or
 * decompressed when they start with zstd's (OCI's `tar+zstd` layers, as buildkit and docker write
 * them with compression=zstd; nydus-snapshotter's converter reads them so). Read errors and corrupt
 * compressed data become errors naming the layer.
 */
import fs from 'node:fs';
import zlib from 'node:zlib';
import { createRequire } from 'node:module';
import { Readable, type Transform } from 'node:stream';
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

/** How a layer's bytes are compressed, by their first bytes. */
type LayerCompression = 'gzip' | 'zstd' | null;

async function* withLayerErrors(source: AsyncIterable<Buffer>, name: string, compression: LayerCompression): AsyncGenerator<Buffer> {
  try {
    yield* source;
  } catch (e) {
    if (e instanceof NydusError) throw e;
    const err = e as NodeJS.ErrnoException;
    if (compression === 'gzip' && err.code?.startsWith('Z_')) throw new NydusError(`layer ${name}: corrupt gzip data: ${err.message}`);
    if (compression === 'zstd' && !err.code) throw new NydusError(`layer ${name}: corrupt zstd data: ${err.message}`);
    throw new NydusError(`layer ${name}: cannot read: ${err.message}`);
  }
}

/** gzip starts 1f 8b 08; a zstd frame with its magic 28 b5 2f fd. */
function compressionOf(head: Buffer): LayerCompression {
  if (head.length >= 3 && head[0] === 0x1f && head[1] === 0x8b && head[2] === 0x08) return 'gzip';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  return null;
}

/** zstd-napi's streaming decompressor (loaded when a zstd layer comes). */
function zstdDecompressStream(): Transform {
  const { DecompressStream } = createRequire(import.meta.url)('zstd-napi') as { DecompressStream: new () => Transform };
  return new DecompressStream();
}

/** The plain tar bytes of a layer stream, decompressed if it is gzip or zstd. */
export async function* tarBytes(stream: Readable, name: string): AsyncGenerator<Buffer> {
  const it = withLayerErrors(stream, name, null);
  let head = Buffer.alloc(0);
  while (head.length < 4) {
    const r = await it.next();
    if (r.done) break;
    head = Buffer.concat([head, r.value]);
  }
  const compression = compressionOf(head);
  if (!compression) {
    if (head.length) yield* prepend(head, it);
    return;
  }
  const decompress = compression === 'gzip' ? zlib.createGunzip({ chunkSize: 256 << 10 }) : zstdDecompressStream();
  const compressed = Readable.from(prepend(head, it), { objectMode: false });
  // Errors of the source reach the decompressing stream, whose iteration then throws them.
  compressed.on('error', (e) => decompress.destroy(e));
  compressed.pipe(decompress);
  yield* withLayerErrors(decompress, name, compression);
}
