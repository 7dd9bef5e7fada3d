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
