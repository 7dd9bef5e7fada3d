/** nydusify: argument parsing only; the work is in src/convert. Flag names as nydusify's. */
import './stack-maps.ts';
import fs from 'node:fs';
import path from 'node:path';
import { hideBin } from 'yargs/helpers';
import { NydusError } from '../../erofs/errors.ts';
import { validateChunkSize } from '../builder/create.ts';
import { checkImageFormat, convert } from '../convert/convert.ts';
import { checkConverted } from '../convert/check.ts';
import { LayerProgress } from '../convert/progress.ts';
import { makeLogger } from '../daemon/log.ts';
import { InvalidReferenceError, defaultPlatform, formatPlatform, parsePlatform, type Platform } from '../registry/index.ts';
import { cliParser, parseSize, runMain } from './main.ts';
import { readPrefetchList } from './prefetch-stdin.ts';
import {
  CHECK_ENV, CHECK_UNSUPPORTED, CONVERT_ENV, CONVERT_UNSUPPORTED, envValues, logLevel, normalizeBooleanArgs, onCommandLine, refuseUnsupported,
} from './nydusify-flags.ts';

/** `--platform`: nydusify's comma-separated list (convert), or one platform (check). Empty: the default. */
function platformFlag(v: string | string[] | undefined, command: 'convert' | 'check'): Platform[] {
  if (Array.isArray(v)) throw new NydusError(`--platform is given more than once${command === 'convert' ? ': give one comma-separated list' : ''}`);
  const specs = (v ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  if (command === 'check' && specs.length > 1) throw new NydusError(`--platform "${v}": nydusify check takes one platform, os/arch[/variant]`);
  const seen = new Map<string, Platform>();
  for (const s of specs) {
    let p: Platform;
    try {
      p = parsePlatform(s);
    } catch (e) {
      if (!(e instanceof InvalidReferenceError)) throw e;
      throw new NydusError(`invalid --platform "${s}": platform must be os/arch or os/arch/variant${command === 'convert' ? ', or a comma-separated list of them' : ''}`);
    }
    seen.set(formatPlatform(p), p);
  }
  return seen.size > 0 ? [...seen.values()] : [defaultPlatform()];
}

function logger(level: string, origin = '') {
  const l = logLevel(level);
  if (!l) throw new NydusError(`invalid log level "${level}"${origin}: trace, debug, info, warn (warning), error (fatal, panic)`);
  return makeLogger(l);
}

await runMain('nydusify', async () => {
  const argv = normalizeBooleanArgs(hideBin(process.argv));
  // The running command's flag values from the environment (CONVERT_ENV or CHECK_ENV), and the first unreadable one.
  let cmdEnvMap: Record<string, string> = {};
  let cmdEnv: Record<string, string | boolean> = {};
  let cmdEnvError: NydusError | undefined;
  const fromEnv = (map: Record<string, string>) => {
    cmdEnvMap = map;
    ({ values: cmdEnv, error: cmdEnvError } = envValues(map));
    return cmdEnv;
  };
  /** Where a convert flag's value came from, when that was its environment variable. */
  const envOrigin = (n: string) => (cmdEnv[n] !== undefined && !onCommandLine(argv, n) ? ` (set by environment variable ${cmdEnvMap[n]})` : '');
  await cliParser('nydusify', argv, ['platform'])
    .demandCommand(1, 'a subcommand is needed')
    .option('log-level', { alias: 'l', type: 'string', default: 'info', global: true, describe: 'trace, debug, info, warn (warning), error (fatal, panic)' })
    .command('convert', 'convert an OCI image in a registry to a Nydus image', (y) => {
      let yy = y
        .option('source', { type: 'string', demandOption: true, describe: 'source OCI image reference' })
        .option('target', { type: 'string', demandOption: true, describe: 'target Nydus image reference' })
        .option('source-insecure', { type: 'boolean', default: false, describe: 'skip TLS verification (or plain http) for the source registry' })
        .option('target-insecure', { type: 'boolean', default: false, describe: 'skip TLS verification (or plain http) for the target registry' })
        .option('plain-http', { type: 'boolean', default: false, describe: 'plain http to both registries' })
        .option('platform', { type: 'string', describe: 'os/arch[/variant] to convert, or a comma-separated list of them (default linux/<this arch>)' })
        .option('all-platforms', { type: 'boolean', default: false, describe: 'convert every platform of an index' })
        .option('fs-version', { type: 'string', default: '6', describe: 'RAFS version: 6' })
        .option('compressor', { type: 'string', default: 'zstd', describe: 'blob compressor: zstd, lz4_block or none' })
        .option('fs-chunk-size', { alias: 'chunk-size', type: 'string', default: '0x100000', describe: 'chunk size, a power of two from 0x1000 to 0x1000000' })
        .option('work-dir', { type: 'string', default: './tmp', describe: 'where layers are built' })
        .option('prefetch-patterns', { type: 'boolean', default: false, describe: 'read paths to prefetch from stdin, one per line' })
        .option('output-json', { type: 'string', describe: 'write a JSON report of the conversion here' });
      for (const [n, type] of Object.entries(CONVERT_UNSUPPORTED)) yy = yy.option(n, { type, hidden: true });
      // The environment's values; an unreadable one is reported by the handler, before anything else.
      return yy.config(fromEnv(CONVERT_ENV))
        .epilogue("Flags can be set by nydusify's environment variables too (SOURCE, TARGET, PLAIN_HTTP, COMPRESSOR, FS_CHUNK_SIZE, WORK_DIR, LOG_LEVEL, ...; none for --platform and --all-platforms); a flag on the command line wins.");
    }, async (a) => {
      // Every value is checked here, before any registry is contacted.
      if (cmdEnvError) throw cmdEnvError;
      refuseUnsupported(a, CONVERT_UNSUPPORTED, 'convert', envOrigin);
      checkImageFormat(a['fs-version'], a.compressor, envOrigin);
      let chunkSize: number;
      try {
        chunkSize = parseSize(a['fs-chunk-size'], 'chunk size');
        validateChunkSize(chunkSize);
      } catch (e) {
        if (!(e instanceof NydusError)) throw e;
        throw new NydusError(`invalid chunk size "${a['fs-chunk-size']}" for --fs-chunk-size${envOrigin('fs-chunk-size')}: a power of two from 0x1000 to 0x1000000`);
      }
      if (a['all-platforms'] && a.platform) throw new NydusError('--platform and --all-platforms exclude each other');
      const platforms = a['all-platforms'] ? 'all' : platformFlag(a.platform, 'convert');
      if (a['output-json']) {
        const file = path.resolve(a['output-json']);
        const dir = path.dirname(file);
        if (!fs.statSync(dir, { throwIfNoEntry: false })?.isDirectory()) throw new NydusError(`--output-json ${a['output-json']}${envOrigin('output-json')}: directory ${dir} does not exist`);
        if (fs.statSync(file, { throwIfNoEntry: false })?.isDirectory()) throw new NydusError(`--output-json ${a['output-json']}${envOrigin('output-json')}: is a directory`);
      }
      // As nydusify: the paths from stdin, or the root when none are given (the whole image is the prefetch table's).
      const fromStdin = a['prefetch-patterns'] ? readPrefetchList() : null;
      const prefetchPaths = fromStdin?.patterns.length ? fromStdin.patterns : ['/'];
      // On a terminal the per-layer display replaces the info logs.
      const progress = process.stderr.isTTY ? new LayerProgress(process.stderr) : undefined;
      const log = logger(progress && logLevel(a['log-level']) === 'info' ? 'warn' : a['log-level'], envOrigin('log-level'));
      for (const w of fromStdin?.warnings ?? []) log.warn(w);
      const r = await convert({
        progress,
        source: a.source, target: a.target, sourceInsecure: a['source-insecure'], targetInsecure: a['target-insecure'],
        plainHttp: a['plain-http'], platform: platforms,
        workDir: a['work-dir'], prefetchPaths, fsVersion: '6', compressor: a.compressor, chunkSize, log,
      });
      // nydusify's document (acceleration-service's Metric) first, what was pushed after it.
      if (a['output-json']) {
        const { metric, ...pushed } = r;
        fs.writeFileSync(a['output-json'], JSON.stringify({ ...metric, ...pushed }, null, 2) + '\n');
      }
    })
    .command('check', 'check a Nydus image against the OCI image it was converted from', (y) => {
      let yy = y
        .option('source', { type: 'string', describe: 'source OCI image reference' })
        .option('target', { type: 'string', demandOption: true, describe: 'Nydus image reference' })
        .option('source-insecure', { type: 'boolean', default: false })
        .option('target-insecure', { type: 'boolean', default: false })
        .option('plain-http', { type: 'boolean', default: false })
        .option('platform', { type: 'string', describe: 'os/arch[/variant] to check (default linux/<this arch>)' })
        .option('work-dir', { type: 'string', default: './output', describe: 'where the images are pulled' });
      for (const [n, type] of Object.entries(CHECK_UNSUPPORTED)) yy = yy.option(n, { type, hidden: true });
      return yy.config(fromEnv(CHECK_ENV))
        .epilogue("Flags can be set by nydusify's environment variables too (SOURCE, TARGET, SOURCE_INSECURE, TARGET_INSECURE, WORK_DIR, LOG_LEVEL); a flag on the command line wins.");
    }, async (a) => {
      if (cmdEnvError) throw cmdEnvError;
      refuseUnsupported(a, CHECK_UNSUPPORTED, 'check', envOrigin);
      const [platform] = platformFlag(a.platform, 'check');
      const r = await checkConverted({
        source: a.source, target: a.target, sourceInsecure: a['source-insecure'], targetInsecure: a['target-insecure'],
        plainHttp: a['plain-http'], platform,
        workDir: a['work-dir'], log: logger(a['log-level'], envOrigin('log-level')),
      });
      for (const p of r.problems) process.stdout.write(`${p}\n`);
      if (r.problems.length > 0) throw new NydusError(`${a.target}: ${r.problems.length} problem(s) found`);
      process.stderr.write(`nydusify: ${a.target} is a well-formed Nydus image${a.source ? ` with the same file tree as ${a.source}` : ''}\n`);
    })
    .parseAsync();
}, { endsWithItsReader: true });
