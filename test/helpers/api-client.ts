/** A minimal client of nydusd's HTTP API on its unix socket (no keep-alive: each call is one connection). */
import http from 'node:http';
import net from 'node:net';

export interface ApiResponse {
  status: number;
  body: any;
}

/** How long a call waits for its whole answer: a daemon that accepted and never answers fails the test, not hangs it. */
const API_ANSWER_MS = 60_000;

export function apiRequest(sock: string, method: string, url: string, body?: unknown): Promise<ApiResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: sock, method, path: url, agent: false, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode!, body: text ? JSON.parse(text) : null }));
      res.on('error', reject);
    });
    req.setTimeout(API_ANSWER_MS, () => req.destroy(new Error(`${method} ${url} on ${sock}: no answer within ${API_ANSWER_MS / 1000} s`)));
    req.on('error', reject);
    if (body !== undefined) req.write(typeof body === 'string' ? body : JSON.stringify(body));
    req.end();
  });
}

/**
 * One raw HTTP request (`text`, written as it is) on a connection of its own: resolves to what came
 * back, or 'no answer' when nothing did within 5 s.
 */
export function rawHttp(sock: string, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(sock, () => c.write(text));
    let got = '';
    c.setEncoding('utf8');
    c.on('data', (d) => (got += d));
    c.on('end', () => resolve(got));
    c.on('error', reject);
    c.setTimeout(5000, () => {
      c.destroy();
      resolve(got || 'no answer');
    });
  });
}

/** A BlobCacheEntry as nydus-snapshotter PUTs it to /api/v2/blobs: a localfs backend, fscache, `extra` in config_v2. */
export function blobCacheEntry(id: string, image: { bootstrap: string; blobDir: string; workDir: string }, extra: object = {}) {
  return {
    type: 'bootstrap', id, domain_id: '',
    config_v2: {
      version: 2, id, backend: { type: 'localfs', localfs: { dir: image.blobDir } },
      cache: { type: 'fscache', fscache: { work_dir: image.workDir } }, metadata_path: image.bootstrap, ...extra,
    },
  };
}

/**
 * A connection held open, as nydus-snapshotter's liveness monitor holds one (it never writes and takes
 * its closing for the daemon's death): whether it closed, and `request`, one GET on it resolving to
 * the answer's JSON body.
 */
export function heldConnection(sock: string) {
  const c = net.connect(sock);
  let got = '';
  let closed = false;
  c.setEncoding('utf8');
  c.on('data', (d) => (got += d));
  c.on('close', () => (closed = true));
  c.on('error', () => {});
  return {
    c,
    get closed() { return closed; },
    connected: new Promise<void>((r) => c.once('connect', () => r())),
    async request(url: string): Promise<any> {
      got = '';
      c.write(`GET ${url} HTTP/1.1\r\nHost: nydusd\r\n\r\n`);
      for (let i = 0; i < 400; i++) {
        const [head, body] = got.split('\r\n\r\n');
        const length = Number(/content-length: *(\d+)/i.exec(head ?? '')?.[1]);
        if (body !== undefined && Buffer.byteLength(body) >= length) return JSON.parse(body);
        if (closed) break;
        await new Promise((r) => setTimeout(r, 25));
      }
      throw new Error(`no answer to GET ${url} on the held connection to ${sock} (got ${JSON.stringify(got.slice(0, 200))})`);
    },
  };
}
