/**
 * Failures that repeat while their cause lasts (every write on a full disk, every read of a range
 * whose cache file cannot take it): the first is told at once, then at most one per interval, with
 * how many were held back since the last one told. A log line per failure filled the log (on the
 * same full disk, often) with thousands of lines a second and told nothing the first did not.
 */

/** How often a failure that keeps happening is told again. */
export const REPEAT_REPORT_MS = 60_000;

/** One kind of failure: whether each occurrence is told. */
export class RepeatedFailure {
  private toldAt: number | null = null;
  private held = 0;

  constructor(private readonly everyMs = REPEAT_REPORT_MS, private readonly now: () => number = Date.now) {}

  /** Another occurrence: null when it is not to be told, else how many were held back before it. */
  occur(): { held: number } | null {
    const now = this.now();
    if (this.toldAt !== null && now - this.toldAt < this.everyMs) {
      this.held++;
      return null;
    }
    const told = { held: this.held };
    this.toldAt = now;
    this.held = 0;
    return told;
  }

  /** The cause is gone: the next failure is told at once. True when one had been told (its end is news). */
  recover(): boolean {
    const was = this.toldAt !== null;
    this.toldAt = null;
    this.held = 0;
    return was;
  }
}

/**
 * RepeatedFailure per key (a file and an error message: each corrupt chunk is still told, but not
 * each read of it). At most `maxKeys` are remembered; past that the oldest is forgotten.
 */
export class RepeatedFailures {
  private readonly byKey = new Map<string, RepeatedFailure>();

  constructor(private readonly everyMs = REPEAT_REPORT_MS, private readonly maxKeys = 1024, private readonly now: () => number = Date.now) {}

  occur(key: string): { held: number } | null {
    let f = this.byKey.get(key);
    if (!f) {
      if (this.byKey.size >= this.maxKeys) this.byKey.delete(this.byKey.keys().next().value!);
      f = new RepeatedFailure(this.everyMs, this.now);
      this.byKey.set(key, f);
    }
    return f.occur();
  }
}

/** A log line's field for the failures held back before it (none when there were none). */
export const heldBack = (held: number): { heldBack?: number } => (held ? { heldBack: held } : {});
