/** Shared entry for the CLIs: their argument parser; known errors become one clear line (run-main.ts). */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { NydusError } from '../../erofs/errors.ts';

export { runMain } from './run-main.ts';

/** The argument parser every command starts from: strict, and usage errors thrown as NydusErrors. */
export function cliParser(name: string, argv: string[] = hideBin(process.argv)) {
  return yargs(argv)
    .scriptName(name)
    .strict()
    .fail((msg, err) => {
      throw err ?? new NydusError(msg);
    });
}

/** Parses sizes given as decimal or 0x-prefixed hex, as nydus-image accepts them. */
export function parseSize(v: string | number, what: string): number {
  const n = typeof v === 'number' ? v : /^0x[0-9a-f]+$/i.test(v) ? parseInt(v, 16) : /^\d+$/.test(v) ? parseInt(v, 10) : NaN;
  if (!Number.isSafeInteger(n)) throw new NydusError(`invalid ${what} ${JSON.stringify(v)}`);
  return n;
}
