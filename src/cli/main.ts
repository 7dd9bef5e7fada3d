/** Shared entry for the CLIs: known errors become one clear line and exit status 1, never a stack trace. */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { NydusError } from '../../erofs/errors.ts';

/** The argument parser every command starts from: strict, and usage errors thrown as NydusErrors. */
export function cliParser(name: string, argv: string[] = hideBin(process.argv)) {
  return yargs(argv)
    .scriptName(name)
    .strict()
    .fail((msg, err) => {
      throw err ?? new NydusError(msg);
    });
}

export async function runMain(name: string, body: () => Promise<void> | void): Promise<void> {
  try {
    await body();
  } catch (e) {
    const err = e as Error;
    if (err instanceof NydusError) {
      process.stderr.write(`${name}: error: ${err.message}\n`);
    } else {
      process.stderr.write(`${name}: internal error: ${err?.message ?? String(e)}\n`);
      if (process.env.NYDUS_DEBUG) process.stderr.write(`${err?.stack}\n`);
    }
    process.exitCode = 1;
  }
}

/** Parses sizes given as decimal or 0x-prefixed hex, as nydus-image accepts them. */
export function parseSize(v: string | number, what: string): number {
  const n = typeof v === 'number' ? v : /^0x[0-9a-f]+$/i.test(v) ? parseInt(v, 16) : /^\d+$/.test(v) ? parseInt(v, 10) : NaN;
  if (!Number.isSafeInteger(n)) throw new NydusError(`invalid ${what} ${JSON.stringify(v)}`);
  return n;
}
