/**
 * A thread count as nydus's thread_validator reads it, for nydusd and nydus-image alike: Rust's
 * `usize` parse (decimal digits, an optional leading '+') and a range of 1 to 1024. Anything else
 * (0, 1025, 1.5, 0x10, abc, nothing) is null: refused by the caller, never rounded or taken as no limit.
 */
export const THREADS_MAX = 1024;

export function parseThreadCount(v: string): number | null {
  const n = /^\+?[0-9]+$/.test(v) ? Number(v) : NaN;
  return n >= 1 && n <= THREADS_MAX ? n : null;
}
