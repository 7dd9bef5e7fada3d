/**
 * nydusify's flags as its Go CLI (urfave/cli) reads them, beyond what yargs does itself: the flags
 * nydus-ts refuses by name, the environment variable of each flag (the command line wins), booleans
 * as strconv.ParseBool reads them, and log levels as logrus names them.
 */
import { NydusError } from '../../erofs/errors.ts';

export type Kind = 'string' | 'boolean';

/**
 * nydusify flags nydus-ts does not implement, with their type in nydusify: accepted by name only to be
 * refused clearly. A boolean one set to false is nydusify's default, which is what nydus-ts does.
 * backend-type comes before source-backend-type: BACKEND_TYPE sets both, and is refused as the former.
 */
export const CONVERT_UNSUPPORTED: Record<string, Kind> = {
  'source-archive': 'string', 'target-archive': 'string', 'backend-type': 'string', 'backend-config': 'string',
  'backend-config-file': 'string', 'source-backend-type': 'string', 'source-backend-config': 'string', 'target-suffix': 'string',
  'backend-force-push': 'boolean', 'build-cache': 'string', 'build-cache-tag': 'string', 'build-cache-version': 'string',
  'build-cache-insecure': 'boolean', 'build-cache-max-records': 'string', 'chunk-dict': 'string', 'chunk-dict-insecure': 'boolean',
  'merge-platform': 'boolean', 'oci-ref': 'boolean', 'with-referrer': 'boolean', oci: 'boolean', reverse: 'boolean',
  'docker-v2-format': 'boolean', 'fs-align-chunk': 'boolean', 'backend-aligned-chunk': 'boolean', 'prefetch-dir': 'string',
  'batch-size': 'string', 'nydus-image': 'string', 'push-retry-count': 'string', 'push-retry-delay': 'string',
};
export const CHECK_UNSUPPORTED: Record<string, Kind> = {
  'source-backend-type': 'string', 'source-backend-config': 'string', 'source-backend-config-file': 'string',
  'target-backend-type': 'string', 'target-backend-config': 'string', 'target-backend-config-file': 'string',
  'multi-platform': 'boolean', 'nydus-image': 'string', 'nydusd': 'string',
};

/**
 * The environment variable nydusify's convert reads for each of its flags that nydus-ts has (urfave/cli
 * EnvVars), flag by flag: a flag on the command line wins over its variable. --platform,
 * --all-platforms and --docker-v2-format have none.
 */
export const CONVERT_ENV: Record<string, string> = {
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
export const CHECK_ENV: Record<string, string> = {
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
export function normalizeBooleanArgs(argv: readonly string[]): string[] {
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
export function onCommandLine(argv: readonly string[], name: string): boolean {
  const end = argv.indexOf('--');
  const names = [name, ...(ALIASES[name] ?? [])];
  return (end >= 0 ? argv.slice(0, end) : argv).some((t) => names.some((n) => t === `--${n}` || t.startsWith(`--${n}=`) || t === `--no-${n}`));
}

/**
 * The flag values the environment gives, by flag name, for yargs' config (below the command line,
 * above the defaults), and the first unreadable one. A variable set empty is as unset (for a boolean
 * that is false: the default).
 */
export function envValues(env: Record<string, string>): { values: Record<string, string | boolean>; error?: NydusError } {
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

export function refuseUnsupported(a: Record<string, unknown>, flags: Record<string, Kind>, command: string, origin: (name: string) => string): void {
  for (const [n, kind] of Object.entries(flags)) {
    if (kind === 'boolean' ? a[n] === true : a[n] !== undefined) throw new NydusError(`--${n} is not supported by nydus-ts nydusify ${command} yet${origin(n)}`);
  }
}

/**
 * A log level as nydusify's logrus reads it (any case; warning, fatal and panic too), in our logger's
 * words; null when it is none.
 */
export function logLevel(v: string): string | null {
  const l = v.toLowerCase();
  if (l === 'warning') return 'warn';
  if (l === 'fatal' || l === 'panic') return 'error';
  return ['trace', 'debug', 'info', 'warn', 'error'].includes(l) ? l : null;
}
