/** nydusd: argument parsing only; see src/daemon/run.ts for the supervisor and the worker. */
import { hideBin } from 'yargs/helpers';
import { NydusError } from '../../erofs/errors.ts';
import { type DaemonOptions, isWorker, runSupervisor, runWorker } from '../daemon/run.ts';
import { cliParser, runMain } from './main.ts';

await runMain('nydusd', async () => {
  const argv = hideBin(process.argv);
  const args = await cliParser('nydusd', argv)
    .command(['singleton', '$0'], 'serve images over fscache on-demand mode (the in-kernel EROFS path)')
    .option('fscache', { alias: 'F', type: 'string', describe: 'cachefiles work directory (not tmpfs)' })
    .option('fscache-tag', { type: 'string', default: 'nydus', describe: 'cachefiles tag' })
    .option('fscache-threads', { type: 'number', default: 4, describe: 'concurrent requests served' })
    .option('apisock', { alias: 'A', type: 'string', describe: 'HTTP API unix socket' })
    .option('log-level', { alias: 'l', type: 'string', default: 'info', choices: ['trace', 'debug', 'info', 'warn', 'error'] })
    .option('log-file', { alias: 'L', type: 'string', describe: 'write logs to this file instead of stderr' })
    .option('log-rotation-size', { type: 'number', default: 0, describe: 'rotate --log-file at this many MiB (0: never)' })
    .option('id', { type: 'string', default: 'nydusd', describe: 'daemon id' })
    // nydusd flags whose feature nydus-ts does not have yet: refused below, never silently ignored.
    .option('upgrade', { type: 'boolean', hidden: true })
    .option('supervisor', { type: 'string', hidden: true })
    .option('thread-num', { type: 'number', hidden: true })
    .option('config', { alias: 'C', type: 'string', hidden: true })
    .help()
    .version('0.1.0')
    .parseAsync();
  const unsupported: Record<string, string> = {
    upgrade: 'takeover from a running nydusd is not supported yet; nydusd restarts its own worker after a crash',
    supervisor: "handing the daemon's state to an external supervisor is not supported yet; nydusd keeps the /dev/cachefiles fd in its own supervisor process",
    'thread-num': 'it sets FUSE worker threads; in fscache mode use --fscache-threads',
    config: 'a daemon-wide configuration file is not supported yet; images and their backends come through PUT /api/v2/blobs',
  };
  for (const [flag, why] of Object.entries(unsupported)) {
    if (args[flag] !== undefined && args[flag] !== false && args[flag] !== '') throw new NydusError(`--${flag} is not supported: ${why}`);
  }
  if (!args.fscache) throw new NydusError('--fscache <dir> is required (only fscache mode is implemented)');
  if (!(args['log-rotation-size'] >= 0)) throw new NydusError('--log-rotation-size must be a number of MiB >= 0');
  if (!args.apisock) throw new NydusError('--apisock <path> is required');
  const opts: DaemonOptions = {
    fscacheDir: args.fscache, tag: args['fscache-tag'], threads: args['fscache-threads'], apiSock: args.apisock,
    logLevel: args['log-level'], logFile: args['log-file'], logRotationSize: args['log-rotation-size'], id: args.id,
  };
  if (isWorker()) await runWorker(opts);
  else await runSupervisor(opts, [process.argv[1], ...argv]);
});
