/** nydusify: argument parsing only; the work is in src/convert. Flag names as nydusify's. */
import './stack-maps.ts';
import fs from 'node:fs';
import { NydusError } from '../../erofs/errors.ts';
import { convert } from '../convert/convert.ts';
import { checkConverted } from '../convert/check.ts';
import { LayerProgress } from '../convert/progress.ts';
import { makeLogger } from '../daemon/log.ts';
import { defaultPlatform, parsePlatform } from '../registry/index.ts';
import { cliParser, parseSize, runMain } from './main.ts';

/** nydusify flags nydus-ts does not implement: accepted by name only to be refused clearly. */
const CONVERT_UNSUPPORTED = [
  'source-archive', 'target-archive', 'source-backend-type', 'source-backend-config', 'target-suffix',
  'backend-type', 'backend-config', 'backend-config-file', 'backend-force-push', 'build-cache', 'build-cache-tag',
  'build-cache-version', 'build-cache-insecure', 'build-cache-max-records', 'chunk-dict', 'chunk-dict-insecure',
  'merge-platform', 'oci-ref', 'with-referrer', 'oci', 'reverse', 'docker-v2-format', 'fs-align-chunk',
  'backend-aligned-chunk', 'prefetch-dir', 'batch-size', 'nydus-image', 'push-retry-count', 'push-retry-delay',
] as const;
const CHECK_UNSUPPORTED = [
  'source-backend-type', 'source-backend-config', 'source-backend-config-file', 'target-backend-type',
  'target-backend-config', 'target-backend-config-file', 'multi-platform', 'nydus-image', 'nydusd',
] as const;

function refuseUnsupported(a: Record<string, unknown>, names: readonly string[], command: string): void {
  for (const n of names) {
    if (a[n] !== undefined) throw new NydusError(`--${n} is not supported by nydus-ts nydusify ${command} yet`);
  }
}

function logger(level: string) {
  return makeLogger(level);
}

await runMain('nydusify', async () => {
  await cliParser('nydusify')
    .demandCommand(1, 'a subcommand is needed')
    .option('log-level', { alias: 'l', type: 'string', default: 'info', choices: ['trace', 'debug', 'info', 'warn', 'error'], global: true })
    .command('convert', 'convert an OCI image in a registry to a Nydus image', (y) => {
      let yy = y
        .option('source', { type: 'string', demandOption: true, describe: 'source OCI image reference' })
        .option('target', { type: 'string', demandOption: true, describe: 'target Nydus image reference' })
        .option('source-insecure', { type: 'boolean', default: false, describe: 'skip TLS verification (or plain http) for the source registry' })
        .option('target-insecure', { type: 'boolean', default: false, describe: 'skip TLS verification (or plain http) for the target registry' })
        .option('plain-http', { type: 'boolean', default: false, describe: 'plain http to both registries' })
        .option('platform', { type: 'string', describe: 'os/arch[/variant] to convert (default linux/<this arch>)' })
        .option('all-platforms', { type: 'boolean', default: false, describe: 'convert every platform of an index' })
        .option('fs-version', { type: 'string', default: '6', describe: 'RAFS version: 6' })
        .option('compressor', { type: 'string', default: 'zstd', describe: 'blob compressor: zstd or none' })
        .option('fs-chunk-size', { alias: 'chunk-size', type: 'string', default: '0x100000', describe: 'chunk size, a power of two from 0x1000 to 0x1000000' })
        .option('work-dir', { type: 'string', default: './tmp', describe: 'where layers are built' })
        .option('prefetch-patterns', { type: 'boolean', default: false, describe: 'read paths to prefetch from stdin, one per line' })
        .option('output-json', { type: 'string', describe: 'write a JSON report of the conversion here' });
      for (const n of CONVERT_UNSUPPORTED) yy = yy.option(n, { type: 'string', hidden: true });
      return yy;
    }, async (a) => {
      refuseUnsupported(a, CONVERT_UNSUPPORTED, 'convert');
      if (a['fs-version'] !== '6') throw new NydusError(`unsupported fs version "${a['fs-version']}": nydus-ts writes RAFS v6 only`);
      if (a.compressor !== 'zstd' && a.compressor !== 'none') throw new NydusError(`unsupported compressor "${a.compressor}": zstd or none`);
      if (a['all-platforms'] && a.platform) throw new NydusError('--platform and --all-platforms exclude each other');
      const prefetchPaths = a['prefetch-patterns'] ? fs.readFileSync(0, 'utf8').split('\n').map((l) => l.trim()).filter(Boolean) : undefined;
      // On a terminal the per-layer display replaces the info logs.
      const progress = process.stderr.isTTY ? new LayerProgress(process.stderr) : undefined;
      const log = logger(progress && a['log-level'] === 'info' ? 'warn' : a['log-level']);
      const r = await convert({
        progress,
        source: a.source, target: a.target, sourceInsecure: a['source-insecure'], targetInsecure: a['target-insecure'],
        plainHttp: a['plain-http'], platform: a['all-platforms'] ? 'all' : a.platform ? parsePlatform(a.platform) : defaultPlatform(),
        workDir: a['work-dir'], prefetchPaths, fsVersion: '6', compressor: a.compressor,
        chunkSize: parseSize(a['fs-chunk-size'], 'chunk size'), log,
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
      for (const n of CHECK_UNSUPPORTED) yy = yy.option(n, { type: 'string', hidden: true });
      return yy;
    }, async (a) => {
      refuseUnsupported(a, CHECK_UNSUPPORTED, 'check');
      const r = await checkConverted({
        source: a.source, target: a.target, sourceInsecure: a['source-insecure'], targetInsecure: a['target-insecure'],
        plainHttp: a['plain-http'], platform: a.platform ? parsePlatform(a.platform) : defaultPlatform(),
        workDir: a['work-dir'], log: logger(a['log-level']),
      });
      for (const p of r.problems) process.stdout.write(`${p}\n`);
      if (r.problems.length > 0) throw new NydusError(`${a.target}: ${r.problems.length} problem(s) found`);
      process.stderr.write(`nydusify: ${a.target} is a well-formed Nydus image${a.source ? ` with the same file tree as ${a.source}` : ''}\n`);
    })
    .parseAsync();
});
