/**
 * A CLI's body: known errors become one clear line and exit status 1 (or the error's own), never a stack trace. Apart from
 * main.ts so that a command can run without loading yargs (nydusd's fast start, quick-args.ts).
 */
import { NydusError } from '../../erofs/errors.ts';

/**
 * `endsWithItsReader`: a command whose output is what it is for (nydus-image, nydusctl, nydusify; not
 * the daemons, whose stdout is no reader's): when the reader of standard output goes away (`| head`),
 * it ends there, without a word (as a program SIGPIPE kills) and with status 0, the reader having
 * taken what it wanted. Node ignores SIGPIPE, so the write fails EPIPE instead: an unhandled 'error'
 * event, a stack trace. `nydusctl metrics backend -I` ends only so.
 */
export async function runMain(name: string, body: () => Promise<void> | void, opts: { endsWithItsReader?: boolean } = {}): Promise<void> {
  if (opts.endsWithItsReader) {
    process.stdout.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code !== 'EPIPE') throw e;
      process.exit(0);
    });
  }
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
    // An error may name its own status (merge's inconsistent layers: 2, as nydus-image's).
    const code = (err as { exitCode?: unknown })?.exitCode;
    process.exitCode = typeof code === 'number' && Number.isInteger(code) && code > 0 ? code : 1;
  }
}
