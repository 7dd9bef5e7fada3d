/** Chunk digests: a chunk's identity is the digest of its uncompressed bytes. */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import type * as BlakeHash from '@napi-rs/blake-hash';

// Loaded on first use (a daemon answers its API before it hashes anything; it verifies in the addon).
let loaded: typeof BlakeHash | null = null;
const blake = (): typeof BlakeHash => (loaded ??= createRequire(import.meta.url)('@napi-rs/blake-hash') as typeof BlakeHash);

export type Digester = 'blake3' | 'sha256';

export function chunkDigest(digester: Digester, data: Buffer): Buffer {
  return digester === 'blake3' ? blake().blake3(data) : createHash('sha256').update(data).digest();
}

/** Sizes of zero chunk whose digest zeroChunkDigest keeps at a time (per digester). */
const ZERO_DIGESTS_KEPT = 64;
const zeroDigests = new Map<string, Buffer>();

/**
 * The digest of a chunk of `size` zero bytes (a hole of a sparse file), made once per size: full
 * chunks are the common size; a file's last chunk may be any, so a bounded few of those are kept.
 */
export function zeroChunkDigest(digester: Digester, size: number): Buffer {
  const key = `${digester}:${size}`;
  let digest = zeroDigests.get(key);
  if (!digest) {
    digest = chunkDigest(digester, Buffer.alloc(size));
    if (zeroDigests.size >= ZERO_DIGESTS_KEPT) zeroDigests.clear();
    zeroDigests.set(key, digest);
  }
  return digest;
}
