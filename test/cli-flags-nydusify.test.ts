/**
 * nydusify convert's flags as upstream nydusify takes them, without a registry: the registry is an
 * unreachable 127.0.0.1 port, so a run that got as far as the network fails with ECONNREFUSED naming
 * the source it was given, and one refused before any network work fails with its own one-line error.
 * Covered: upstream's environment variables (the command line winning), refused boolean flags set to
 * false, --platform's comma-separated list, and every value checked before the registry is contacted.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { repoRoot } from './helpers/cli.ts';
import { tmpDir } from './helpers/fixtures.ts';
import { freePort } from './helpers/registry.ts';

const work = tmpDir('nydusify-flags');
let host: string;

/** Every variable upstream nydusify convert reads, kept out of the runs unless a case sets it. */
const UPSTREAM_ENV = [
  'SOURCE', 'TARGET', 'SOURCE_ARCHIVE', 'TARGET_ARCHIVE', 'BACKEND_TYPE', 'BACKEND_CONFIG', 'BACKEND_CONFIG_FILE', 'TARGET_SUFFIX',
  'SOURCE_INSECURE', 'TARGET_INSECURE', 'BACKEND_FORCE_PUSH', 'BUILD_CACHE', 'BUILD_CACHE_TAG', 'BUILD_CACHE_VERSION',
  'BUILD_CACHE_INSECURE', 'BUILD_CACHE_MAX_RECORDS', 'CHUNK_DICT', 'CHUNK_DICT_INSECURE', 'MERGE_PLATFORM', 'OCI_REF',
  'WITH_REFERRER', 'OCI', 'REVERSE', 'FS_VERSION', 'FS_ALIGN_CHUNK', 'BACKEND_ALIGNED_CHUNK', 'PREFETCH_DIR', 'PREFETCH_PATTERNS',
  'COMPRESSOR', 'FS_CHUNK_SIZE', 'BATCH_SIZE', 'WORK_DIR', 'NYDUS_IMAGE', 'OUTPUT_JSON', 'PLAIN_HTTP', 'PUSH_RETRY_COUNT',
  'PUSH_RETRY_DELAY', 'LOG_LEVEL', 'MULTI_PLATFORM',
];

interface Run { status: number | null; stderr: string }

function nydusify(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const base = { ...process.env };
  for (const v of UPSTREAM_ENV) delete base[v];
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(repoRoot, 'bin', 'nydusify'), args, { cwd: work, env: { ...base, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stderr }));
  });
}

/** A run, and what a test says about it. */
interface Case {
  args: string[];
  env?: Record<string, string>;
  what?: string;
  repo?: string;
  pattern?: RegExp;
}

/** Runs the cases at once (each run that reaches the unreachable registry spends seconds in retries). */
function runAll<T extends Case>(cases: readonly T[]): Promise<Array<T & Run>> {
  return Promise.all(cases.map(async (c) => ({ ...c, ...(await nydusify(c.args, c.env)) })));
}

const src = () => `${host}/src/image:tag`;
const dst = () => `${host}/dst/image:nydus`;
/** The failure of a run that went as far as asking the (unreachable) registry for `repo`'s manifest. */
const reachedRegistry = (repo = 'src/image') => new RegExp(`^nydusify: error: registry ${host.replace(/\./g, '\\.')}/${repo}:\\w+: GET /v2/${repo}/manifests/\\w+: connect ECONNREFUSED`);

/** Failed with exactly `pattern` as its one line, before any registry was contacted. */
function refusedLocally(r: Run, pattern: RegExp, what: string): void {
  assert.equal(r.status, 1, `${what}: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /ECONNREFUSED|internal error|\n\s+at /, `${what}: no network work, no stack: ${r.stderr}`);
  assert.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line: ${r.stderr}`);
  assert.match(r.stderr, pattern, what);
}

function reached(r: Run, what = '', repo?: string): void {
  assert.equal(r.status, 1, `${what}: ${r.stderr}`);
  assert.match(r.stderr, reachedRegistry(repo), `${what}: accepted, it went on to the registry: ${r.stderr}`);
}

before(async () => {
  // A port nothing listens on.
  host = `127.0.0.1:${await freePort()}`;
});

after(() => fs.rmSync(work, { recursive: true, force: true }));

