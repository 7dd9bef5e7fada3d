/**
 * Output files as nydus-image writes them (create's bootstrap and blob, merge's bootstrap, unpack's
 * tar, export's image): a regular file there is replaced once the new one is whole, so a failure
 * leaves it as it was (through a symlink, the file it names is: the link stays). What is no regular
 * file is written into: a FIFO (a reader taking the output as it comes, as nydus-snapshotter's
 * converter takes the blob), a device such as /dev/null, and /dev/stdout or any /dev, /proc link to an
 * open fd. Replacing those would put a regular file in place of the system's /dev/null or /dev/stdin.
 * Standard input is refused as an output. A failure to write is an error naming the output.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { NydusError } from '../../erofs/errors.ts';

/** Names of standard input: nydus-image reads `-` as /dev/stdin (create's source). */
const STDIN_NAMES = new Set(['/dev/stdin', '/proc/self/fd/0', '/dev/fd/0']);

/**
 * How `to` is written: `into` it (what is there is no regular file, or a /dev or /proc link such as
 * /dev/stdout), or by a new file put in place of `file` (`to` through its symlinks; `to` itself when
 * nothing is there). A directory and standard input are refused.
 */
export function outputTarget(to: string): { into: boolean; file: string; stat?: fs.Stats } {
  if (STDIN_NAMES.has(to)) throw new NydusError(`cannot write an output to ${to}: that is standard input (- names it)`);
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(to, { throwIfNoEntry: false });
  } catch (e) {
    throw outputError(to, e);
  }
  if (!st) return { into: false, file: to };
  if (st.isDirectory()) throw new NydusError(`cannot write ${to}: it is a directory`);
  const viaLink = fs.lstatSync(to).isSymbolicLink();
  if (!st.isFile() || (viaLink && /^\/(dev|proc)\//.test(to))) return { into: true, file: to, stat: st };
  return { into: false, file: viaLink ? fs.realpathSync(to) : to, stat: st };
}

/** A system error met writing `to`, as a NydusError naming it; anything else (an image's read errors are NydusErrors) as it is. */
export function outputError(to: string, e: unknown): unknown {
  return (e as NodeJS.ErrnoException).code && !(e instanceof NydusError) ? new NydusError(`cannot write ${to}: ${(e as Error).message}`) : e;
}

/**
 * Where an output is written: `path` is `to` itself to write into (`into`: a FIFO, a device, a /dev
 * link; outputTarget), or a new temporary file beside the file `to` names (the writer makes it, flag
 * 'wx'), which `commit` puts in place and `discard` removes.
 */
export function outputFile(to: string): { into: boolean; path: string; commit(): void; discard(): void } {
  const target = outputTarget(to);
  if (target.into) return { into: true, path: to, commit: () => undefined, discard: () => undefined };
  const dest = target.file;
  const tmp = `${dest}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  const discard = () => fs.rmSync(tmp, { force: true });
  return {
    into: false,
    path: tmp,
    commit: () => {
      try {
        fs.renameSync(tmp, dest);
      } catch (e) {
        discard();
        throw outputError(to, e);
      }
    },
    discard,
  };
}

/** An output (a bootstrap) written whole beside `to`, put there by `commit` (what is written into, outputFile, is written then). */
export function stageOutput(to: string, bytes: Uint8Array): { commit(): void; discard(): void } {
  const out = outputFile(to);
  const write = () => {
    try {
      fs.writeFileSync(out.path, bytes, { flag: out.into ? 'w' : 'wx' });
    } catch (e) {
      out.discard();
      throw outputError(to, e);
    }
  };
  if (!out.into) write();
  return {
    commit: () => {
      if (out.into) write();
      out.commit();
    },
    discard: out.discard,
  };
}

/** Writes an output file whole (stageOutput, then commit). */
export function writeOutput(to: string, bytes: Uint8Array): void {
  stageOutput(to, bytes).commit();
}

/** Puts a finished file of ours (`from`) at `to`: renamed over the file there, copied into what is written into (outputFile; and removed). */
export function placeOutput(from: string, to: string): void {
  const target = outputTarget(to);
  try {
    if (!target.into) {
      fs.renameSync(from, target.file);
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
