/** nydusd: argument parsing only; see src/daemon/run.ts for the process models and the lifecycle. */
import './stack-maps.ts';
import { NydusError } from '../../erofs/errors.ts';
import fs from 'node:fs';
import path from 'node:path';
// The supervisor loads its own code alone (run.ts): the daemon's (serve.ts, run-fanotify.ts) is loaded
// by the process that serves, so a supervisor spawns its worker sooner.
import { type DaemonOptions, WORKER_EXIT_FATAL, adoptedWorker, inheritedFanotifyHold, inheritedHold, isWorker, openFanotifyGroup, readyForParkedConnections, runSupervisor } from '../daemon/run.ts';
import type { FanotifyDaemonOptions } from '../daemon/run-fanotify.ts';
import { versionText } from '../version.ts';
import { quickParse } from './quick-args.ts';
import { applyRlimitNofile, parseRlimitNofile } from '../daemon/rlimit.ts';
import { runMain } from './run-main.ts';
import { THREADS_MAX, parseThreadCount } from './thread-count.ts';

const OPTIONS = {
  fscache: { alias: 'F', type: 'string', describe: 'cachefiles work directory (not tmpfs)' },
  // No defaults here (they are applied below): whether these were given at all is what --fanotify judges.
  'fscache-tag': { type: 'string', describe: 'cachefiles tag (default nydus)' },
  'fscache-threads': { type: 'string', describe: 'concurrent requests served, 1 to 1024 (default 4)' },
  apisock: { alias: 'A', type: 'string', describe: 'HTTP API unix socket' },
  'log-level': { alias: 'l', type: 'string', default: 'info', choices: ['trace', 'debug', 'info', 'warn', 'error'] },
  'log-file': { alias: 'L', type: 'string', describe: 'write logs to this file instead of stderr (.log is added to a name without an extension, as nydusd adds it)' },
  'log-rotation-size': { type: 'number', default: 0, describe: 'rotate --log-file at this many MiB (0: never)' },
  id: { type: 'string', describe: 'daemon id (with --supervisor)' },
  supervisor: { type: 'string', describe: "supervisor socket that keeps the daemon's state and /dev/cachefiles fd (with --id)" },
  upgrade: { type: 'boolean', default: false, describe: 'start in INIT and wait for PUT /api/v1/daemon/fuse/takeover' },
  'failover-policy': { type: 'string', describe: 'resend: the kernel resends requests in flight after a takeover (the only policy of fscache mode)' },
  fanotify: { type: 'string', describe: 'serve images through fanotify pre-content events (Linux >= 6.14) instead of fscache; the daemon keeps its state in this directory (not tmpfs)' },
  config: { alias: 'C', type: 'string', describe: "with --fanotify: nydusd's FUSE-mode config file (backend, cache work_dir, prefetch)" },
  bootstrap: { alias: 'B', type: 'string', describe: 'with --fanotify: the image bootstrap to mount at --mountpoint' },
  mountpoint: { alias: 'M', type: 'string', describe: 'with --fanotify: where to mount --bootstrap (an EROFS file-backed mount)' },
  'thread-num': { type: 'string', describe: 'with --fanotify: events served at once, 1 to 1024 (default 4)' },
  'rlimit-nofile': { type: 'string', describe: 'raise the open files limit to this (default 1000000, at most fs.file-max less 16384; 0 leaves it)' },
} as const;

const DEFAULT_THREADS = 4;

/** A thread count flag (parseThreadCount), DEFAULT_THREADS when not given. */
function threadCount(v: unknown, flag: string): number {
  if (v === undefined) return DEFAULT_THREADS;
  if (typeof v !== 'string') throw new NydusError(`--${flag} is given more than once`);
  const n = parseThreadCount(v);
  if (n === null) throw new NydusError(`--${flag} ${JSON.stringify(v)} is not a valid thread number: a whole number from 1 to ${THREADS_MAX} is needed`);
  return n;
}

/** yargs, loaded only for what the fast path declines (help, version, anything it must judge). */
async function parseWithYargs(argv: string[]) {
  const { cliParser } = await import('./main.ts');
  return cliParser('nydusd', argv)
    .command(['singleton', '$0'], 'serve images over fscache on-demand mode (the in-kernel EROFS path)')
    .options(OPTIONS)
    .version(versionText().trimEnd())
    .parseAsync();
}

