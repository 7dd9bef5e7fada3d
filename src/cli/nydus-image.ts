/** nydus-image: argument parsing only; the work is in src/builder and src/image. */
import './stack-maps.ts';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NydusError } from '../../erofs/errors.ts';
import { createImage, createImageFromTar } from '../builder/create.ts';
import { mergeImages } from '../builder/merge.ts';
import { parseChunkDictArg } from '../builder/chunk-dict.ts';
import { WHITEOUT_SPECS } from '../builder/whiteout.ts';
import { readPrefetchList } from './prefetch-stdin.ts';
import { COMPRESSORS } from '../blob/compress.ts';
import { InconsistentFilesystemError } from '../builder/layer-image.ts';
import { isStdinSource } from '../builder/layer-stream.ts';
import { checkImage } from '../image/check.ts';
import { inspectImage } from '../image/inspect.ts';
import { exportBlock } from '../image/export-block.ts';
import { THREADS_MAX, parseThreadCount } from './thread-count.ts';
import { unpackToTar } from '../image/unpack.ts';
import { hideBin } from 'yargs/helpers';
import { BUILD_INFO, versionText } from '../version.ts';
import { cliParser, parseSize, runMain } from './main.ts';

/**
 * Progress messages (info: shown at --log-level info or below) and warnings (shown unless
 * --log-level error), to --log-file if given; errors and requested output are not log lines.
 */
const log = {
  level: 'info',
  file: undefined as string | undefined,
  info(msg: string): void {
    if (this.level !== 'warn' && this.level !== 'error') this.write('INFO', msg);
  },
  warn(msg: string): void {
    if (this.level !== 'error') this.write('WARN', msg);
  },
  write(level: string, msg: string): void {
    const line = `nydus-image: ${level === 'WARN' ? 'warning: ' : ''}${msg}\n`;
    if (!this.file) process.stderr.write(line);
    else {
      try {
        fs.appendFileSync(this.file, `${new Date().toISOString()} ${level} ${line}`);
      } catch (e) {
        throw new NydusError(`cannot write the log file ${this.file}: ${(e as Error).message}`);
      }
    }
  },
};

function writeJson(file: string | undefined, value: unknown): void {
  if (file) fs.writeFileSync(file, JSON.stringify(value, null, 2) + '\n');
}

/**
 * The -J report's fields as nydus-image writes them (its OutputSerializer: nydusify reads
 * fs_version and compressor from check's), before the command's own.
 */
function nydusReport(bootstrap: string, blobs: string[], compressor: string, ours: object): object {
  return {
    version: `${BUILD_INFO.package_ver}-${BUILD_INFO.git_commit}`, bootstrap, blobs, external_bootstrap: '', external_blobs: [],
    trace: {}, fs_version: '6', compressor, ...ours,
  };
}

/** check, inspect and unpack take the bootstrap as an argument or, deprecated in nydus, as -B: not both. */
function needBootstrap(a: { BOOTSTRAP?: string; bootstrap?: string }): string {
  if (a.BOOTSTRAP !== undefined && a.bootstrap !== undefined) throw new NydusError('give the bootstrap once: as the BOOTSTRAP argument or as -B/--bootstrap, not both');
  const b = a.BOOTSTRAP ?? a.bootstrap;
  if (!b) throw new NydusError('a bootstrap is needed (BOOTSTRAP argument or -B)');
  return b;
}

/** The prefetch list's paths the image does not hold: left out of its prefetch table, as nydus-image does. */
function warnPrefetchMissing(missing: string[]): void {
  for (const p of missing) log.warn(`prefetch path ${p} is not in the image; left out of the prefetch table`);
}

function oneOf<T extends string>(v: string, allowed: readonly T[], what: string): T {
  if (!allowed.includes(v as T)) throw new NydusError(`unsupported ${what} ${JSON.stringify(v)}; supported: ${allowed.join(', ')}`);
  return v as T;
}

/** --prefetch-policy: fs reads the paths from stdin, as nydus-image does. */
function prefetchPaths(policyArg: string): string[] | undefined {
  const policy = oneOf(policyArg, ['none', 'fs', 'blob'] as const, 'prefetch policy');
  if (policy === 'blob') throw new NydusError('--prefetch-policy blob is not supported by nydus-ts yet; use fs');
  if (policy !== 'fs') return undefined;
  // As nydus-image: the list names paths from the image root, each once.
  const list = readPrefetchList();
  for (const w of list.warnings) log.warn(w);
  return list.patterns;
}

