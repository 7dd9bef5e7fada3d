/** Shared entry for the CLIs: their argument parser; known errors become one clear line (run-main.ts). */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { NydusError } from '../../erofs/errors.ts';

export { runMain } from './run-main.ts';

/** The argument parser every command starts from: strict, and usage errors thrown as NydusErrors. */
/** `arrays`: keys that take several values by declaration (refuseRepeatedOptions); any other option given twice is refused. */
export function cliParser(name: string, argv: string[] = hideBin(process.argv), arrays: readonly string[] = []) {
  return yargs(argv)
    .scriptName(name)
    // -h as clap gives nydus's tools: nydus-snapshotter reads `nydus-image create -h` for the flags it may pass.
    // (Set once here: a later .help() would drop the alias.)
    .help()
    .alias('help', 'h')
    .strict()
    .check((a) => refuseRepeatedOptions(a, arrays), true)
    .fail((msg, err) => {
      throw err ?? new NydusError(msg);
    });
}

/**
 * yargs makes an option given twice an array, which code reading one value would take for a string:
 * refused here naming it (`arrays`: the keys that are arrays by declaration, a variadic positional).
 */
export function refuseRepeatedOptions(argv: Record<string, unknown>, arrays: readonly string[] = []): true {
  // yargs also files a key under its camel-case and kebab-case spellings (SOURCE as S-o-u-r-c-e).
  const norm = (k: string) => k.replace(/-/g, '').toLowerCase();
  const exempt = new Set(arrays.map(norm));
  // Longest first: an option's long name, not its one-letter alias, is the one told.
  for (const key of Object.keys(argv).sort((a, b) => b.length - a.length)) {
    if (key === '_' || key === '$0' || exempt.has(norm(key)) || !Array.isArray(argv[key])) continue;
    throw new NydusError(`--${key} is given more than once`);
  }
  return true;
}

/** Parses sizes given as decimal or 0x-prefixed hex, as nydus-image accepts them. */
export function parseSize(v: string | number, what: string): number {
  const n = typeof v === 'number' ? v : /^0x[0-9a-f]+$/i.test(v) ? parseInt(v, 16) : /^\d+$/.test(v) ? parseInt(v, 10) : NaN;
  if (!Number.isSafeInteger(n)) throw new NydusError(`invalid ${what} ${JSON.stringify(v)}`);
  return n;
}
