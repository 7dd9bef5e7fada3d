/**
 * A CLI's body: known errors become one clear line and exit status 1, never a stack trace. Apart from
 * main.ts so that a command can run without loading yargs (nydusd's fast start, quick-args.ts).
 */
import { NydusError } from '../../erofs/errors.ts';

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
