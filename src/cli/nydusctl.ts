/**
 * nydusctl: a client of nydusd's API socket, with nydus's commands (info, set, metrics, mount, umount)
 * and ours (events, metrics files/pattern, blobs).
 */
import './stack-maps.ts';
import fs from 'node:fs';
import http from 'node:http';
import { NydusError } from '../../erofs/errors.ts';
import { cliParser, runMain } from './main.ts';
import { versionText } from '../version.ts';
import { type Json, backendInterval, backendIntervalText, backendText, cacheText, daemonText, fsStatsText } from './nydusctl-text.ts';

/** One API request; resolves to the answer's JSON body (null when it has none), rejects naming the path on a status of 300 or more. */
function request(sock: string, method: string, url: string, body?: unknown): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: sock, method, path: url, agent: false, headers: body === undefined ? {} : { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        let answer: { message?: string } | null = null;
        try {
          answer = text ? JSON.parse(text) : null;
        } catch {
          // (Not JSON: the text itself is the message.)
        }
        if ((res.statusCode ?? 500) >= 300) reject(new NydusError(`${url}: ${res.statusCode} ${answer?.message ?? text}`));
        else resolve(answer);
      });
    });
    req.on('error', (e) => reject(new NydusError(`cannot reach nydusd at ${sock}: ${e.message}`)));
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

const get = (sock: string, url: string) => request(sock, 'GET', url);

/** `set` items as nydusd's PUT /api/v1/daemon names them (nydus's CONFIGURE_ITEMS_MAP). */
const SET_ITEMS: Record<string, string> = { 'log-level': 'log_level' };

/**
 * metrics backend --interval: every `seconds`, what the backend read since the last print, as upstream
 * nydusctl works it out (bandwidth, average read size, average latency): upstream's text, or with
 * --raw one JSON object a line.
 */
async function watchBackend(sock: string, url: string, seconds: number, raw: boolean): Promise<never> {
  let last = await get(sock, url) as Json;
  for (;;) {
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const now = await get(sock, url) as Json;
    if (raw) {
      const { block_latency_millis: _, ...figures } = backendInterval(last, now, seconds);
      print(figures, true);
    } else {
      process.stdout.write(backendIntervalText(last, now, seconds));
    }
    last = now;
  }
}

/** An answer: one line of JSON with --raw; else `text` (upstream nydusctl's text of it) where there is one, or indented JSON. */
function print(value: unknown, raw: boolean, text?: (v: Json) => string): void {
  if (raw) process.stdout.write(JSON.stringify(value) + '\n');
  else if (text && value && typeof value === 'object' && !Array.isArray(value)) process.stdout.write(text(value as Json));
  else process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

/** Paths one per line, as `--prefetch-policy fs` reads them; a path with a newline cannot be given so and is left out, said on stderr. */
function printPaths(files: Array<{ path: string }>): void {
  for (const { path } of files) {
    if (path.includes('\n')) process.stderr.write(`nydusctl: left out a path with a newline: ${JSON.stringify(path)}\n`);
    else process.stdout.write(`${path}\n`);
  }
}

/** A flag's one value: given twice (an array) or empty is refused, never sent as something else. */
function oneValue(v: unknown, flag: string): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new NydusError(`${flag} is given more than once`);
  if (v === '') throw new NydusError(`${flag} needs a value`);
  return v;
}

