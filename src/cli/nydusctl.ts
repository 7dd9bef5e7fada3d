/** nydusctl: a client of nydusd's API socket, with nydus's command names (info, metrics) and ours (metrics files/pattern, blobs). */
import './stack-maps.ts';
import http from 'node:http';
import { NydusError } from '../../erofs/errors.ts';
import { cliParser, runMain } from './main.ts';

function get(sock: string, url: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: sock, method: 'GET', path: url, agent: false }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        const body = text ? JSON.parse(text) : null;
        if ((res.statusCode ?? 500) >= 300) reject(new NydusError(`${url}: ${res.statusCode} ${body?.message ?? text}`));
        else resolve(body);
      });
    });
    req.on('error', (e) => reject(new NydusError(`cannot reach nydusd at ${sock}: ${e.message}`)));
    req.end();
  });
}

function print(value: unknown, raw: boolean): void {
  process.stdout.write(raw ? JSON.stringify(value) + '\n' : JSON.stringify(value, null, 2) + '\n');
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
    .option('raw', { alias: 'r', type: 'boolean', default: false, describe: 'one line of JSON' })
    .command('info', 'the daemon: id, state, version, backends', (y) => y, async (a) => print(await get(a.sock, '/api/v1/daemon'), a.raw))
    .command('events', "the daemon's recent errors: backend reads that failed (nydus's /api/v1/daemon/events)", (y) => y, async (a) => print(await get(a.sock, '/api/v1/daemon/events'), a.raw))
    .command('metrics <type>', "metrics: backend, blobcache (--blob-id), fsstats, files (--latest), pattern (--paths); --id picks the image (nydus's ?id=)", (y) => y
      .positional('type', { type: 'string', choices: ['backend', 'blobcache', 'fsstats', 'files', 'pattern'], demandOption: true })
      .option('blob-id', { type: 'string', describe: 'blobcache: one blob (of the --id image, when given)' })
      .option('id', { type: 'string', describe: 'the image: an image id (PUT /api/v2/blobs) or a fanotify mountpoint; optional with one image' })
      .option('latest', { type: 'boolean', default: false, describe: 'files: the inodes read since the last --latest (nydus\'s latest read files)' })
      .option('paths', { type: 'boolean', default: false, describe: 'pattern: the paths alone, one per line in first-read order (stdin of nydus-image create --prefetch-policy fs)' }), async (a) => {
      const type = a.type as 'backend' | 'blobcache' | 'fsstats' | 'files' | 'pattern';
      const path = { backend: '/api/v1/metrics/backend', blobcache: '/api/v1/metrics/blobcache', fsstats: '/api/v1/metrics', files: '/api/v1/metrics/files', pattern: '/api/v1/metrics/pattern' }[type];
      const id = oneValue(a.id, '--id');
      const blobId = oneValue(a['blob-id'], '--blob-id');
      // nydus's metrics paths all take `id` (the image); a blob id only ours, of the blob cache.
      if (blobId !== undefined && type !== 'blobcache') throw new NydusError(`--blob-id goes with metrics blobcache: ${path} takes no blob id (--id picks the image)`);
      if (a.paths && type !== 'pattern') throw new NydusError('--paths goes with metrics pattern');
      if (a.latest && type !== 'files') throw new NydusError('--latest goes with metrics files');
      const query = new URLSearchParams();
      if (id !== undefined) query.set('id', id);
      if (blobId !== undefined) query.set('blob_id', blobId);
      if (a.latest) query.set('latest', 'true');
      const body = await get(a.sock, query.size ? `${path}?${query}` : path);
      if (a.paths) printPaths(body as Array<{ path: string }>);
      else print(body, a.raw);
    })
    .command('blobs', 'the images registered with PUT /api/v2/blobs', (y) => y, async (a) => print(await get(a.sock, '/api/v2/blobs'), a.raw))
    .help()
    .version('0.1.0')
    .parseAsync();
});
