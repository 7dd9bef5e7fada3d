/**
 * The server of `nydus-backend-proxy` (nydus's contrib/nydus-backend-proxy): a directory of blob files,
 * named by their ids, served as the blob part of the distribution API so nydusd's registry backend (or
 * a registry backend's `proxy.url`, the request then in absolute form) reads them:
 *   HEAD|GET /<namespace>/<repo>/blobs/sha256:<blob id>   (any prefix before /blobs/; Range honoured)
 *   GET /<blob id>                                         (the file server nydus's proxy also mounts)
 *   GET /v2/ and GET /                                      200, for a `ping_url`.
 * Blobs added to the directory later are found; nothing outside it is ever served.
 */
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';

export interface BlobProxyServer {
  /** `http://address:port` */
  url: string;
  port: number;
  server: http.Server;
  close(): Promise<void>;
}

/** The single byte range a `Range` header asks of a `size`-byte file: null for none, 'bad' if unsatisfiable. */
export function parseRange(value: string | undefined, size: number): { start: number; end: number } | null | 'bad' {
  if (!value) return null;
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*(,|$)/.exec(value);
  if (!m || (m[1] === '' && m[2] === '')) return 'bad';
  let start: number;
  let end: number;
  if (m[1] === '') {
    // A suffix: the last n bytes.
    const n = Number(m[2]);
    if (n === 0) return 'bad';
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (start >= size || end < start) return 'bad';
  return { start, end };
}

function blobIdOf(pathname: string): string | 'bad-digest' | null {
  const m = /\/blobs\/([^/]+)$/.exec(pathname);
  if (m) {
    const digest = decodeURIComponent(m[1]);
    return digest.startsWith('sha256:') ? digest.slice(7) : 'bad-digest';
  }
  const bare = /^\/([^/]+)$/.exec(pathname);
  return bare ? decodeURIComponent(bare[1]) : null;
}

function plain(res: http.ServerResponse, status: number, text: string, headers: http.OutgoingHttpHeaders = {}): void {
  res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(text), ...headers }).end(text);
}

async function serve(dir: string, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') return plain(res, 405, 'only GET and HEAD\n', { allow: 'GET, HEAD' });
  // Through `proxy.url` the request line holds the whole URL: only its path matters.
  const pathname = new URL(req.url ?? '/', 'http://proxy').pathname;
  if (pathname === '/' || pathname === '/v2/' || pathname === '/v2') return plain(res, 200, '{}\n', { 'content-type': 'application/json' });
  const id = blobIdOf(pathname);
  if (id === 'bad-digest') return plain(res, 400, 'digest must be sha256:<hex>\n');
  if (!id || id === '.' || id === '..' || id.includes('/') || id.includes('\0')) return plain(res, 404, 'not found\n');
  const file = path.join(dir, id);
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(file, 'r');
  } catch {
    return plain(res, 404, `blob ${id} not found\n`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return plain(res, 404, `blob ${id} not found\n`);
    const headers: http.OutgoingHttpHeaders = {
      'content-type': 'application/octet-stream', 'docker-content-digest': `sha256:${id}`, 'accept-ranges': 'bytes',
    };
    const range = parseRange(req.headers.range, st.size);
    if (range === 'bad') return plain(res, 416, 'range not satisfiable\n', { 'content-range': `bytes */${st.size}` });
    const { start, end } = range ?? { start: 0, end: st.size - 1 };
    const length = range ? end - start + 1 : st.size;
    if (range) headers['content-range'] = `bytes ${start}-${end}/${st.size}`;
    res.writeHead(range ? 206 : 200, { ...headers, 'content-length': length });
    if (req.method === 'HEAD' || length === 0) return void res.end();
    const stream = fh.createReadStream({ start, end, autoClose: false });
    await new Promise<void>((resolve) => {
      stream.on('error', () => {
        res.destroy();
        resolve();
      });
      res.on('close', resolve);
      stream.pipe(res);
    });
  } finally {
    await fh.close();
  }
}

/** Starts serving `blobsDir` on `address:port` (port 0: any free one). */
export async function startBlobProxy(blobsDir: string, address = '127.0.0.1', port = 8000): Promise<BlobProxyServer> {
  const dir = path.resolve(blobsDir);
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    serve(dir, req, res).catch((e) => {
      if (!res.headersSent) plain(res, 500, `${(e as Error).message}\n`);
      else res.destroy();
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, address, () => resolve());
  });
  const bound = (server.address() as net.AddressInfo).port;
  const host = address.includes(':') ? `[${address}]` : address;
  return {
    url: `http://${host}:${bound}`,
    port: bound,
    server,
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}
