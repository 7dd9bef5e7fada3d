/** nydusctl: a client of nydusd's API socket, with nydus's command names (info, metrics). */
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

await runMain('nydusctl', async () => {
  await cliParser('nydusctl')
    .demandCommand(1, 'a command is needed')
    .option('sock', { alias: 'S', type: 'string', demandOption: true, describe: "nydusd's API socket" })
    .option('raw', { alias: 'r', type: 'boolean', default: false, describe: 'one line of JSON' })
    .command('info', 'the daemon: id, state, version, backends', (y) => y, async (a) => print(await get(a.sock, '/api/v1/daemon'), a.raw))
    .command('metrics <type>', 'metrics: backend, or blobcache with --blob-id', (y) => y
      .positional('type', { type: 'string', choices: ['backend', 'blobcache'], demandOption: true })
      .option('blob-id', { type: 'string', describe: 'blob of the blobcache metrics' }), async (a) => {
      if (a.type === 'blobcache' && !a['blob-id']) throw new NydusError('metrics blobcache needs --blob-id');
      const url = a.type === 'backend' ? '/api/v1/metrics/backend' : `/api/v1/metrics/blobcache?blob_id=${encodeURIComponent(a['blob-id']!)}`;
      print(await get(a.sock, url), a.raw);
    })
    .command('blobs', 'the images registered with PUT /api/v2/blobs', (y) => y, async (a) => print(await get(a.sock, '/api/v2/blobs'), a.raw))
    .help()
    .version('0.1.0')
    .parseAsync();
});
