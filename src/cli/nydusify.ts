/** nydusify: argument parsing only; the work is in src/convert. Flag names as nydusify's. */
import './stack-maps.ts';
import fs from 'node:fs';
import path from 'node:path';
import { hideBin } from 'yargs/helpers';
import { NydusError } from '../../erofs/errors.ts';
import { validateChunkSize } from '../builder/create.ts';
import { convert } from '../convert/convert.ts';
import { checkConverted } from '../convert/check.ts';
import { LayerProgress } from '../convert/progress.ts';
import { makeLogger } from '../daemon/log.ts';
import { InvalidReferenceError, defaultPlatform, formatPlatform, parsePlatform, type Platform } from '../registry/index.ts';
import { cliParser, parseSize, runMain } from './main.ts';

type Kind = 'string' | 'boolean';

/**
 * nydusify flags nydus-ts does not implement, with their type in nydusify: accepted by name only to be
 * refused clearly. A boolean one set to false is nydusify's default, which is what nydus-ts does.
 * backend-type comes before source-backend-type: BACKEND_TYPE sets both, and is refused as the former.
 */
const CONVERT_UNSUPPORTED: Record<string, Kind> = {
  'source-archive': 'string', 'target-archive': 'string', 'backend-type': 'string', 'backend-config': 'string',
  'backend-config-file': 'string', 'source-backend-type': 'string', 'source-backend-config': 'string', 'target-suffix': 'string',
  'backend-force-push': 'boolean', 'build-cache': 'string', 'build-cache-tag': 'string', 'build-cache-version': 'string',
  'build-cache-insecure': 'boolean', 'build-cache-max-records': 'string', 'chunk-dict': 'string', 'chunk-dict-insecure': 'boolean',
  'merge-platform': 'boolean', 'oci-ref': 'boolean', 'with-referrer': 'boolean', oci: 'boolean', reverse: 'boolean',
  'docker-v2-format': 'boolean', 'fs-align-chunk': 'boolean', 'backend-aligned-chunk': 'boolean', 'prefetch-dir': 'string',
  'batch-size': 'string', 'nydus-image': 'string', 'push-retry-count': 'string', 'push-retry-delay': 'string',
};
const CHECK_UNSUPPORTED: Record<string, Kind> = {
  'source-backend-type': 'string', 'source-backend-config': 'string', 'source-backend-config-file': 'string',
  'target-backend-type': 'string', 'target-backend-config': 'string', 'target-backend-config-file': 'string',
  'multi-platform': 'boolean', 'nydus-image': 'string', 'nydusd': 'string',
};

/**
 * The environment variable nydusify's convert reads for each of its flags that nydus-ts has (urfave/cli
 * EnvVars), flag by flag: a flag on the command line wins over its variable. --platform,
 * --all-platforms and --docker-v2-format have none.
 */
const CONVERT_ENV: Record<string, string> = {
  'log-level': 'LOG_LEVEL', source: 'SOURCE', target: 'TARGET', 'source-insecure': 'SOURCE_INSECURE',
  'target-insecure': 'TARGET_INSECURE', 'plain-http': 'PLAIN_HTTP', 'fs-version': 'FS_VERSION', compressor: 'COMPRESSOR',
  'fs-chunk-size': 'FS_CHUNK_SIZE', 'work-dir': 'WORK_DIR', 'prefetch-patterns': 'PREFETCH_PATTERNS', 'output-json': 'OUTPUT_JSON',
  // Refused flags: their variables are refused as the flags are.
  'source-archive': 'SOURCE_ARCHIVE', 'target-archive': 'TARGET_ARCHIVE', 'backend-type': 'BACKEND_TYPE',
  'backend-config': 'BACKEND_CONFIG', 'backend-config-file': 'BACKEND_CONFIG_FILE', 'source-backend-type': 'BACKEND_TYPE',
  'source-backend-config': 'BACKEND_CONFIG', 'target-suffix': 'TARGET_SUFFIX', 'backend-force-push': 'BACKEND_FORCE_PUSH',
  'build-cache': 'BUILD_CACHE', 'build-cache-tag': 'BUILD_CACHE_TAG', 'build-cache-version': 'BUILD_CACHE_VERSION',
  'build-cache-insecure': 'BUILD_CACHE_INSECURE', 'build-cache-max-records': 'BUILD_CACHE_MAX_RECORDS',
  'chunk-dict': 'CHUNK_DICT', 'chunk-dict-insecure': 'CHUNK_DICT_INSECURE', 'merge-platform': 'MERGE_PLATFORM',
  'oci-ref': 'OCI_REF', 'with-referrer': 'WITH_REFERRER', oci: 'OCI', reverse: 'REVERSE', 'fs-align-chunk': 'FS_ALIGN_CHUNK',
  'backend-aligned-chunk': 'BACKEND_ALIGNED_CHUNK', 'prefetch-dir': 'PREFETCH_DIR', 'batch-size': 'BATCH_SIZE',
  'nydus-image': 'NYDUS_IMAGE', 'push-retry-count': 'PUSH_RETRY_COUNT', 'push-retry-delay': 'PUSH_RETRY_DELAY',
};

/** The same for check's flags (nydusify check reads these). */
const CHECK_ENV: Record<string, string> = {
  'log-level': 'LOG_LEVEL', source: 'SOURCE', target: 'TARGET', 'source-insecure': 'SOURCE_INSECURE', 'target-insecure': 'TARGET_INSECURE',
  'work-dir': 'WORK_DIR',
  // Refused flags: their variables are refused as the flags are.
  'source-backend-type': 'BACKEND_TYPE', 'source-backend-config': 'BACKEND_CONFIG', 'source-backend-config-file': 'BACKEND_CONFIG_FILE',
  'target-backend-type': 'BACKEND_TYPE', 'target-backend-config': 'BACKEND_CONFIG', 'target-backend-config-file': 'BACKEND_CONFIG_FILE',
  'multi-platform': 'MULTI_PLATFORM', 'nydus-image': 'NYDUS_IMAGE', nydusd: 'NYDUSD',
};

