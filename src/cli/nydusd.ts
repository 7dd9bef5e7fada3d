/** nydusd: argument parsing only; see src/daemon/run.ts for the process models and the lifecycle. */
import { hideBin } from 'yargs/helpers';
import { NydusError } from '../../erofs/errors.ts';
import { type DaemonOptions, isWorker, runDaemon, runSupervisor, startupMode } from '../daemon/run.ts';
import { versionText } from '../version.ts';
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
    .option('id', { type: 'string', describe: 'daemon id (with --supervisor)' })
    .option('supervisor', { type: 'string', describe: "supervisor socket that keeps the daemon's state and /dev/cachefiles fd (with --id)" })
    .option('upgrade', { type: 'boolean', default: false, describe: 'start in INIT and wait for PUT /api/v1/daemon/fuse/takeover' })
    .option('failover-policy', { type: 'string', describe: 'resend: the kernel resends requests in flight after a takeover (the only policy of fscache mode)' })
    // nydusd flags of FUSE mode or features nydus-ts does not have yet: refused below, never ignored.
    .option('thread-num', { type: 'number', hidden: true })
    .option('config', { alias: 'C', type: 'string', hidden: true })
    .help()
    .version(versionText().trimEnd())
    .parseAsync();
  const unsupported: Record<string, string> = {
    'thread-num': 'it sets FUSE worker threads; in fscache mode use --fscache-threads',
    config: 'a daemon-wide configuration file is not supported yet; images and their backends come through PUT /api/v2/blobs',
  };
  for (const [flag, why] of Object.entries(unsupported)) {
    if (args[flag] !== undefined) throw new NydusError(`--${flag} is not supported: ${why}`);
  }
  if (!args.fscache) throw new NydusError('--fscache <dir> is required (only fscache mode is implemented)');
  if (!args.apisock) throw new NydusError('--apisock <path> is required');
  if (!(args['log-rotation-size'] >= 0)) throw new NydusError('--log-rotation-size must be a number of MiB >= 0');
  if ((args.id === undefined) !== (args.supervisor === undefined)) throw new NydusError('--id and --supervisor go together');
  if (args.upgrade && !args.supervisor) throw new NydusError('--upgrade needs --supervisor (and --id): the state and fd come from the supervisor');
  const policy = args['failover-policy'];
  if (policy !== undefined && policy !== 'resend') {
    throw new NydusError(`--failover-policy ${policy} is not supported: in fscache mode the kernel is always asked to resend requests in flight (resend)`);
  }
  const opts: DaemonOptions = {
    fscacheDir: args.fscache, tag: args['fscache-tag'], threads: args['fscache-threads'], apiSock: args.apisock,
    logLevel: args['log-level'], logFile: args['log-file'], logRotationSize: args['log-rotation-size'], id: args.id ?? '',
    supervisor: args.supervisor,
  };
  if (isWorker()) await runDaemon(opts, { kind: 'inherited' });
  else if (!opts.supervisor) await runSupervisor(opts, [process.argv[1], ...argv]);
  else await runDaemon(opts, args.upgrade ? { kind: 'takeover' } : await startupMode(opts));
});
