/**
 * A build holds every entry's metadata in memory: about 0.7 KiB an entry for the tree, 1.2 KiB once
 * laid out (a tar of 300,000 empty files: 209 MiB of heap after the tree, 371 MiB after the layout),
 * and so does every reader of an image (its validation, then its tree). A source or an image of
 * millions of entries (a hostile layer: tar headers compress to a few bytes each) outgrew V8's heap,
 * and V8 aborts the process ("heap out of memory"): a crash that names no input. The loops that make
 * per-entry objects call HeapRoom.tick(); past HEAP_SHARE of the heap's limit, after a full garbage
 * collection, the work stops with an error that names what it was reading and how to give node more
 * memory.
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import { NydusError } from '../erofs/errors.ts';

/** Entries between two looks at the heap (a look costs a few microseconds, a collection far more). */
const CHECK_EVERY = 4096;
/** The share of the old generation's limit a build may fill; the rest is room for what the next stage makes. */
const HEAP_SHARE = 0.85;
/**
 * heap_size_limit is the old generation's limit plus the young generation's: three semi-spaces, of
 * node's default 16 MiB or what --max-semi-space-size says (bin/nydus-image gives 2 MiB).
 */
function youngGenerationMax(): number {
  const flags = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  const given = flags.map((f) => /^--max-semi-space-size=(\d+)$/.exec(f)?.[1]).filter(Boolean).pop();
  return 3 * (given ? Number(given) : 16) * 1048576;
}
/** (The flags are the process's: read once.) */
const YOUNG_GENERATION_MAX = youngGenerationMax();

let collect: (() => void) | null = null;

/** A full collection: V8's `gc`, exposed at run time (the flag only adds the function). */
function collectGarbage(): void {
  if (!collect) {
    v8.setFlagsFromString('--expose-gc');
    collect = vm.runInNewContext('gc') as () => void;
  }
  collect();
}

export class HeapRoom {
  private entries = 0;

  /** `what` names the stage and its input in the error: `layer foo.tar`, `the layout`. */
  constructor(private readonly what: string, private readonly share = HEAP_SHARE) {}

  /** One more entry made; every CHECK_EVERY, throws when the heap is nearly full. */
  tick(): void {
    if (++this.entries % CHECK_EVERY === 0) this.check();
  }

  check(): void {
    const full = () => {
      const s = v8.getHeapStatistics();
      const young = v8.getHeapSpaceStatistics().find((x) => x.space_name === 'new_space')?.space_used_size ?? 0;
      const limit = s.heap_size_limit - YOUNG_GENERATION_MAX;
      return s.used_heap_size - young > this.share * limit ? { used: s.used_heap_size - young, limit } : null;
    };
    // Garbage counts until it is collected: only a heap still full after a collection is.
    if (!full()) return;
    collectGarbage();
    const s = full();
    if (!s) return;
    const mib = (n: number) => Math.round(n / 1048576);
    throw new NydusError(`${this.what}: ${this.entries} entries fill ${mib(s.used)} MiB of the about ${mib(s.limit)} MiB heap node was given `
      + `(about 1 KiB an entry is kept in memory); stopped before node runs out of memory. For a larger heap: NODE_OPTIONS=--max-old-space-size=<MiB>`);
  }
}