test('SOURCE, TARGET and the other upstream variables stand for their flags; the command line wins', async () => {
  const results = await runAll([
    { what: 'SOURCE and TARGET alone', args: ['convert'], env: { SOURCE: `${host}/env/image:tag`, TARGET: dst() }, repo: 'env/image' },
    { what: '--source over SOURCE', args: ['convert', '--source', `${host}/cli/image:tag`], env: { SOURCE: `${host}/env/image:tag`, TARGET: dst() }, repo: 'cli/image' },
    { what: 'a valid --fs-chunk-size over a bad FS_CHUNK_SIZE', args: ['convert', '--source', src(), '--target', dst(), '--fs-chunk-size', '0x10000'], env: { FS_CHUNK_SIZE: '3' } },
    { what: '--compressor over COMPRESSOR', args: ['convert', '--source', src(), '--target', dst(), '--compressor', 'none'], env: { COMPRESSOR: 'gzip' } },
    { what: 'good values from the environment', args: ['convert'], env: { SOURCE: src(), TARGET: dst(), FS_VERSION: '6', COMPRESSOR: 'none', FS_CHUNK_SIZE: '0x10000', PLAIN_HTTP: 'true', SOURCE_INSECURE: '1', WORK_DIR: path.join(work, 'wd'), LOG_LEVEL: 'debug' } },
    { what: 'an empty variable is unset', args: ['convert', '--source', src(), '--target', dst()], env: { BACKEND_TYPE: '', OCI: '', FS_CHUNK_SIZE: '' } },
  ]);
  for (const r of results) reached(r, r.what, r.repo);
  // WORK_DIR was made and removed again with the conversion, as nydusify removes a work dir it made;
  // that it is read at all: a file there is refused naming it.
  assert.ok(!fs.existsSync(path.join(work, 'wd')));
  fs.writeFileSync(path.join(work, 'wd-file'), '');
  refusedLocally(await nydusify(['convert', '--source', src(), '--target', dst()], { WORK_DIR: path.join(work, 'wd-file') }), /work directory .*wd-file: EEXIST/, 'WORK_DIR a file');

  const missing = await nydusify(['convert'], { SOURCE: src() });
  refusedLocally(missing, /Missing required argument: target/, 'TARGET unset');
});

test("a refused flag's environment variable is refused as the flag is, naming the variable; false booleans are accepted", async () => {
  const base = ['convert', '--source', src(), '--target', dst()];
  // [flag, its variable, the variable's value, the flag as given on the command line]
  const flags: Array<[string, string, string, string[]]> = [
    ['backend-type', 'BACKEND_TYPE', 'oss', ['--backend-type', 'oss']],
    ['backend-config', 'BACKEND_CONFIG', '{}', ['--backend-config', '{}']],
    ['oci', 'OCI', 'true', ['--oci']],
    ['merge-platform', 'MERGE_PLATFORM', '1', ['--merge-platform']],
    ['reverse', 'REVERSE', 'T', ['--reverse=T']],
    ['nydus-image', 'NYDUS_IMAGE', '/usr/bin/nydus-image', ['--nydus-image', '/usr/bin/nydus-image']],
    ['batch-size', 'BATCH_SIZE', '0x100000', ['--batch-size', '0x100000']],
    ['target-suffix', 'TARGET_SUFFIX', '-nydus', ['--target-suffix=-nydus']],
  ];
  const refused = await runAll(flags.flatMap(([name, variable, value, flag]) => {
    const message = `^nydusify: error: --${name} is not supported by nydus-ts nydusify convert yet`.replace(/[-/]/g, '\\$&');
    return [
      { what: `${variable}=${value}`, args: base, env: { [variable]: value }, pattern: new RegExp(`${message} \\(set by environment variable ${variable}\\)$`, 'm') },
      { what: flag.join(' '), args: [...base, ...flag], pattern: new RegExp(`${message}$`, 'm') },
    ];
  }));
  for (const r of refused) refusedLocally(r, r.pattern, r.what);

  const accepted = await runAll([
    { what: 'OCI=false', args: base, env: { OCI: 'false' } },
    { what: 'MERGE_PLATFORM=0 REVERSE=F', args: base, env: { MERGE_PLATFORM: '0', REVERSE: 'F' } },
    { what: 'OCI=1 under --oci=false', args: [...base, '--oci=false'], env: { OCI: '1' } },
  ]);
  for (const r of accepted) reached(r, r.what);

  const [oci, plainHttp] = await runAll([{ args: base, env: { OCI: 'maybe' } }, { args: base, env: { PLAIN_HTTP: 'yes' } }]);
  refusedLocally(oci, /invalid value "maybe" in environment variable OCI \(--oci\): true or false/, 'OCI=maybe');
  refusedLocally(plainHttp, /invalid value "yes" in environment variable PLAIN_HTTP \(--plain-http\): true or false/, 'PLAIN_HTTP=yes');
});