/** nydusd's subcommands of the other service modes (nydus's main.rs), which nydus-ts does not serve. */
const OTHER_MODES: Record<string, string> = {
  fuse: 'FUSE mode', virtiofs: 'virtio-fs mode',
};

await runMain('nydusd', async () => {
  const argv = process.argv.slice(2);
  const mode = OTHER_MODES[argv[0]];
  if (mode) {
    // nydus-snapshotter runs `nydusd fuse ...` for its default fs_driver "fusedev".
    throw new NydusError(`nydusd ${argv[0]}: ${mode} is not part of nydus-ts, which serves the in-kernel EROFS path: `
      + 'run `nydusd singleton --fscache <dir>` (nydus-snapshotter: fs_driver = "fscache") or `nydusd --fanotify <dir>` with --config/--bootstrap/--mountpoint');
  }
  const args = quickParse(argv, OPTIONS, ['singleton']) ?? await parseWithYargs(argv);
  if (args.fanotify !== undefined) {
    await fanotifyMode(args, argv);
    return;
  }
  const unsupported: Partial<Record<keyof typeof OPTIONS, string>> = {
    'thread-num': 'it sets FUSE worker threads; in fscache mode use --fscache-threads',
    config: 'in fscache mode images and their backends come through PUT /api/v2/blobs (the config file goes with --fanotify)',
    bootstrap: 'in fscache mode images come through PUT /api/v2/blobs (--bootstrap goes with --fanotify)',
    mountpoint: 'in fscache mode the kernel mounts with `mount -t erofs -o fsid=<id>` (--mountpoint goes with --fanotify)',
  };
  for (const [flag, why] of Object.entries(unsupported) as [keyof typeof OPTIONS, string][]) {
    if (args[flag] !== undefined) throw new NydusError(`--${flag} is not supported: ${why}`);
  }
  if (!args.fscache) throw new NydusError('--fscache <dir> or --fanotify <dir> is required');
  if (!args.apisock) throw new NydusError('--apisock <path> is required');
  const threads = threadCount(args['fscache-threads'], 'fscache-threads');
  if (!(args['log-rotation-size'] >= 0)) throw new NydusError('--log-rotation-size must be a number of MiB >= 0');
  if ((args.id === undefined) !== (args.supervisor === undefined)) throw new NydusError('--id and --supervisor go together');
  if (args.upgrade && !args.supervisor) throw new NydusError('--upgrade needs --supervisor (and --id): the state and fd come from the supervisor');
  const policy = args['failover-policy'];
  if (policy !== undefined && policy !== 'resend') {
    throw new NydusError(`--failover-policy ${policy} is not supported: in fscache mode the kernel is always asked to resend requests in flight (resend)`);
  }
  applyRlimitNofile(parseRlimitNofile(args['rlimit-nofile']));
  const opts: DaemonOptions = {
    fscacheDir: args.fscache, tag: args['fscache-tag'] ?? 'nydus', threads, apiSock: args.apisock,
    logLevel: args['log-level'], logFile: logFileName(args['log-file']), logRotationSize: args['log-rotation-size'], id: args.id ?? '',
    supervisor: args.supervisor,
  };
  if (!isWorker() && !opts.supervisor) {
    const adopted = adoptedWorker();
    await runSupervisor(opts, [process.argv[1], ...argv], adopted ? inheritedHold() : undefined, adopted ?? undefined);
    return;
  }
  const { runDaemon, startupMode } = await import('../daemon/serve.ts');
  if (isWorker()) await runFscacheWorker(opts, () => runDaemon(opts, { kind: 'inherited' }));
  else await runDaemon(opts, args.upgrade ? { kind: 'takeover' } : await startupMode(opts));
});

/**
 * The fscache mode worker: a failure to start reaches the log file (the supervisor's stderr may be
 * nowhere); a state database it cannot use ends the daemon (WORKER_EXIT_FATAL: a new worker would
 * meet it again).
 */