/** Boolean flags of both commands (no name is a boolean in one and a string in the other). */
const BOOLEANS = new Set([
  'source-insecure', 'target-insecure', 'plain-http', 'all-platforms', 'prefetch-patterns',
  ...Object.keys(CONVERT_UNSUPPORTED).filter((n) => CONVERT_UNSUPPORTED[n] === 'boolean'),
  ...Object.keys(CHECK_UNSUPPORTED).filter((n) => CHECK_UNSUPPORTED[n] === 'boolean'),
]);
const ALIASES: Record<string, string[]> = { 'fs-chunk-size': ['chunk-size'] };

/** A boolean as nydusify's Go flags and variables read it (strconv.ParseBool), case aside; undefined if none. */
function parseBool(v: string): boolean | undefined {
  if (/^(1|t|true)$/i.test(v)) return true;
  if (/^(0|f|false)$/i.test(v)) return false;
  return undefined;
}

/**
 * `--flag=value` of a boolean flag, made `--flag=true|false`: yargs reads any value but "true" as
 * false (--oci=TRUE would pass as off), nydusify reads 1, t, TRUE... as true and refuses the rest.
 */
function normalizeBooleanArgs(argv: readonly string[]): string[] {
  const end = argv.indexOf('--');
  return argv.map((t, i) => {
    const m = /^--([^=]+)=(.*)$/s.exec(t);
    if (!m || !BOOLEANS.has(m[1]) || (end >= 0 && i > end)) return t;
    const b = parseBool(m[2]);
    if (b === undefined) throw new NydusError(`invalid value "${m[2]}" for --${m[1]}: true or false`);
    return `--${m[1]}=${b}`;
  });
}

/** Whether `--name` (or an alias, or --no-name) is on the command line. */
function onCommandLine(argv: readonly string[], name: string): boolean {
  const end = argv.indexOf('--');
  const names = [name, ...(ALIASES[name] ?? [])];
  return (end >= 0 ? argv.slice(0, end) : argv).some((t) => names.some((n) => t === `--${n}` || t.startsWith(`--${n}=`) || t === `--no-${n}`));
}

/**
 * The flag values the environment gives, by flag name, for yargs' config (below the command line,
 * above the defaults), and the first unreadable one. A variable set empty is as unset (for a boolean
 * that is false: the default).
 */
function envValues(env: Record<string, string>): { values: Record<string, string | boolean>; error?: NydusError } {
  const values: Record<string, string | boolean> = {};
  let error: NydusError | undefined;
  for (const [name, variable] of Object.entries(env)) {
    const v = process.env[variable];
    if (v === undefined || v === '') continue;
    if (!BOOLEANS.has(name)) {
      values[name] = v;
      continue;
    }
    const b = parseBool(v);
    if (b === undefined) error ??= new NydusError(`invalid value "${v}" in environment variable ${variable} (--${name}): true or false`);
    else values[name] = b;
  }
  return { values, error };
}

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

function refuseUnsupported(a: Record<string, unknown>, flags: Record<string, Kind>, command: string, origin: (name: string) => string): void {
  for (const [n, kind] of Object.entries(flags)) {
    if (kind === 'boolean' ? a[n] === true : a[n] !== undefined) throw new NydusError(`--${n} is not supported by nydus-ts nydusify ${command} yet${origin(n)}`);
  }
}

/**
 * A log level as nydusify's logrus reads it (any case; warning, fatal and panic too), in our logger's
 * words; null when it is none.
 */
function logLevel(v: string): string | null {
  const l = v.toLowerCase();
  if (l === 'warning') return 'warn';
  if (l === 'fatal' || l === 'panic') return 'error';
  return ['trace', 'debug', 'info', 'warn', 'error'].includes(l) ? l : null;
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
  await cliParser('nydusify', argv)
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
        .option('compressor', { type: 'string', default: 'zstd', describe: 'blob compressor: zstd or none' })
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
      if (a['fs-version'] !== '6') throw new NydusError(`unsupported fs version "${a['fs-version']}"${envOrigin('fs-version')}: nydus-ts writes RAFS v6 only`);
      if (a.compressor !== 'zstd' && a.compressor !== 'none') throw new NydusError(`unsupported compressor "${a.compressor}"${envOrigin('compressor')}: zstd or none`);
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
      const prefetchPaths = a['prefetch-patterns'] ? fs.readFileSync(0, 'utf8').split('\n').map((l) => l.trim()).filter(Boolean) : undefined;
      // On a terminal the per-layer display replaces the info logs.
      const progress = process.stderr.isTTY ? new LayerProgress(process.stderr) : undefined;
      const log = logger(progress && logLevel(a['log-level']) === 'info' ? 'warn' : a['log-level'], envOrigin('log-level'));
      const r = await convert({
        progress,
        source: a.source, target: a.target, sourceInsecure: a['source-insecure'], targetInsecure: a['target-insecure'],
        plainHttp: a['plain-http'], platform: platforms,
        workDir: a['work-dir'], prefetchPaths, fsVersion: '6', compressor: a.compressor, chunkSize, log,
      });
      if (a['output-json']) fs.writeFileSync(a['output-json'], JSON.stringify(r, null, 2) + '\n');
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
});
