/**
 * The reading process of bounded-read.ts: `<out> manifest <root> <opts JSON>` writes the manifest's
 * entries as JSON to the file `out`, `<out> read <file>` the file's bytes. A failure is reported on
 * stderr as JSON ({code, message}), status 2.
 */
import fs from 'node:fs';
import { manifest } from './manifest.ts';

const [out, mode, target, opts] = process.argv.slice(2);
try {
  fs.writeFileSync(out, mode === 'manifest' ? JSON.stringify([...manifest(target, JSON.parse(opts))]) : fs.readFileSync(target));
} catch (e) {
  const err = e as NodeJS.ErrnoException;
  fs.writeSync(2, JSON.stringify({ code: err.code, message: err.message }));
  process.exitCode = 2;
}