test('a refused boolean flag set to false is the default and accepted; set to true it is refused', async () => {
  const base = ['convert', '--source', src(), '--target', dst()];
  const accepted = await runAll([
    ['--oci=false'], ['--oci', 'false'], ['--no-oci'], ['--reverse=0'], ['--merge-platform=False'], ['--with-referrer=f'],
    ['--oci-ref=false', '--fs-align-chunk=false', '--backend-aligned-chunk=false', '--docker-v2-format=false'],
    ['--backend-force-push=false', '--build-cache-insecure=false', '--chunk-dict-insecure=false'],
  ].map((flags) => ({ args: [...base, ...flags] })));
  for (const r of accepted) reached(r, r.args.slice(base.length).join(' '));

  const refused = await runAll([
    ...[['--oci'], ['--oci=true'], ['--oci=TRUE'], ['--oci=1'], ['--oci', 'true'], ['--backend-force-push'], ['--fs-align-chunk=t']].map((flags) => {
      const name = flags[0].replace(/^--|=.*$/g, '');
      return { args: [...base, ...flags], pattern: new RegExp(`--${name} is not supported by nydus-ts nydusify convert yet$`, 'm') };
    }),
    { args: [...base, '--oci=maybe'], pattern: /invalid value "maybe" for --oci: true or false/ },
    // Not silently false either, for the flags nydus-ts implements.
    { args: [...base, '--plain-http=yes'], pattern: /invalid value "yes" for --plain-http: true or false/ },
    // check's refused boolean the same way.
    { args: ['check', '--target', `${host}/src/image:tag`, '--multi-platform'], pattern: /--multi-platform is not supported by nydus-ts nydusify check yet$/m },
  ]);
  for (const r of refused) refusedLocally(r, r.pattern!, r.args.join(' '));
  reached(await nydusify(['check', '--target', `${host}/src/image:tag`, '--multi-platform=false']), 'check --multi-platform=false');
});

test('every flag value is checked before the registry is contacted', async () => {
  const base = ['convert', '--source', src(), '--target', dst()];
  const cases: Array<{ args: string[]; env?: Record<string, string>; pattern: RegExp }> = [
    { args: ['--fs-chunk-size', '3'], pattern: /invalid chunk size "3" for --fs-chunk-size: a power of two from 0x1000 to 0x1000000$/m },
    { args: ['--chunk-size', '0x3000'], pattern: /invalid chunk size "0x3000" for --fs-chunk-size/ },
    { args: ['--fs-chunk-size', '0x800'], pattern: /invalid chunk size "0x800"/ },
    { args: ['--fs-chunk-size', '0x2000000'], pattern: /invalid chunk size "0x2000000"/ },
    { args: ['--fs-chunk-size', '1M'], pattern: /invalid chunk size "1M"/ },
    { args: [], env: { FS_CHUNK_SIZE: '3' }, pattern: /invalid chunk size "3" for --fs-chunk-size \(set by environment variable FS_CHUNK_SIZE\)/ },
    { args: ['--compressor', 'lz4'], pattern: /unsupported compressor "lz4": zstd, lz4_block or none$/m },
    { args: [], env: { COMPRESSOR: 'gzip' }, pattern: /unsupported compressor "gzip" \(set by environment variable COMPRESSOR\): zstd, lz4_block or none$/m },
    { args: ['--fs-version', '5'], pattern: /unsupported fs version "5": nydus-ts writes RAFS v6 only$/m },
    { args: [], env: { FS_VERSION: '5' }, pattern: /unsupported fs version "5" \(set by environment variable FS_VERSION\)/ },
    { args: ['--platform', 'linux'], pattern: /invalid --platform "linux": platform must be os\/arch or os\/arch\/variant, or a comma-separated list of them$/m },
    { args: ['--platform', 'linux/amd64,windows'], pattern: /invalid --platform "windows": platform must be os\/arch/ },
    { args: ['--platform', 'linux/amd64,linux/arm64', '--all-platforms'], pattern: /--platform and --all-platforms exclude each other$/m },
    { args: ['--output-json', path.join(work, 'no-such-dir', 'out.json')], pattern: /--output-json .*out\.json: directory .*no-such-dir does not exist$/m },
    { args: [], env: { OUTPUT_JSON: path.join(work, 'no-such-dir', 'out.json') }, pattern: /\(set by environment variable OUTPUT_JSON\): directory .*no-such-dir does not exist$/m },
  ];
  const results = await runAll(cases.map((c) => ({ ...c, args: [...base, ...c.args] })));
  for (const r of results) refusedLocally(r, r.pattern!, `${JSON.stringify(r.env ?? {})} ${r.args.slice(base.length).join(' ')}`);
});

