/**
 * The addon's BLAKE3 and SHA-256 (chunk verification) over inputs of every tree shape, against
 * @napi-rs/blake-hash and OpenSSL: what disagrees, or what a flipped bit did not fail. Run as a
 * script it prints that list as JSON, so that a test can run it in a process of its own
 * (NYDUS_BLAKE3 picks the addon's BLAKE3 code when a process first hashes).
 */
import crypto from 'node:crypto';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { fscacheBinding } from '../../native/fscache/index.ts';
import { prand } from './fixtures.ts';

export const blake3 = (createRequire(import.meta.url)('@napi-rs/blake-hash') as { blake3(b: Buffer): Buffer }).blake3;
export const sha256 = (b: Buffer) => crypto.createHash('sha256').update(b).digest();

// Block and chunk edges (64 B, 1 KiB), the 16-chunk and 16-parent batches (16 KiB, 32 KiB), the
// 1 MiB subtrees and the stack they merge on (up to 7 MiB).
const SIZES = [1, 63, 64, 65, 1023, 1024, 1025, 2048, 2049, 3 * 1024, 15 * 1024, 16 * 1024, 16 * 1024 + 1, 17 * 1024, 33 * 1024 + 7, 32 * 1024,
  48 * 1024 - 1, 65536, 100_000, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (1 << 20) + 1024, 2 << 20, (2 << 20) + 1, 3 * (1 << 20) + 5,
  (4 << 20) - 1024, 5 << 20, (7 << 20) + 3 * 1024 + 9];

/** One chunk, stored raw, checked against `digest` with `digester` (0 BLAKE3, 1 SHA-256): the addon's verdict. */
export async function nativeVerdict(data: Buffer, digest: Buffer, digester: 0 | 1): Promise<string | null> {
  const layout = new Float64Array([0, data.length, 0, data.length, 0]);
  const [verdict] = await fscacheBinding().verifyRunNative(data, layout, digest, 32, new Uint8Array(data.length), 0, digester);
  return verdict;
}

export async function digestMismatches(): Promise<string[]> {
  const out: string[] = [];
  for (const [i, n] of SIZES.entries()) {
    const data = prand(n, 100 + i);
    for (const [digester, digest] of [[0, blake3(data)], [1, sha256(data)]] as const) {
      const verdict = await nativeVerdict(data, digest, digester);
      if (verdict !== null) out.push(`size ${n}, digester ${digester}: ${verdict}`);
      const flipped = Buffer.from(data);
      flipped[n >> 1] ^= 0x10;
      if (!/digest mismatch/.test(String(await nativeVerdict(flipped, digest, digester)))) out.push(`size ${n}, digester ${digester}: a flipped bit passed`);
    }
  }
  return out;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) console.log(JSON.stringify(await digestMismatches()));
