/**
 * The server of `nydus-backend-proxy` (nydus's contrib/nydus-backend-proxy): a directory of blob files,
 * named by their ids, served as the blob part of the distribution API so nydusd's registry backend (or
 * a registry backend's `proxy.url`, the request then in absolute form) reads them:
 *   HEAD|GET /<namespace>/<repo>/blobs/sha256:<blob id>   (any prefix before /blobs/; Range honoured)
 *   GET /<blob id>                                         (the file server nydus's proxy also mounts)
 *   GET /v2/ and GET /                                      200, for a `ping_url`.
 * Blobs added to the directory later are found. A request names a file of the directory, never a path
 * out of it; a symlink there is followed (its target is the administrator's choice, as in nydus's
 * server). What is not a regular file (a FIFO, a device) is never opened for reading: a FIFO would
 * hold the open, and a thread of the file pool, until a writer came.
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

/**
 * The single byte range a `Range` header asks of a `size`-byte file: null for none (or a header that
 * is no byte range: RFC 9110 14.2, ignored), 'bad' if unsatisfiable. Of several ranges, the first.
 */
export function parseRange(value: string | undefined, size: number): { start: number; end: number } | null | 'bad' {
  if (!value) return null;
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*(,|$)/.exec(value);
  if (!m || (m[1] === '' && m[2] === '') || (m[1] !== '' && m[2] !== '' && Number(m[2]) < Number(m[1]))) return null;
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

/** A path segment's text; null when its percent-encoding is broken. */
function decoded(segment: string): string | null {
  try {
    return decodeURIComponent(segment);
  } catch {
    return null;
  }
}

function blobIdOf(pathname: string): string | 'bad-digest' | 'bad-path' | null {
  const m = /\/blobs\/([^/]+)$/.exec(pathname);
  if (m) {
    const digest = decoded(m[1]);
    if (digest === null) return 'bad-path';
    return digest.startsWith('sha256:') ? digest.slice(7) : 'bad-digest';
  }
  const bare = /^\/([^/]+)$/.exec(pathname);
  return bare ? decoded(bare[1]) ?? 'bad-path' : null;
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
  if (id === 'bad-path') return plain(res, 400, 'the path\'s percent-encoding is broken\n');
  if (!id || id === '.' || id === '..' || id.includes('/') || id.includes('\0')) return plain(res, 404, 'not found\n');
  const file = path.join(dir, id);
  let fh: fs.promises.FileHandle;
  try {
    // O_NONBLOCK: a FIFO opens at once (and is refused below as no regular file).
    fh = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // Only a blob that is not there is a 404 (a registry backend takes it for "not in the registry");
    // out of fds, or a file it may not read, is this server's failure: a 503 is tried again.
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP') return plain(res, 404, `blob ${id} not found\n`);
    return plain(res, 503, `blob ${id} cannot be opened: ${code ?? (e as Error).message}\n`);
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

/** How long a connection may go without a byte read or written before it is closed. */
const SOCKET_IDLE_MS = 60_000;

/** Starts serving `blobsDir` on `address:port` (port 0: any free one); `idleMs`: SOCKET_IDLE_MS. */
export async function startBlobProxy(blobsDir: string, address = '127.0.0.1', port = 8000, idleMs = SOCKET_IDLE_MS): Promise<BlobProxyServer> {
  const dir = path.resolve(blobsDir);
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    serve(dir, req, res).catch((e) => {
      if (!res.headersSent) plain(res, 500, `${(e as Error).message}\n`);
      else res.destroy();
    });
  });
  // A client that stops reading (or sending) for this long loses its connection, and the blob's fd
  // with it: idle readers would otherwise hold both for good, until the server ran out of fds.
  server.timeout = idleMs;
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
