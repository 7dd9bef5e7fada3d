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
    .option('log-rotation-size', { type: 'number', describe: 'accepted for compatibility (no rotation)' })
    .option('upgrade', { type: 'boolean', default: false, describe: 'accepted for compatibility (the supervisor restarts workers itself)' })
    .option('thread-num', { type: 'number', describe: 'accepted for compatibility (FUSE mode option)' })
    .option('id', { type: 'string', default: 'nydusd', describe: 'daemon id' })
    .option('supervisor', { type: 'string', default: '', describe: 'supervisor socket (accepted for compatibility)' })
    .option('config', { alias: 'C', type: 'string', describe: 'accepted for compatibility; images come through the API' })
    .help()
    .version('0.1.0')
    .parseAsync();
  if (!args.fscache) throw new NydusError('--fscache <dir> is required (only fscache mode is implemented)');
  if (!args.apisock) throw new NydusError('--apisock <path> is required');
  const opts: DaemonOptions = {
    fscacheDir: args.fscache, tag: args['fscache-tag'], threads: args['fscache-threads'], apiSock: args.apisock,
    logLevel: args['log-level'], logFile: args['log-file'], id: args.id, supervisor: args.supervisor,
  };
  if (isWorker()) await runWorker(opts);
  else await runSupervisor(opts, [process.argv[1], ...argv]);
});
