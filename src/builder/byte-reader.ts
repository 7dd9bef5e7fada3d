/**
 * Exact-size reads over a stream of byte chunks (a file, stdin, a gunzip stream): what a tar parser
 * needs to walk a stream once, holding no more than the chunks it is reading from.
 */
export class ByteReader {
  private readonly pending: Buffer[] = [];
  private head = 0;
  private available = 0;
  private ended = false;
  /** Bytes consumed so far. */
  position = 0;
  private readonly it: AsyncIterator<Buffer>;

  constructor(source: AsyncIterable<Buffer>) {
    this.it = source[Symbol.asyncIterator]();
  }

  /** Buffers until `n` bytes are available or the stream ends; says whether they are. */
  private async fill(n: number): Promise<boolean> {
    while (this.available < n && !this.ended) {
      const r = await this.it.next();
      if (r.done) this.ended = true;
      else if (r.value.length) {
        this.pending.push(r.value);
        this.available += r.value.length;
      }
    }
    return this.available >= n;
  }

  /** Copies the next `n` bytes to `dst` at `dstOff` (n must be available); returns the bytes copied. */
  private take(n: number, dst: Buffer | null, dstOff: number): void {
    let done = 0;
    while (done < n) {
      const b = this.pending[0];
      const k = Math.min(n - done, b.length - this.head);
      if (dst) b.copy(dst, dstOff + done, this.head, this.head + k);
      done += k;
      this.head += k;
      if (this.head === b.length) {
        this.pending.shift();
        this.head = 0;
      }
    }
    this.available -= n;
    this.position += n;
  }

  /** Whether the stream has no byte left. */
  async atEnd(): Promise<boolean> {
    return !(await this.fill(1));
  }

  /** The next `n` bytes in a new buffer, or null if the stream ends first. */
  async read(n: number): Promise<Buffer | null> {
    if (!(await this.fill(n))) return null;
    // Not from the shared pool: a short-lived header would keep a pool slab, and with it every
    // long-lived name copied into the same slab, from being freed (or the other way round).
    const out = Buffer.allocUnsafeSlow(n);
    this.take(n, out, 0);
    return out;
  }

  /** Fills `dst[0, n)`; false if the stream ends first. */
  async readInto(dst: Buffer, n: number): Promise<boolean> {
    // Copy what is buffered, then refill in chunk-sized steps: never more than one source chunk
    // beyond `n` is held.
    let done = 0;
    while (done < n) {
      if (this.available === 0 && !(await this.fill(1))) return false;
      const k = Math.min(n - done, this.available);
      this.take(k, dst, done);
      done += k;
    }
    return true;
  }

  /** Drops the next `n` bytes; false if the stream ends first. */
  async skip(n: number): Promise<boolean> {
    let left = n;
    while (left > 0) {
      if (this.available === 0 && !(await this.fill(1))) return false;
      const k = Math.min(left, this.available);
      this.take(k, null, 0);
      left -= k;
    }
    return true;
  }

  /** Reads to the end of the stream (so a decompressor checks its trailer); returns the bytes dropped. */
  async drain(): Promise<number> {
    let n = 0;
    for (;;) {
      if (this.available === 0 && !(await this.fill(1))) return n;
      n += this.available;
      this.take(this.available, null, 0);
    }
  }
}