function notImplemented(command: string): never {
  throw new NydusError(`nydus-image ${command} is not implemented by nydus-ts (it has create, merge, check, inspect, export and unpack)`);
}

/** merge's layers that cannot make one image exit 2, as nydus-image's (acceleration-service converts again without its cache on it). */
function exitingTwiceIfInconsistent<T>(merge: () => T): T {
  try {
    return merge();
  } catch (e) {
    if (e instanceof InconsistentFilesystemError) e.exitCode = 2;
    throw e;
  }
}

await runMain('nydus-image', async () => {
  // yargs reads a lone '-' as an option: pass stdin by its device name.
  await cliParser('nydus-image', hideBin(process.argv).map((arg) => (arg === '-' ? '/dev/stdin' : arg)), ['SOURCE'])
    .demandCommand(1, 'a subcommand is needed')
    .option('log-level', { alias: 'l', type: 'string', default: 'info', choices: ['trace', 'debug', 'info', 'warn', 'error'], global: true, describe: 'warn or error: no progress messages' })
    .option('log-file', { alias: 'L', type: 'string', global: true, describe: 'append progress messages to this file instead of stderr (errors stay on stderr)' })
    .middleware((a) => {
      log.level = a['log-level'];
      log.file = a['log-file'];
    })
    .command('create <source>', 'build a RAFS v6 image (bootstrap + blob) from a directory or a layer tar', (y) => y
      .positional('source', { type: 'string', demandOption: true, describe: 'source directory, or tar file (- for stdin)' })
      .option('type', { alias: ['t', 'source-type'], type: 'string', default: 'dir-rafs', describe: 'conversion type: dir-rafs, tar-rafs, targz-rafs (both tar types take plain or gzip tar)' })
      .option('bootstrap', { alias: 'B', type: 'string', describe: 'output bootstrap file (needed unless --blob-inline-meta)' })
      .option('blob-dir', { alias: 'D', type: 'string', describe: 'directory for the blob, named by its sha256' })
      .option('blob', { alias: 'b', type: 'string', describe: 'output blob file' })
      .option('chunk-size', { type: 'string', default: '0x100000', describe: 'chunk size, power of two in [0x1000, 0x1000000]' })
      .option('compressor', { alias: 'c', type: 'string', default: 'zstd', describe: 'chunk compressor: none, zstd, lz4_block' })
      .option('digester', { alias: 'd', type: 'string', default: 'blake3', describe: 'chunk digester: blake3, sha256' })
      .option('fs-version', { alias: 'v', type: 'string', default: '6', describe: 'RAFS version (6)' })
      .option('output-json', { alias: 'J', type: 'string', describe: 'write a JSON report here' })
      .option('prefetch-policy', { alias: 'P', type: 'string', default: 'none', describe: 'fs: read the paths to prefetch from stdin, one per line' })
      .option('whiteout-spec', { alias: 'W', type: 'string', default: 'oci', describe: 'whiteout specification (oci, overlayfs, none): a directory source leaves its whiteouts out; a tar layer keeps them' })
      .option('repeatable', { type: 'boolean', default: false, describe: 'no file owners recorded (every file is root\'s), as nydus-image; the output is reproducible either way' })
      // Hidden: the snapshotter's converter passes --batch-size only where `create -h` names it.
      .option('batch-size', { type: 'string', hidden: true, describe: 'batched small chunks: only 0 (none, the default)' })
      .option('disable-check', { type: 'boolean', default: false, describe: 'no check of the image after the build (nydus-ts checks none; its readers validate every image)' })
      // Declared (a boolean) so that it is refused by name: unknown, it took the source as its value.
      // The snapshotter's converter passes it whenever encryption is asked for.
      .option('encrypt', { alias: 'E', type: 'boolean', default: false, describe: 'encrypted blobs: not supported by nydus-ts (refused)' })
      .option('aligned-chunk', { type: 'boolean', default: false, describe: 'always on for RAFS v6' })
      .option('blob-inline-meta', { type: 'boolean', default: false, describe: 'put the bootstrap into the blob, after the blob meta, each part followed by a tar header (nydus-snapshotter\'s converter)' })
      .option('inline-bootstrap', { type: 'boolean', default: false, describe: 'the same as --blob-inline-meta (older nydus-image)' })
      .option('features', { type: 'string', describe: 'comma-separated: blob-toc (a TOC of the blob\'s parts at its end, and the chunk digests)' })
      .option('parent-bootstrap', { type: 'string', describe: 'build on top of this bootstrap: the output is the parent with the source laid over it, chunks the parent has are not stored again' })
      .option('chunk-dict', { type: 'string', describe: 'bootstrap=<file>: chunks of this image are referenced, not stored again' }), async (a) => {
      if (a.encrypt) throw new NydusError('--encrypt: encrypted images are not supported by nydus-ts');
      if (a['batch-size'] !== undefined && parseSize(a['batch-size'], '--batch-size') !== 0) throw new NydusError(`--batch-size ${a['batch-size']}: batched chunks are not supported by nydus-ts; 0 (the default) is`);
      const type = oneOf(a.type, ['dir-rafs', 'directory', 'tar-rafs', 'targz-rafs'] as const, 'conversion type');
      oneOf(a['fs-version'], ['6'] as const, 'fs version');
      const whiteoutSpec = oneOf(a['whiteout-spec'], WHITEOUT_SPECS, 'whiteout spec');
      const inlineMeta = a['blob-inline-meta'] || a['inline-bootstrap'];
      const features = (a.features ?? '').split(',').map((f) => f.trim()).filter(Boolean);
      for (const f of features) oneOf(f, ['blob-toc'] as const, 'feature');
      if (!a.bootstrap && !inlineMeta) throw new NydusError('--bootstrap/-B is needed (or --blob-inline-meta: the bootstrap goes into the blob)');
      if (inlineMeta && !a.blob && !a['blob-dir']) throw new NydusError('--blob-inline-meta puts the bootstrap into the blob: give --blob or --blob-dir');
      const isTar = type === 'tar-rafs' || type === 'targz-rafs';
      if (a['prefetch-policy'] === 'fs' && isStdinSource(a.source)) {
        throw new NydusError('--prefetch-policy fs reads stdin, which cannot also carry the layer tar; give the tar as a file');
      }
      const build = isTar ? createImageFromTar : createImage;
      const r = await build({
        prefetchPaths: prefetchPaths(a['prefetch-policy']), repeatable: a.repeatable, whiteoutSpec,
        parentBootstrap: a['parent-bootstrap'], chunkDict: a['chunk-dict'] === undefined ? undefined : parseChunkDictArg(a['chunk-dict']),
        source: a.source, bootstrap: a.bootstrap, blobDir: a['blob-dir'], blobPath: a.blob, blobInlineMeta: inlineMeta, blobToc: features.includes('blob-toc'),
        chunkSize: parseSize(a['chunk-size'], 'chunk size'),
        compressor: oneOf(a.compressor, COMPRESSORS, 'compressor'),
        digester: oneOf(a.digester, ['blake3', 'sha256'] as const, 'digester'),
      });
      warnPrefetchMissing(r.prefetchMissing);
      writeJson(a['output-json'], nydusReport(r.bootstrap ?? '', r.blobIds, a.compressor, { blob_path: r.blob?.path ?? null, inodes: r.inodes, ...r.stats }));
      log.info(`built ${r.bootstrap ?? `the bootstrap into blob ${r.blob?.path}`} (${r.inodes} inodes, ${r.stats.uniqueChunks}/${r.stats.chunks} unique chunks)${r.blob ? `, blob ${r.blob.blobId}` : ''}`);
    })
    .command('merge <SOURCE..>', 'merge layer bootstraps (lowest first) into one bootstrap with whiteouts applied', (y) => y
      .positional('SOURCE', { type: 'string', array: true, demandOption: true, describe: 'layer bootstraps, lowest layer first' })
      .option('bootstrap', { alias: 'B', type: 'string', demandOption: true, describe: 'output bootstrap' })
      .option('parent-bootstrap', { type: 'string', describe: 'flattened bootstrap the layers go on top of' })
      .option('chunk-dict', { type: 'string', describe: 'bootstrap=<file>: the chunk dictionary the layers were built with' })
      .option('prefetch-policy', { type: 'string', default: 'none', describe: 'fs: read the paths to prefetch from stdin, one per line' })
      .option('output-json', { alias: 'J', type: 'string', describe: 'write a JSON report here' })
      .option('blob-digests', { type: 'string', describe: 'comma-separated sha256 hex per layer: the id of its blob in the merged image' })
      .option('original-blob-ids', { type: 'string', describe: 'comma-separated blob id per layer' })
      .option('blob-sizes', { type: 'string', describe: 'comma-separated blob size per layer' })
      .option('whiteout-spec', { alias: 'W', type: 'string', default: 'oci', describe: 'whiteouts to apply: oci (as nydus merge), overlayfs, none' })
      .option('blob-toc-digests', { type: 'string', describe: 'comma-separated sha256 hex per layer: the digest of its blob TOC' })
      .option('blob-toc-sizes', { type: 'string', describe: 'comma-separated size per layer of its blob TOC' })
      .option('blob-dir', { alias: 'D', type: 'string', describe: 'not supported yet: give --bootstrap' })
      .option('config', { alias: 'C', type: 'string', describe: 'not supported yet' }), (a) => {
      for (const unsupported of ['blob-dir', 'config'] as const) {
        if (a[unsupported] !== undefined) throw new NydusError(`--${unsupported} is not supported by nydus-ts merge yet`);
      }
      const list = (v: string | undefined) => v?.split(',').map((x) => x.trim());
      const r = exitingTwiceIfInconsistent(() => mergeImages({
        sources: a.SOURCE, bootstrap: a.bootstrap, parentBootstrap: a['parent-bootstrap'],
        chunkDict: a['chunk-dict'] === undefined ? undefined : parseChunkDictArg(a['chunk-dict']),
        blobDigests: list(a['blob-digests']), originalBlobIds: list(a['original-blob-ids']),
        blobSizes: list(a['blob-sizes'])?.map((v) => parseSize(v, 'number in --blob-sizes')),
        blobTocDigests: list(a['blob-toc-digests']),
        blobTocSizes: list(a['blob-toc-sizes'])?.map((v) => parseSize(v, 'number in --blob-toc-sizes')),
        whiteoutSpec: oneOf(a['whiteout-spec'], WHITEOUT_SPECS, 'whiteout spec'),
        prefetchPaths: prefetchPaths(a['prefetch-policy']),
      }));
      warnPrefetchMissing(r.prefetchMissing);
      writeJson(a['output-json'], nydusReport(r.bootstrap, r.blobs, r.config.compressor, { inodes: r.inodes }));
      log.info(`merged ${a.SOURCE.length} layers into ${r.bootstrap} (${r.inodes} inodes, ${r.blobs.length} blobs)`);
    })
    .command('check [BOOTSTRAP]', 'validate a bootstrap (and its blobs with -D/--blob)', (y) => y
      .positional('BOOTSTRAP', { type: 'string' })
      .option('bootstrap', { alias: 'B', type: 'string' })
      .option('blob-dir', { alias: 'D', type: 'string' })
      .option('blob', { alias: 'b', type: 'string' })
      .option('output-json', { alias: 'J', type: 'string' })
      .option('verbose', { alias: 'v', type: 'boolean', default: false }), (a) => {
      const bootstrap = needBootstrap(a);
      const r = checkImage({ bootstrap, blobDir: a['blob-dir'], blobPaths: a.blob ? [a.blob] : undefined });
      const { compressor, blobs, ...ours } = r;
      writeJson(a['output-json'], nydusReport(bootstrap, blobs, compressor, ours));
      // nydus-image's own report, then ours.
      process.stdout.write(`RAFS filesystem metadata is valid, referenced data blobs: \n${r.blobLines.map((l) => `\t ${l}\n`).join('')}`);
      if (a.verbose) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      log.info(`${bootstrap} is a valid RAFS v6 image (${r.inodes} inodes, ${r.chunks} chunks${r.holes ? `, ${r.holes} holes` : ''}${r.verifiedChunks ? `, ${r.verifiedChunks} verified` : ''})`);
    })
    .command('inspect [BOOTSTRAP]', 'print superblock, blobs and chunk information as JSON', (y) => y
      .positional('BOOTSTRAP', { type: 'string' })
      .option('bootstrap', { alias: 'B', type: 'string' })
      .option('blob-dir', { alias: 'D', type: 'string', describe: "the image's blobs: every blob it names must be there" })
      .option('request', { alias: 'R', type: 'string', default: 'stats', describe: 'stats | blobs | prefetch | chunks | "stat <path>"' }), (a) => {
      const where = a['blob-dir'] === undefined ? undefined : { blobDir: a['blob-dir'] };
      process.stdout.write(JSON.stringify(inspectImage(needBootstrap(a), a.request, where), null, 2) + '\n');
    })
    .command('export', 'export an image as a single EROFS block image', (y) => y
      .option('block', { type: 'boolean', default: false, describe: 'export to a raw block image' })
      .option('bootstrap', { alias: 'B', type: 'string', demandOption: true })
      .option('blob-dir', { alias: ['D', 'localfs-dir'], type: 'string' })
      .option('blob', { alias: 'b', type: 'string' })
      .option('threads', { type: 'string', default: '4', describe: `chunks decompressed, verified and written at once (1-${THREADS_MAX})` })
      .option('output', { alias: 'O', type: 'string', demandOption: true }), async (a) => {
      if (!a.block) throw new NydusError('only --block export is supported');
      const threads = parseThreadCount(a.threads);
      if (threads === null) throw new NydusError(`invalid --threads ${JSON.stringify(a.threads)}: a whole number from 1 to ${THREADS_MAX}`);
      // The jobs run on libuv's pool: bin/run.sh sizes it from --threads as node starts.
      const r = await exportBlock({ bootstrap: a.bootstrap, blobDir: a['blob-dir'], blobPaths: a.blob ? [a.blob] : undefined, output: a.output, threads });
      log.info(`exported ${a.output} (${r.blocks} blocks)`);
    })
    .command('unpack [BOOTSTRAP]', 'write the tree of an image as a tar file', (y) => y
      .positional('BOOTSTRAP', { type: 'string' })
      .option('bootstrap', { alias: 'B', type: 'string' })
      .option('blob', { alias: 'b', type: 'string' })
      .option('blob-dir', { alias: 'D', type: 'string' })
      .option('backend-type', { type: 'string', describe: 'read the blobs from this backend (localfs, registry, http-proxy), fetched whole first' })
      .option('backend-config', { type: 'string', describe: "the backend's config as JSON (nydusd's backend_config)" })
      .option('backend-config-file', { type: 'string', describe: "a file holding the backend's config" })
      .option('output', { alias: 'o', type: 'string', demandOption: true }), async (a) => {
      const bootstrap = needBootstrap(a);
      const backendType = a['backend-type'];
      if (backendType === undefined && (a['backend-config'] !== undefined || a['backend-config-file'] !== undefined)) throw new NydusError('--backend-config and --backend-config-file go with --backend-type');
      let blobDir = a['blob-dir'];
      let fetched: string | null = null;
      if (backendType !== undefined) {
        if (a['blob-dir'] !== undefined || a.blob !== undefined) throw new NydusError('--backend-type reads the blobs from the backend: give no --blob-dir or --blob with it');
        const { backendFromFlags, fetchBlobs } = await import('../image/backend-blobs.ts');
        const backend = backendFromFlags(backendType, a['backend-config'], a['backend-config-file']);
        fetched = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-image-unpack-'));
        blobDir = fetched;
        try {
          await fetchBlobs(bootstrap, backend, fetched);
        } catch (e) {
          fs.rmSync(fetched, { recursive: true, force: true });
          throw e;
        }
      }
      try {
        const r = unpackToTar({ bootstrap, blobDir, blobPaths: a.blob ? [a.blob] : undefined, output: a.output });
        log.info(`wrote ${r.entries} entries to ${a.output}${r.skipped.length ? ` (skipped ${r.skipped.length} sockets)` : ''}`);
      } finally {
        if (fetched) fs.rmSync(fetched, { recursive: true, force: true });
      }
    })
    // nydus-image's other subcommands, refused by name whatever they are given (hidden from help).
    .command('compact [SOURCE..]', false, (y) => y.strict(false), () => notImplemented('compact'))
    .command('chunkdict [SOURCE..]', false, (y) => y.strict(false), () => notImplemented('chunkdict'))
    .command('optimize [SOURCE..]', false, (y) => y.strict(false), () => notImplemented('optimize'))
    .command('stat [SOURCE..]', false, (y) => y.strict(false), () => notImplemented('stat'))
    .version(versionText().trimEnd())
    .alias('version', 'V')
    .parseAsync();
}, { endsWithItsReader: true });
