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

await runMain('nydusctl', async () => {
  await cliParser('nydusctl')
    .demandCommand(1, 'a command is needed')
    .option('sock', { alias: 'S', type: 'string', demandOption: true, describe: "nydusd's API socket" })
    .option('raw', { alias: 'r', type: 'boolean', default: false, describe: 'one line of JSON' })
    .command('info', 'the daemon: id, state, version, backends', (y) => y, async (a) => print(await get(a.sock, '/api/v1/daemon'), a.raw))
    .command('metrics <type>', 'metrics: backend, blobcache (--blob-id), fsstats, files (--latest), pattern (--paths); --id picks the image', (y) => y
      .positional('type', { type: 'string', choices: ['backend', 'blobcache', 'fsstats', 'files', 'pattern'], demandOption: true })
      .option('blob-id', { type: 'string', describe: 'blob of the blobcache metrics' })
      .option('id', { type: 'string', describe: 'image id (PUT /api/v2/blobs) or fanotify mountpoint of fsstats, files and pattern; optional with one image' })
      .option('latest', { type: 'boolean', default: false, describe: 'files: the inodes read since the last --latest (nydus\'s latest read files)' })
      .option('paths', { type: 'boolean', default: false, describe: 'pattern: the paths alone, one per line in first-read order (stdin of nydus-image create --prefetch-policy fs)' }), async (a) => {
      if (a.type === 'blobcache' && !a['blob-id']) throw new NydusError('metrics blobcache needs --blob-id');
      if (a.paths && a.type !== 'pattern') throw new NydusError('--paths goes with metrics pattern');
      if (a.latest && a.type !== 'files') throw new NydusError('--latest goes with metrics files');
      const id = a.id === undefined ? '' : `id=${encodeURIComponent(a.id)}`;
      const query = (...parts: string[]) => (parts.filter(Boolean).length ? `?${parts.filter(Boolean).join('&')}` : '');
      const url = {
        backend: '/api/v1/metrics/backend',
        blobcache: `/api/v1/metrics/blobcache?blob_id=${encodeURIComponent(a['blob-id'] ?? '')}`,
        fsstats: `/api/v1/metrics${query(id)}`,
        files: `/api/v1/metrics/files${query(id, a.latest ? 'latest=true' : '')}`,
        pattern: `/api/v1/metrics/pattern${query(id)}`,
      }[a.type as 'backend'];
      const body = await get(a.sock, url);
      if (a.paths) printPaths(body as Array<{ path: string }>);
      else print(body, a.raw);
    })
    .command('blobs', 'the images registered with PUT /api/v2/blobs', (y) => y, async (a) => print(await get(a.sock, '/api/v2/blobs'), a.raw))
    .help()
    .version('0.1.0')
    .parseAsync();
});