test("--platform takes upstream's comma-separated list (never read as an image reference); check's takes one platform", async () => {
  const base = ['convert', '--source', src(), '--target', dst()];
  const [check, ...lists] = await runAll([
    { args: ['check', '--target', `${host}/src/image:tag`, '--platform', 'linux/amd64,linux/arm64'] },
    { args: [...base, '--platform', 'linux/amd64,linux/arm64'] },
    { args: [...base, '--platform', ' linux/amd64 , linux/arm64/v8 ,'] },
    { args: [...base, '--platform', 'linux/amd64,linux/arm64', '--all-platforms=false'] },
  ]);
  for (const r of lists) {
    assert.doesNotMatch(r.stderr, /invalid image reference/, r.stderr);
    reached(r, r.args.slice(base.length).join(' '));
  }
  refusedLocally(check, /--platform "linux\/amd64,linux\/arm64": nydusify check takes one platform, os\/arch\[\/variant\]$/m, 'check --platform list');
  assert.doesNotMatch(check.stderr, /invalid image reference/);
});

test('LOG_LEVEL and --log-level are read as nydusify\'s logrus reads them (any case, warning, fatal); a bad one is refused naming its variable', async () => {
  const [upper, warning, fatal, bad, badFlag] = await runAll([
    { args: ['convert', '--source', src(), '--target', dst()], env: { LOG_LEVEL: 'INFO' } },
    { args: ['convert', '--source', src(), '--target', dst()], env: { LOG_LEVEL: 'warning' } },
    { args: ['convert', '--source', src(), '--target', dst(), '--log-level', 'fatal'] },
    { args: ['convert', '--source', src(), '--target', dst()], env: { LOG_LEVEL: 'loud' } },
    { args: ['convert', '--source', src(), '--target', dst(), '--log-level', 'loud'] },
  ]);
  for (const r of [upper, warning, fatal]) assert.match(r.stderr, reachedRegistry(), 'accepted: it went on to the registry');
  refusedLocally(bad, /^nydusify: error: invalid log level "loud" \(set by environment variable LOG_LEVEL\): trace, debug, info, warn \(warning\), error \(fatal, panic\)/, 'LOG_LEVEL=loud');
  refusedLocally(badFlag, /^nydusify: error: invalid log level "loud": trace/, '--log-level loud');
});

test('nydusify check reads upstream\'s variables too (SOURCE, TARGET, ...); a refused flag\'s variable is refused naming it', async () => {
  const [byEnv, backend, multi] = await runAll([
    { args: ['check'], env: { SOURCE: src(), TARGET: dst(), WORK_DIR: path.join(work, 'check-wd') } },
    { args: ['check', '--target', dst()], env: { BACKEND_TYPE: 'oss' } },
    { args: ['check', '--target', dst()], env: { MULTI_PLATFORM: 'true' } },
  ]);
  assert.equal(byEnv.status, 1);
  assert.match(byEnv.stderr, /ECONNREFUSED/, `SOURCE and TARGET stood for the flags: it went on to the registry: ${byEnv.stderr}`);
  assert.doesNotMatch(byEnv.stderr, /Missing required argument/);
  refusedLocally(backend, /^nydusify: error: --source-backend-type is not supported by nydus-ts nydusify check yet \(set by environment variable BACKEND_TYPE\)/, 'BACKEND_TYPE=oss');
  refusedLocally(multi, /^nydusify: error: --multi-platform is not supported by nydus-ts nydusify check yet \(set by environment variable MULTI_PLATFORM\)/, 'MULTI_PLATFORM=true');
});