await runMain('nydusctl', async () => {
  await cliParser('nydusctl')
    .demandCommand(1, 'a command is needed')
    .option('sock', { alias: 'S', type: 'string', demandOption: true, describe: "nydusd's API socket" })
    .option('raw', { alias: 'r', type: 'boolean', default: false, describe: "one line of JSON (without it: upstream nydusctl's text for info and metrics backend, cache and fsstats; indented JSON for the rest)" })
    .command('info', 'the daemon: id, state, version, backends', (y) => y, async (a) => print(await get(a.sock, '/api/v1/daemon'), a.raw, daemonText))
    .command('events', "the daemon's recent errors: backend reads that failed (nydus's /api/v1/daemon/events)", (y) => y, async (a) => print(await get(a.sock, '/api/v1/daemon/events'), a.raw))
    .command('set <kind> <value>', "sets a daemon parameter: log-level (trace, debug, info, warn, error)", (y) => y
      .positional('kind', { type: 'string', choices: Object.keys(SET_ITEMS), demandOption: true })
      .positional('value', { type: 'string', demandOption: true }), async (a) => {
      await request(a.sock, 'PUT', '/api/v1/daemon', { [SET_ITEMS[a.kind as string]]: a.value });
    })
    .command('metrics <type>', "metrics: backend (--interval), blobcache or cache (--blob-id), fsstats, files (--latest), pattern (--paths); --id picks the image (nydus's ?id=)", (y) => y
      .positional('type', { type: 'string', choices: ['backend', 'blobcache', 'cache', 'fsstats', 'files', 'pattern'], demandOption: true })
      .option('interval', { alias: 'I', type: 'string', describe: 'backend: every this many seconds, what was read since the last print, until stopped (with --raw one JSON object a line)' })
      .option('blob-id', { type: 'string', describe: 'blobcache: one blob (of the --id image, when given)' })
      .option('id', { type: 'string', describe: 'the image: an image id (PUT /api/v2/blobs) or a fanotify mountpoint; optional with one image' })
      .option('latest', { type: 'boolean', default: false, describe: 'files: the inodes read since the last --latest (nydus\'s latest read files)' })
      .option('paths', { type: 'boolean', default: false, describe: 'pattern: the paths alone, one per line in first-read order (stdin of nydus-image create --prefetch-policy fs)' }), async (a) => {
      // (`cache` is upstream nydusctl's newer name of the blob cache's metrics.)
      const type = (a.type === 'cache' ? 'blobcache' : a.type) as 'backend' | 'blobcache' | 'fsstats' | 'files' | 'pattern';
      const path = { backend: '/api/v1/metrics/backend', blobcache: '/api/v1/metrics/blobcache', fsstats: '/api/v1/metrics', files: '/api/v1/metrics/files', pattern: '/api/v1/metrics/pattern' }[type];
      const id = oneValue(a.id, '--id');
      const blobId = oneValue(a['blob-id'], '--blob-id');
      // nydus's metrics paths all take `id` (the image); a blob id only ours, of the blob cache.
      if (blobId !== undefined && type !== 'blobcache') throw new NydusError(`--blob-id goes with metrics blobcache: ${path} takes no blob id (--id picks the image)`);
      if (a.paths && type !== 'pattern') throw new NydusError('--paths goes with metrics pattern');
      if (a.latest && type !== 'files') throw new NydusError('--latest goes with metrics files');
      const interval = oneValue(a.interval, '--interval');
      if (interval !== undefined && type !== 'backend') throw new NydusError('--interval goes with metrics backend');
      if (interval !== undefined && !/^[1-9][0-9]{0,5}$/.test(interval)) throw new NydusError(`--interval ${JSON.stringify(interval)} is not a whole number of seconds from 1 to 999999`);
      const query = new URLSearchParams();
      if (id !== undefined) query.set('id', id);
      if (blobId !== undefined) query.set('blob_id', blobId);
      if (a.latest) query.set('latest', 'true');
      const url = query.size ? `${path}?${query}` : path;
      if (interval !== undefined) await watchBackend(a.sock, url, Number(interval), a.raw);
      const body = await get(a.sock, url);
      if (a.paths) printPaths(body as Array<{ path: string }>);
      // (The blob cache's text needs nydus's fields: the answer for one blob is printed as JSON.)
      else if (type === 'blobcache') print(body, a.raw, blobId === undefined ? cacheText : undefined);
      else print(body, a.raw, type === 'backend' ? backendText : type === 'fsstats' ? fsStatsText : undefined);
    })
    .command('blobs', 'the images registered with PUT /api/v2/blobs', (y) => y, async (a) => print(await get(a.sock, '/api/v2/blobs'), a.raw))
    .command('mount', 'mounts an image (nydusd --fanotify): POST /api/v1/mount', (y) => y
      .option('source', { alias: 's', type: 'string', demandOption: true, describe: 'the bootstrap' })
      .option('config', { alias: 'c', type: 'string', demandOption: true, describe: "a file of the mount's nydusd config (JSON or TOML)" })
      .option('mountpoint', { alias: 'm', type: 'string', demandOption: true, describe: 'where to mount it' })
      .option('type', { alias: 't', type: 'string', demandOption: true, choices: ['rafs', 'passthrough_fs'], describe: "the file system's type (nydusd refuses passthrough_fs)" }), async (a) => {
      const mountpoint = oneValue(a.mountpoint, '--mountpoint')!;
      const configFile = oneValue(a.config, '--config')!;
      let config: string;
      try {
        config = fs.readFileSync(configFile, 'utf8');
      } catch (e) {
        throw new NydusError(`cannot read the mount config ${configFile}: ${(e as Error).message}`);
      }
      await request(a.sock, 'POST', `/api/v1/mount?${new URLSearchParams({ mountpoint })}`, { source: oneValue(a.source, '--source'), fs_type: a.type, config });
    })
    .command('umount', 'unmounts an image nydusd mounted: DELETE /api/v1/mount', (y) => y
      .option('mountpoint', { alias: 'm', type: 'string', demandOption: true, describe: 'the mountpoint' }), async (a) => {
      await request(a.sock, 'DELETE', `/api/v1/mount?${new URLSearchParams({ mountpoint: oneValue(a.mountpoint, '--mountpoint')! })}`);
    })
    // nydus's build-info block, as nydusd and nydus-image print it (upstream nydusctl's too).
    .version(versionText().trimEnd())
    .parseAsync();
}, { endsWithItsReader: true });