async function runFscacheWorker(opts: DaemonOptions, run: () => Promise<void>): Promise<void> {
  // No fd numbers to hold first (fanotify's predecessor events): idle API connections may come now.
  readyForParkedConnections();
  try {
    await run();
  } catch (e) {
    const { StateDbError } = await import('../daemon/state.ts');
    const fatal = e instanceof StateDbError;
    try {
      const { makeLogger } = await import('../daemon/log.ts');
      makeLogger(opts.logLevel, opts.logFile, opts.logRotationSize).fatal({ err: (e as Error).message }, fatal ? 'worker cannot start with its state; the daemon stops' : 'worker cannot start');
    } catch { /* stderr says it */ }
    if (!fatal) throw e;
    process.stderr.write(`nydusd: error: ${(e as Error).message}\n`);
    process.exit(WORKER_EXIT_FATAL);
  }
}

/** A path of the command line, from the caller's working directory ('' stays '': refused as missing, never the cwd). */
function cliPath(v: unknown): string {
  return typeof v === 'string' && v ? path.resolve(v) : '';
}

type Args = Record<string, unknown> & { 'log-level': string; 'log-rotation-size': number };

/** --log-file as nydusd names the file: `.log` added to a name without an extension (flexi_logger's default suffix). */
function logFileName(file: string | undefined): string | undefined {
  return file && !path.extname(file) ? `${file}.log` : file;
}

/** `nydusd --fanotify <dir> [--config <json> --bootstrap <file> --mountpoint <dir>] [--apisock <sock>]`. */
async function fanotifyMode(args: Args, argv: string[]): Promise<void> {
  if (!args.fanotify) throw new NydusError('--fanotify needs the daemon\'s directory: --fanotify <dir>');
  // Paths of the command line are the caller's, taken from its working directory (the API's must be absolute).
  const dir = path.resolve(args.fanotify as string);
  for (const flag of ['fscache', 'supervisor', 'id', 'upgrade', 'failover-policy']) {
    if (args[flag] !== undefined && args[flag] !== false) throw new NydusError(`--${flag} does not go with --fanotify`);
  }
  // fscache mode's flags, each with what --fanotify has instead (they have no defaults: given is given).
  const instead: Record<string, string> = {
    'fscache-threads': 'use --thread-num for the events served at once',
    'fscache-tag': 'no cachefiles tag is bound; the daemon is told apart by its --fanotify directory (and --apisock)',
  };
  for (const [flag, why] of Object.entries(instead)) {
    if (args[flag] !== undefined) throw new NydusError(`--${flag} does not go with --fanotify: ${why}`);
  }
  const given = (['config', 'bootstrap', 'mountpoint'] as const).filter((f) => args[f] !== undefined);
  if (given.length !== 0 && given.length !== 3) throw new NydusError('--config, --bootstrap and --mountpoint go together');
  if (!given.length && !args.apisock) throw new NydusError('--fanotify needs --bootstrap/--mountpoint/--config, or --apisock to mount through the API');
  const threads = threadCount(args['thread-num'], 'thread-num');
  let config: unknown;
  if (args.config !== undefined) {
    const { entryBodyFromFsConfig, parseBlobCacheEntry, parseConfigText, withImagePullAuth } = await import('../daemon/config.ts');
    let text: string;
    try {
      text = fs.readFileSync(args.config as string, 'utf8');
    } catch (e) {
      throw new NydusError(`--config ${args.config}: ${(e as Error).message}`);
    }
    config = withImagePullAuth(parseConfigText(text, `--config ${args.config}`));
    // Read as the mount will read it, before anything starts: a bad field is one line now, not a worker's failure.
    try {
      parseBlobCacheEntry(entryBodyFromFsConfig(config, args.bootstrap as string, 'fanotify'), 'fs-config');
    } catch (e) {
      throw new NydusError(`--config ${args.config}: ${(e as Error).message}`);
    }
  }
  applyRlimitNofile(parseRlimitNofile(args['rlimit-nofile']));
  const opts: FanotifyDaemonOptions = {
    dir, apiSock: args.apisock as string | undefined, threads, logLevel: args['log-level'], logFile: logFileName(args['log-file'] as string | undefined),
    logRotationSize: args['log-rotation-size'],
    initial: given.length ? { mountpoint: cliPath(args.mountpoint), bootstrap: cliPath(args.bootstrap), config } : undefined,
  };
  if (isWorker()) {
    await (await import('../daemon/run-fanotify.ts')).runFanotifyWorker(opts);
    return;
  }
  const adopted = adoptedWorker();
  await runSupervisor(opts, [process.argv[1], ...argv], adopted ? inheritedFanotifyHold(dir) : openFanotifyGroup(dir), adopted ?? undefined);
}
