/**
 * Output files as nydus-image writes them (create's bootstrap and blob, merge's bootstrap, unpack's
 * tar, export's image): a file there is replaced once the new one is whole, so a failure leaves it as
 * it was; a FIFO there (a reader taking the output as it comes, as nydus-snapshotter's converter takes
 * the blob) is written into. A failure to write is an error naming the output.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { NydusError } from '../../erofs/errors.ts';

export function isFifo(file: string): boolean {
  return fs.statSync(file, { throwIfNoEntry: false })?.isFIFO() ?? false;
}

/** A system error met writing `to`, as a NydusError naming it; anything else (an image's read errors are NydusErrors) as it is. */
export function outputError(to: string, e: unknown): unknown {
  return (e as NodeJS.ErrnoException).code && !(e instanceof NydusError) ? new NydusError(`cannot write ${to}: ${(e as Error).message}`) : e;
}

/**
 * Where an output is written: `path` is the FIFO at `to`, or a new temporary file beside it (the
 * writer makes it, flag 'wx'), which `commit` puts in place and `discard` removes.
 */
export function outputFile(to: string): { fifo: boolean; path: string; commit(): void; discard(): void } {
  if (isFifo(to)) return { fifo: true, path: to, commit: () => undefined, discard: () => undefined };
  const tmp = `${to}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  const discard = () => fs.rmSync(tmp, { force: true });
  return {
    fifo: false,
    path: tmp,
    commit: () => {
      try {
        fs.renameSync(tmp, to);
      } catch (e) {
        discard();
        throw outputError(to, e);
      }
    },
    discard,
  };
}

/** An output (a bootstrap) written whole beside `to`, put there by `commit` (a FIFO is written into then). */
export function stageOutput(to: string, bytes: Uint8Array): { commit(): void; discard(): void } {
  const out = outputFile(to);
  const write = () => {
    try {
      fs.writeFileSync(out.path, bytes, { flag: out.fifo ? 'w' : 'wx' });
    } catch (e) {
      out.discard();
      throw outputError(to, e);
    }
  };
  if (!out.fifo) write();
  return {
    commit: () => {
      if (out.fifo) write();
      out.commit();
    },
    discard: out.discard,
  };
}

/** Writes an output file whole (stageOutput, then commit). */
export function writeOutput(to: string, bytes: Uint8Array): void {
  stageOutput(to, bytes).commit();
}

/** Puts a finished file of ours (`from`) at `to`: renamed over a file there, copied into a FIFO (and removed). */
export function placeOutput(from: string, to: string): void {
  try {
    if (!isFifo(to)) {
      fs.renameSync(from, to);
      return;
    }
    const input = fs.openSync(from, 'r');
    try {
      const output = fs.openSync(to, 'w');
      try {
        const buf = Buffer.allocUnsafe(1 << 20);
        for (let n; (n = fs.readSync(input, buf, 0, buf.length, null)) > 0;) {
          for (let done = 0; done < n;) done += fs.writeSync(output, buf, done, n - done);
        }
      } finally {
        fs.closeSync(output);
      }
    } finally {
      fs.closeSync(input);
    }
    fs.rmSync(from, { force: true });
  } catch (e) {
    throw outputError(to, e);
  }
}
