/** Chunk digests: a chunk's identity is the digest of its uncompressed bytes. */
import { createHash } from 'node:crypto';
import { blake3 } from '@napi-rs/blake-hash';

export type Digester = 'blake3' | 'sha256';

export function chunkDigest(digester: Digester, data: Buffer): Buffer {
  return digester === 'blake3' ? blake3(data) : createHash('sha256').update(data).digest();
}
